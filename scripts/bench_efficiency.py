"""Benchmark the image tower's efficiency: achieved GFLOP/s of ViT-B/16 inference over the matmul GFLOP/s of torch.

The tower is open_clip's ViT-B-16 built from its config (random weights, nothing downloaded) and run through
mmrad's ``VisionTower`` (pooled output and patch tokens, as ``MMRadModel`` and zero-shot use it). FLOPs are counted by
``torch.utils.flop_counter.FlopCounterMode`` on one forward with the attention fast path off (the fused kernel is not
counted), at 2 FLOPs per multiply-accumulate: matmuls, the patch convolution and attention; layer norms, GELU and
softmax are not counted, so the ratio is slightly conservative. The reference is the best of a few large fp32 square
matmuls in the same run (what the BLAS reaches on this machine with the same threads).

The tunings are measured side by side, interleaved and best-of-``--repeats`` (other processes only ever add time):
grad mode (``no_grad`` / ``inference_mode``), ``nn.MultiheadAttention``'s fast path (eval + no autograd), threads,
batch size, channels_last input, and ``torch.compile`` (``--compile``; compiling takes a minute or more here). The
recorded figure is mmrad's inference setting (eval, ``inference_mode``, fast path, all threads, ``--batch-size``).

    .venv/bin/python scripts/bench_efficiency.py [--batch-size 16] [--repeats 3] [--compile] [--device cpu]
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from benchlib import add_common_arguments, record  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_gflops(device: torch.device, sizes=(2048, 4096), repeats: int = 3) -> tuple[float, int]:
    """Best fp32 square-matmul GFLOP/s (2 n^3 FLOPs) over ``sizes`` and ``repeats``, and the size that reached it."""
    best, best_n = 0.0, 0
    for n in sizes:
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        a @ b  # warm-up
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            a @ b
            _sync(device)
            rate = 2 * n**3 / (time.perf_counter() - start) / 1e9
            if rate > best:
                best, best_n = rate, n
    return best, best_n


def count_flops(tower: torch.nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward (2 per multiply-accumulate), counted with the attention fast path off."""
    from torch.utils.flop_counter import FlopCounterMode

    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            tower(x)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    return counter.get_total_flops()


class Arm:
    """One tuning: how to run the tower on a batch of ``batch_size`` images."""

    def __init__(self, name: str, batch_size: int, run: Callable[[torch.Tensor], object], threads: int | None = None,
                 fastpath: bool = True, channels_last: bool = False):  # fmt: skip
        self.name, self.batch_size, self.run, self.threads = name, batch_size, run, threads
        self.fastpath, self.channels_last = fastpath, channels_last
        self.best = math.inf  # seconds per image

    def time(self, device: torch.device, images: int) -> None:
        """Run ``images`` images (at least one batch) and keep the best seconds per image."""
        threads = torch.get_num_threads()
        torch.set_num_threads(self.threads or threads)
        torch.backends.mha.set_fastpath_enabled(self.fastpath)
        x = torch.randn(self.batch_size, 3, 224, 224, device=device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        try:
            batches = max(1, images // self.batch_size)
            _sync(device)
            start = time.perf_counter()
            for _ in range(batches):
                self.run(x)
            _sync(device)
            self.best = min(self.best, (time.perf_counter() - start) / (batches * self.batch_size))
        finally:
            torch.set_num_threads(threads)
            torch.backends.mha.set_fastpath_enabled(True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=16, help="batch of the recorded (mmrad) setting")
    parser.add_argument("--batch-sizes", default="1,32", help="batch sizes compared in the sweep")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the best of each arm counts")
    parser.add_argument("--images", type=int, default=16, help="images per timing of an arm (at least one batch)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile on CPU)")
    parser.add_argument("--goal", type=float, default=0.6)
    add_common_arguments(parser)
    args = parser.parse_args()

    import open_clip

    from mmrad.models.vision_tower import build_vision_tower

    device = torch.device(args.device)
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    tower = build_vision_tower(open_clip.get_model_config("ViT-B-16")).to(device).eval()
    flops_per_image = count_flops(tower, torch.randn(1, 3, 224, 224, device=device))
    print(f"ViT-B/16 @224 (mmrad VisionTower): {flops_per_image / 1e9:.2f} GFLOP per image "
          f"(FlopCounterMode, 2 FLOPs per MAC); torch threads: {threads}")  # fmt: skip

    def infer(x):
        with torch.inference_mode():
            return tower(x)

    def no_grad(x):
        with torch.no_grad():
            return tower(x)

    b = args.batch_size
    arms = [
        Arm("mmrad: eval + inference_mode + MHA fast path", b, infer),
        Arm("eval + no_grad (fast path too)", b, no_grad),
        Arm("eval + inference_mode, fast path off", b, infer, fastpath=False),
        Arm("channels_last input", b, infer, channels_last=True),
    ]
    if threads > 1:
        arms.append(Arm("1 thread", b, infer, threads=1))
    arms += [Arm(f"batch {n}", n, infer) for n in map(int, args.batch_sizes.split(",")) if n != b]
    if args.compile:
        compiled = torch.compile(tower)
        start = time.perf_counter()
        with torch.inference_mode():
            compiled(torch.randn(b, 3, 224, 224, device=device))
        print(f"torch.compile: first call (compilation) {time.perf_counter() - start:.0f} s")

        def run_compiled(x):
            with torch.inference_mode():
                return compiled(x)

        arms.append(Arm("torch.compile (inductor)", b, run_compiled))

    mm_best, mm_n = 0.0, 0
    for arm in arms:  # warm-up: first calls allocate and pick kernels
        arm.run(torch.randn(arm.batch_size, 3, 224, 224, device=device))
    for _ in range(args.repeats):  # interleaved, so machine load hits every arm alike
        rate, n = matmul_gflops(device, repeats=1)
        if rate > mm_best:
            mm_best, mm_n = rate, n
        for arm in arms:
            arm.time(device, args.images)
    print(f"fp32 matmul reference: {mm_best:.1f} GFLOP/s (best {mm_n}x{mm_n} square matmul, {threads} threads)")
    for arm in arms:
        gflops = flops_per_image / arm.best / 1e9
        print(f"  {arm.name:<48} batch {arm.batch_size:>3}: {1 / arm.best:6.2f} img/s  {gflops:6.1f} GFLOP/s  "
              f"{gflops / mm_best:5.2f} of matmul")  # fmt: skip
    main_arm = arms[0]
    achieved = flops_per_image / main_arm.best / 1e9
    record(args, "vit_b16_inference_gflops_vs_matmul", value=achieved, baseline=mm_best, ratio=achieved / mm_best,
           goal=args.goal, higher_is_better=True, unit="GFLOP/s")  # fmt: skip


if __name__ == "__main__":
    main()
