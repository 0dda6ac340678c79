"""Benchmark LoRA against full fine-tuning, and gradient checkpointing, on the same towers and batch.

The model is the real-scale architecture, built offline with random weights: open_clip ViT-B/16 at 224 px and a
BERT-base-sized text tower (12 layers, hidden 768, 12 heads) from config dicts, a 4-layer query decoder (as in
``configs/``), batch ``--batch-size`` 8 with reports of ``--text-length`` 128 tokens. LoRA takes its settings from
the ``biomedclip-lora`` preset (r=8, alpha 16, both towers, mmrad's default targets) with mmrad's default LoRA
dropout, 0 (peft's default too); ``--lora-dropout 0.05`` measures the config's dropout, recorded under names ending
in ``@dropout0.05``: dropout keeps a dropped copy of every adapted layer's input for the backward pass, which costs
activation memory. Both arms recompute the towers' MLP activation outputs in the backward pass, as ``mmrad train``
does by default (``train.recompute_activations``); ``--no-recompute-activations`` keeps them (names ending in
``@no-recompute``). A step is forward + backward + AdamW.

Four modes — full, LoRA, and each with ``set_grad_checkpointing`` — each run in its own subprocess, so that a mode's
memory is its own. Memory and time come from two passes. The memory pass (one warm-up step that allocates the
optimiser state, then one step) runs its processes with ``MALLOC_MMAP_THRESHOLD_=131072``, so glibc returns freed
tensor memory to the system at once and the peak resident set size (VmHWM) follows the live tensors, as
``torch.cuda.max_memory_allocated`` does on a GPU (with glibc's default, freed activations stay resident and the
peak says more about fragmentation than about the method). Two figures: the peak above the process with its
libraries imported, before the model is built (weights, gradients, optimiser state, activations: what must fit),
and the peak above the loaded model (what training adds). On CUDA the same two figures come from
``torch.cuda.max_memory_allocated``. The time pass runs with the default allocator; its processes take turns step
by step (only one computes at a time), so machine load hits every mode alike; the best step time after a warm-up
counts.

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

from benchlib import add_common_arguments, record  # noqa: E402

from mmrad.config.registry import PRESET_DIR as CONFIGS

MODES = {"full": (False, False), "lora": (True, False), "full+ckpt": (False, True), "lora+ckpt": (True, True)}
BERT_BASE = dict(model_type="bert", vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=512)  # fmt: skip


def build(lora: bool, text_length: int, dropout: float | None = None):
    """The model of one mode; returns (model, LoRA settings)."""
    import open_clip

    from mmrad.config.schema import LoraSettings, MMRadConfig, load_config
    from mmrad.models import MMRadModel, apply_lora

    settings = load_config(CONFIGS / "biomedclip-lora.yaml").lora
    settings.dropout = LoraSettings().dropout if dropout is None else dropout
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
    import open_clip  # noqa: F401  (the libraries first: their memory is neither method's)
    import peft  # noqa: F401
    import torch
    import transformers  # noqa: F401

    import mmrad.models  # noqa: F401

    torch.manual_seed(0)
    device = torch.device(args.device)
    lora, checkpointing = MODES[mode]
    before = _status("VmRSS") if device.type != "cuda" else 0
    model, _ = build(lora, args.text_length, args.lora_dropout)
    model.to(device).train()
    if checkpointing:
        model.set_grad_checkpointing(True)
    if not args.no_recompute_activations:  # mmrad train's default (train.recompute_activations), in both arms
        model.set_activation_recompute(True)
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
    model_bytes = base - before
    print(f"ready {sum(p.numel() for p in trainable)} {total} {tower_trainable} {tower_total} {model_bytes}",
          flush=True)  # fmt: skip
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


def run_pass(argv: list[str], modes: list[str], steps: int, env: dict | None):
    """Start one process per mode, step them in turns; returns (parameter counts, peak bytes, best step seconds)."""
    procs = {m: subprocess.Popen([*argv, "--child", m], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 env=env) for m in modes}  # fmt: skip
    params = {}
    for mode, proc in procs.items():
        words = proc.stdout.readline().split()
        if not words or words[0] != "ready":
            raise SystemExit(f"{mode}: the benchmark process failed to start")
        params[mode] = tuple(int(w) for w in words[1:])
    times = {m: math.inf for m in modes}
    peaks = dict.fromkeys(modes, 0)
    what = "memory" if env else "time"
    for step in range(steps + 1):  # step 0 warms up (and allocates the optimiser state: it counts for memory)
        for mode, proc in procs.items():
            proc.stdin.write("step\n")
            proc.stdin.flush()
            words = proc.stdout.readline().split()
            if not words or words[0] != "step":
                raise SystemExit(f"{mode}: the benchmark process failed")
            peaks[mode] = max(peaks[mode], int(words[2]))
            if step > 0:
                times[mode] = min(times[mode], float(words[1]))
            print(f"  [{what} pass] {mode:<10} step {step}: {float(words[1]):6.2f} s, "
                  f"peak +{int(words[2]) / 2**30:.2f} GiB above the model", flush=True)  # fmt: skip
    for proc in procs.values():
        proc.stdin.close()
        proc.wait()
    return params, peaks, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--text-length", type=int, default=128, help="report tokens")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per mode, after one warm-up step")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ", ".join(MODES))
    parser.add_argument("--lora-dropout", type=float, default=None, help="LoRA dropout (default: mmrad's, 0)")
    parser.add_argument("--no-recompute-activations", action="store_true",
                        help="keep the MLP activation outputs (mmrad's train.recompute_activations off in both arms); "
                        "recorded under names ending in @no-recompute")  # fmt: skip
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
    if args.no_recompute_activations:
        argv.append("--no-recompute-activations")
    params, peaks, _ = run_pass(argv, modes, steps=1, env=dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072"))
    _, _, times = run_pass(argv, modes, steps=args.steps, env=None)

    method = "peak GPU memory allocated" if args.device == "cuda" else "peak RSS (VmHWM)"
    print(f"ViT-B/16 @224 + BERT-base text ({args.text_length} tokens) + 4-layer decoder, batch {args.batch_size}, "
          f"AdamW; memory = {method}, with the model (total) and above the loaded model (training)")  # fmt: skip
    totals = {m: peaks[m] + params[m][4] for m in modes}
    for mode in modes:
        trainable, total, tower_trainable, tower_total, _ = params[mode]
        print(f"  {mode:<10} trainable {trainable:>12,} of {total:>12,} ({100 * trainable / total:5.2f}%; "
              f"towers {100 * tower_trainable / tower_total:5.2f}%)  step {times[mode]:6.2f} s  "
              f"memory {totals[mode] / 2**30:5.2f} GiB total, +{peaks[mode] / 2**30:5.2f} GiB training")  # fmt: skip
    gib = 2**30
    tag_dropout = "" if args.lora_dropout in (None, 0.0) else f"@dropout{args.lora_dropout:g}"
    tag_recompute = "@no-recompute" if args.no_recompute_activations else ""
    tag_dropout += tag_recompute
    if "lora" in params and not tag_dropout:  # the shares depend on neither
        trainable, total, tower_trainable, tower_total, _ = params["lora"]
        # the goal is on the towers (what LoRA replaces); the decoder, projections and head train in both arms
        record(args, "lora_tower_trainable_share" + tag_dropout, value=100 * tower_trainable / tower_total,
               baseline=100.0,
               ratio=tower_trainable / tower_total, goal=0.02, higher_is_better=False,
               unit="% of tower parameters")  # fmt: skip
        record(
            args,
            "lora_trainable_share",
            value=100 * trainable / total,
            baseline=100.0,
            ratio=trainable / total,
            goal=None,
            higher_is_better=False,
            unit="% of all parameters (decoder, projections, head included)",
        )
    for suffix in ("", "+ckpt"):  # LoRA vs full, both without and both with gradient checkpointing
        lora, full = "lora" + suffix, "full" + suffix
        if {lora, full} <= set(modes):
            tag = "_with_ckpt" if suffix else ""
            record(args, f"lora_peak_memory_vs_full{tag}{tag_dropout}", value=totals[lora] / gib,
                   baseline=totals[full] / gib,
                   ratio=totals[lora] / totals[full], goal=0.6, higher_is_better=False,
                   unit="GiB peak, weights included")  # fmt: skip
            record(args, f"lora_training_memory_vs_full{tag}{tag_dropout}", value=peaks[lora] / gib,
                   baseline=peaks[full] / gib,
                   ratio=peaks[lora] / peaks[full], goal=None, higher_is_better=False,
                   unit="GiB peak above the loaded model")  # fmt: skip
            record(args, f"lora_step_time_vs_full{tag}{tag_dropout}", value=times[lora], baseline=times[full],
                   ratio=times[lora] / times[full], goal=0.8, higher_is_better=False, unit="s/step")  # fmt: skip
    for base in ("full", "lora"):
        ckpt = base + "+ckpt"
        if {base, ckpt} <= set(modes):
            which = base + (tag_dropout if base == "lora" else tag_recompute)
            record(args, f"grad_checkpointing_memory_{which}", value=peaks[ckpt] / gib, baseline=peaks[base] / gib,
                   ratio=peaks[ckpt] / peaks[base], goal=None, higher_is_better=False, unit="GiB")  # fmt: skip
            record(args, f"grad_checkpointing_step_time_{which}", value=times[ckpt], baseline=times[base],
                   ratio=times[ckpt] / times[base], goal=None, higher_is_better=False, unit="s/step")  # fmt: skip


if __name__ == "__main__":
    main()
