"""Wall time of ``mmrad demo`` from a fresh process to its last line (goal <= 5 min).

    .venv/bin/python scripts/bench_demo.py [--quick] [--keep DIR]

The demo makes and ingests the phantom corpus, pre-trains, fine-tunes with LoRA and evaluates (see README, "Demo").
The time includes interpreter and library start-up. Run it on a quiet machine: other jobs on the same cores add to
the figure one for one.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import add_common_arguments, record

GOAL_SECONDS = {False: 300.0, True: 60.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="time `mmrad demo --quick` (goal <= 1 min)")
    parser.add_argument("--keep", type=Path, help="write the demo here instead of a temporary folder")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep or Path(tmp) / "demo"
        cmd = [str(Path(sys.executable).parent / "mmrad"), "demo", "--out", str(out)]
        cmd += ["--quick"] if args.quick else []
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        seconds = time.perf_counter() - start
    goal = GOAL_SECONDS[args.quick]
    name = "mmrad demo --quick wall time" if args.quick else "mmrad demo wall time"
    record(args, name, value=seconds, baseline=goal, ratio=seconds / goal, goal=1.0, higher_is_better=False, unit="s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
