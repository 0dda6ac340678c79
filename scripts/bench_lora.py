"""Benchmark LoRA against full fine-tuning, and gradient checkpointing, on the same towers and batch.

The model is the real-scale architecture, built offline with random weights: open_clip ViT-B/16 at 224 px and a
BERT-base-sized text tower (12 layers, hidden 768, 12 heads) from config dicts, a 4-layer query decoder (as in
``configs/``), batch ``--batch-size`` 8 with reports of ``--text-length`` 128 tokens. LoRA takes its settings from
``configs/biomedclip_lora.yaml`` (r=8 on both towers, mmrad's default targets). A step is forward + backward + AdamW.

Four modes — full, LoRA, and each with ``set_grad_checkpointing`` — each run in its own subprocess, so that a mode's
memory is its own. On CPU the memory figure is the peak resident set size (VmHWM, reset through
``/proc/self/clear_refs`` once the model and optimiser are built) minus the resident size at that moment: what the
training steps add (gradients, optimiser state, activations) on top of the loaded model. On CUDA it is
``torch.cuda.max_memory_allocated`` minus the allocated memory at the same moment. The processes take turns step by
step (only one computes at a time), so machine load hits every mode alike; the best step time after a warm-up counts.

    .venv/bin/python scripts/bench_lora.py [--batch-size 8] [--steps 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchlib import REPO, add_common_arguments, record  # noqa: E402

MODES = {"full": (False, False), "lora": (True, False), "full+ckpt": (False, True), "lora+ckpt": (True, True)}
BERT_BASE = dict(model_type="bert", vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=512)  # fmt: skip


def build(lora: bool, text_length: int, dropout: float | None = None):
    """The model of one mode; returns (model, LoRA settings)."""
    import open_clip

    from mmrad.config import MMRadConfig, load_config
    from mmrad.models import MMRadModel, apply_lora

    settings = load_config(REPO / "configs" / "biomedclip_lora.yaml").lora
    if dropout is not None:
        settings.dropout = dropout
    config = MMRadConfig.from_dict(
        {
            "projection_dim": 256,
            "vision": {"model_name": "ViT-B-16", "model_cfg": open_clip.get_model_config("ViT-B-16")},
            "text": {
                "source": "hf",
                "hf_config": BERT_BASE,
                "tokenizer": "mmrad:radiology_wordpiece",
                "max_length": text_length,
            },  # fmt: skip
            "fusion": {"num_layers": 4, "num_heads": 4},
            "labels": {"vocabulary": "chexpert"},
            "preprocess": {"image_size": 224},
        }
    )
    model = MMRadModel(config)
    if lora:
        apply_lora(model, settings)
    return model, settings


def _status(key: str) -> int:
    """A /proc/self/status field in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def child(mode: str, args: argparse.Namespace) -> None:
    """One mode: build, then run a step for every 'step' line on stdin, answering 'step <s> <peak bytes>'."""
    import torch

    torch.manual_seed(0)
    device = torch.device(args.device)
    lora, checkpointing = MODES[mode]
    model, _ = build(lora, args.text_length, args.lora_dropout)
    model.to(device).train()
    if checkpointing:
        model.set_grad_checkpointing(True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    n = args.batch_size
    generator = torch.Generator().manual_seed(0)
    batch = {
        "pixel_values": torch.randn(n, 3, 224, 224, generator=generator),
        "input_ids": torch.randint(5, len(model.tokenizer), (n, args.text_length), generator=generator),
        "attention_mask": torch.ones(n, args.text_length, dtype=torch.long),
        "labels": torch.randint(0, 2, (n, len(model.label_names)), generator=generator).float(),
    }
    batch = {k: v.to(device) for k, v in batch.items()}
    total = sum(p.numel() for p in model.parameters())
    towers = [(name, p) for name, p in model.named_parameters() if name.startswith(("vision.", "text."))]
    tower_trainable = sum(p.numel() for _, p in towers if p.requires_grad)
    tower_total = sum(p.numel() for name, p in towers if "lora_" not in name)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        base = _status("VmRSS")
    print(f"ready {sum(p.numel() for p in trainable)} {total} {tower_trainable} {tower_total}", flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        start = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - base
        else:
            peak = _status("VmHWM") - base
        print(f"step {time.perf_counter() - start:.4f} {peak}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--text-length", type=int, default=128, help="report tokens")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per mode, after one warm-up step")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ", ".join(MODES))
    parser.add_argument("--lora-dropout", type=float, default=None, help="instead of the config's (0.05)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    add_common_arguments(parser)
    args = parser.parse_args()
    if args.child:
        child(args.child, args)
        return

    modes = args.modes.split(",")
    argv = [sys.executable, __file__, "--device", args.device, "--batch-size", str(args.batch_size),
            "--text-length", str(args.text_length)]  # fmt: skip
    if args.lora_dropout is not None:
        argv += ["--lora-dropout", str(args.lora_dropout)]
    procs = {m: subprocess.Popen([*argv, "--child", m], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for m in modes}  # fmt: skip
    params = {}
    for mode, proc in procs.items():
        words = proc.stdout.readline().split()
        if not words or words[0] != "ready":
            raise SystemExit(f"{mode}: the benchmark process failed to start")
        params[mode] = tuple(int(w) for w in words[1:])
    times = {m: math.inf for m in modes}
    peaks = dict.fromkeys(modes, 0)
    for step in range(args.steps + 1):  # step 0 warms up (and allocates the optimiser state: it counts for memory)
        for mode, proc in procs.items():
            proc.stdin.write("step\n")
            proc.stdin.flush()
            words = proc.stdout.readline().split()
            if not words or words[0] != "step":
                raise SystemExit(f"{mode}: the benchmark process failed")
            peaks[mode] = max(peaks[mode], int(words[2]))
            if step > 0:
                times[mode] = min(times[mode], float(words[1]))
            print(f"  {mode:<10} step {step}: {float(words[1]):6.2f} s, peak +{int(words[2]) / 2**30:.2f} GiB",
                  flush=True)  # fmt: skip
    for proc in procs.values():
        proc.stdin.close()
        proc.wait()

    method = "peak GPU memory allocated" if args.device == "cuda" else "peak RSS (VmHWM)"
    print(f"ViT-B/16 @224 + BERT-base text ({args.text_length} tokens) + 4-layer decoder, batch {args.batch_size}, "
          f"AdamW; memory = {method} above the loaded model")  # fmt: skip
    for mode in modes:
        trainable, total, tower_trainable, tower_total = params[mode]
        print(f"  {mode:<10} trainable {trainable:>12,} of {total:>12,} ({100 * trainable / total:5.2f}%; "
              f"towers {100 * tower_trainable / tower_total:5.2f}%)  step {times[mode]:6.2f} s  "
              f"memory +{peaks[mode] / 2**30:5.2f} GiB")  # fmt: skip
    gib = 2**30
    if "lora" in params:
        trainable, total, tower_trainable, tower_total = params["lora"]
        record(args, "lora_trainable_share", value=100 * trainable / total, baseline=100.0, ratio=trainable / total,
               goal=0.02, higher_is_better=False, unit="% of parameters")  # fmt: skip
        record(args, "lora_tower_trainable_share", value=100 * tower_trainable / tower_total, baseline=100.0,
               ratio=tower_trainable / tower_total, goal=0.02, higher_is_better=False,
               unit="% of tower parameters")  # fmt: skip
    for suffix in ("", "+ckpt"):  # LoRA vs full, both without and both with gradient checkpointing
        lora, full = "lora" + suffix, "full" + suffix
        if {lora, full} <= set(modes):
            tag = "_with_ckpt" if suffix else ""
            record(args, f"lora_peak_memory_vs_full{tag}", value=peaks[lora] / gib, baseline=peaks[full] / gib,
                   ratio=peaks[lora] / peaks[full], goal=0.6, higher_is_better=False, unit="GiB")  # fmt: skip
            record(args, f"lora_step_time_vs_full{tag}", value=times[lora], baseline=times[full],
                   ratio=times[lora] / times[full], goal=0.8, higher_is_better=False, unit="s/step")  # fmt: skip
    for base in ("full", "lora"):
        ckpt = base + "+ckpt"
        if {base, ckpt} <= set(modes):
            record(args, f"grad_checkpointing_memory_{base}", value=peaks[ckpt] / gib, baseline=peaks[base] / gib,
                   ratio=peaks[ckpt] / peaks[base], goal=None, higher_is_better=False, unit="GiB")  # fmt: skip
            record(args, f"grad_checkpointing_step_time_{base}", value=times[ckpt], baseline=times[base],
                   ratio=times[ckpt] / times[base], goal=None, higher_is_better=False, unit="s/step")  # fmt: skip


if __name__ == "__main__":
    main()
