"""Zero-shot throughput with 1 vs 2 processes (``accelerate launch``) on the same images, same model, same command.

The model is the one of ``bench_zeroshot.py`` (a small open_clip ViT + open_clip text tower). Each configuration runs
the real command on N images and (twice, best kept) on 2 images; the difference removes the start-up (imports, model
loading, process group) so the figure is the steady-state scoring throughput; whole-command times are printed too. The
2-process CSV must equal the 1-process CSV. One process uses both cores (2 torch threads); each of 2 processes uses one
(``OMP_NUM_THREADS=1``, as torchrun sets), so on this 2-core machine the gain comes only from what one process
cannot keep busy (image decoding, Python work between the torch calls).

Many machines: the same command under an accelerate config with ``num_machines``, ``machine_rank`` and
``main_process_ip``/``main_process_port`` (or ``accelerate launch --num_machines 4 --machine_rank R
--main_process_ip HOST ...`` on each machine). ``run_zero_shot`` gives each global rank a contiguous share of the
inputs (``split_between_processes``); each rank reads and scores only its images (from shared storage, or a corpus
folder present on every machine), and ``gather_object`` brings the rows back in input order; rank 0 writes the CSV.
``--cache-images`` on shared storage works across ranks (file names are per-image hashes, writes are atomic).

    .venv/bin/python scripts/bench_scale.py [--images 320] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_zeroshot import QUERIES, build_models
from benchlib import REPO, add_common_arguments, record
from PIL import Image

BIN = Path(sys.executable).parent


def run(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=320, help="N images (default 320)")
    parser.add_argument("--batch-size", type=int, default=16)
    add_common_arguments(parser)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build_models(tmp, "cpu")
        rng = np.random.default_rng(0)
        folders = {"small": tmp / "small", "large": tmp / "large"}
        for name, count in (("small", 2), ("large", args.images)):
            folders[name].mkdir()
            for i in range(count):
                Image.fromarray(rng.integers(0, 255, (512, 512), dtype=np.uint8)).save(folders[name] / f"{i:04d}.png")
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
        env.pop("WORLD_SIZE", None)
        if args.device == "cpu":
            env["ACCELERATE_USE_CPU"] = "1"
        launch = [str(BIN / "accelerate"), "launch", "--num_machines", "1", "--mixed_precision", "no",
                  "--dynamo_backend", "no"]  # fmt: skip
        commands = {
            1: [sys.executable, "-m", "mmrad.cli"],
            2: [*launch, "--multi_gpu", "--num_processes", "2", "-m", "mmrad.cli"],
        }
        times: dict[tuple[int, str], float] = {}
        for size in ("small", "large", "small"):  # start-up is noisy: the best of two small runs
            for procs, prefix in commands.items():
                out = tmp / f"{size}-{procs}.csv"
                cmd = [*prefix, "zero-shot", str(tmp / "mmrad"), str(folders[size]), "--queries", *QUERIES,
                       "--scorer", "contrastive", "--batch-size", str(args.batch_size), "--out", str(out)]  # fmt: skip
                seconds = run(cmd, dict(env, OMP_NUM_THREADS="1") if procs > 1 else env)
                times[(procs, size)] = min(seconds, times.get((procs, size), seconds))
                print(f"{procs} process(es), {size}: {seconds:.1f} s")
        if (tmp / "large-1.csv").read_text() != (tmp / "large-2.csv").read_text():
            raise SystemExit("the 2-process CSV differs from the 1-process CSV")
        print("2-process CSV == 1-process CSV")
        rate = {p: (args.images - 2) / max(times[(p, "large")] - times[(p, "small")], 1e-9) for p in commands}
        # no goal: on 2 cores one process already runs 2 threads; the figure shows what sharding adds
        record(args, "scale_zeroshot_2proc", value=rate[2], baseline=rate[1], ratio=rate[2] / rate[1], goal=None,
               higher_is_better=True, unit="img/s after start-up, 2 processes vs 1 (2 cores)")  # fmt: skip
        whole = times[(1, "large")] / times[(2, "large")]
        print(f"whole command ({args.images} images, start-up included): 1 process {times[(1, 'large')]:.1f} s, "
              f"2 processes {times[(2, 'large')]:.1f} s -> speed-up {whole:.2f}")  # fmt: skip
        record(args, "scale_zeroshot_2proc_whole_command", value=times[(2, "large")], baseline=times[(1, "large")],
               ratio=times[(2, "large")] / times[(1, "large")], goal=None, higher_is_better=False,
               unit=f"s for {args.images} images, start-up included, 2 processes vs 1")  # fmt: skip


if __name__ == "__main__":
    main()
