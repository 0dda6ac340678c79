"""Start-up time of ``mmrad --help`` (goal <= 1.5 s), next to a bare interpreter start for scale.

    .venv/bin/python scripts/bench_startup.py [--repeats 7]

Both commands run as fresh processes, alternately, and the fastest of ``--repeats`` runs of each counts (other work
on a shared machine only ever adds time). Heavy modules (torch, transformers, evaluate, open_clip) must not be
imported to print the help: the script also checks which of them ``mmrad --help`` loads.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from benchlib import add_common_arguments, record

GOAL_SECONDS = 1.5
HEAVY = ("torch", "transformers", "evaluate", "open_clip", "datasets", "accelerate", "peft")
PROBE = (
    "import sys, runpy; sys.argv = ['mmrad', '--help']\n"
    "try:\n    runpy.run_module('mmrad.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
    "print('LOADED', ' '.join(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)\n"
)


def _seconds(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    mmrad = str(Path(sys.executable).parent / "mmrad")
    probe = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY)], capture_output=True, text=True)
    loaded = probe.stderr.strip().rpartition("LOADED")[2].split()
    print(f"heavy modules imported by `mmrad --help`: {', '.join(loaded) or 'none'}")
    help_times, bare_times = [], []
    for _ in range(args.repeats):
        help_times.append(_seconds([mmrad, "--help"]))
        bare_times.append(_seconds([sys.executable, "-c", "pass"]))
    best, bare = min(help_times), min(bare_times)
    print(f"mmrad --help: {best:.3f} s (best of {args.repeats}); python -c pass: {bare:.3f} s")
    record(args, "mmrad --help start-up", value=best, baseline=GOAL_SECONDS, ratio=best / GOAL_SECONDS, goal=1.0,
           higher_is_better=False, unit="s")  # fmt: skip
    return 1 if loaded else 0


if __name__ == "__main__":
    sys.exit(main())
