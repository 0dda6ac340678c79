"""Scale of ``mmrad ingest``: time per row and peak memory at 20,000 vs 2,000 rows (goal <= 1.2 for both).

Real corpora have 10^5 images (MIMIC-CXR 377k), so ingest must stream: its time must grow linearly with the rows
and its peak memory must stay flat. The sources are one phantom corpus (``make_phantom_corpus``, small images with
masks, boxes and reports) of the largest size; each smaller manifest is its first rows. Generating it is set-up, not
measured, and is kept under ``--work-dir`` for the next run (``bench/*.tmp`` is git-ignored).

Each measurement runs the real command, ``python -m mmrad.cli ingest MANIFEST --out DIR --image-size 32``
(default labels: manifest cells plus the report labeler, one process), in a fresh process into an empty folder,
and takes its wall time, CPU time and peak RSS (``os.wait4`` returns the usage of that one child, whereas
``RUSAGE_CHILDREN`` is a running max over all children). A run on a one-shard manifest (``--startup-rows``)
measures what every run pays once (interpreter, imports, vocabulary, writing the folder); time per row is
(time - that) / (rows - its rows), so a fixed cost does not hide growth. Runs are interleaved in ``--repeats``
rounds and the medians count (a shared 2-core machine is noisy: CPU time, printed and recorded beside wall time,
is less so).

Peak RSS includes a fixed ~0.9 GB (torch, which resizes the images, and datasets, plus pages of their libraries
touched when the interpreter exits) and file pages mapped from the cached shards while they are read; the peak of
anonymous memory (``RssAnon``, polled from ``/proc``) is printed and recorded beside it, with the growth per 1000
rows of both.

    .venv/bin/python scripts/bench_ingest_scale.py [--rows 2000,20000] [--repeats 3] [--source-size 48]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from benchlib import REPO, add_common_arguments, record

WORK = REPO / "bench" / "ingest_scale.tmp"
DONE = "complete.json"  # written last: a generated source folder is complete
MIMIC_ROWS = 377_110


@dataclass
class Run:
    wall: float  # s
    cpu: float  # s, user + system
    peak: float  # MB, peak RSS
    anon: float  # MB, peak anonymous RSS (polled; 0 without /proc)


def _sources(work: Path, rows: list[int], source_size: int) -> dict[int, Path]:
    """The phantom corpus of ``max(rows)`` studies (generated once) and a manifest of its first ``n`` rows each."""
    from mmrad.phantom.corpus import make_phantom_corpus

    n = max(rows)
    root = work / f"phantom-{n}-{source_size}px"
    wanted = {"n": n, "image_size": source_size, "seed": 0}
    done = root / DONE
    if not done.is_file() or json.loads(done.read_text()) != wanted:
        shutil.rmtree(root, ignore_errors=True)
        start = time.perf_counter()
        make_phantom_corpus(root, n=n, image_size=source_size, seed=0)
        print(f"sources: {n} phantom studies of {source_size} px written in {time.perf_counter() - start:.0f} s")
        done.write_text(json.dumps(wanted))
    else:
        print(f"sources: {n} phantom studies of {source_size} px reused from {root}")
    with (root / "manifest.csv").open(newline="", encoding="utf-8") as f:
        records = list(csv.reader(f))  # reports span lines: rows are cut as CSV records, not text lines
    manifests = {}
    for k in rows:
        manifests[k] = root / f"manifest-{k}.csv"
        with manifests[k].open("w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(records[: k + 1])
    return manifests


def _poll_anonymous(pid: int, stop: threading.Event, peak: list[int]) -> None:
    """Keep the largest ``RssAnon`` (KiB) of ``pid`` in ``peak[0]`` until ``stop`` is set or the process is gone."""
    status = Path(f"/proc/{pid}/status")
    while not stop.is_set():
        try:
            text = status.read_text()
        except OSError:
            return
        for line in text.splitlines():
            if line.startswith("RssAnon:"):
                peak[0] = max(peak[0], int(line.split()[1]))
        stop.wait(0.02)


def _ingest(manifest: Path, out: Path, image_size: int, env: dict) -> Run:
    """One ``mmrad ingest`` in a fresh process."""
    shutil.rmtree(out, ignore_errors=True)
    log = out.with_suffix(".log")
    cmd = [sys.executable, "-m", "mmrad.cli", "ingest", str(manifest), "--out", str(out), "--image-size",
           str(image_size), "--no-progress"]  # fmt: skip
    anon, stop = [0], threading.Event()
    with log.open("w") as f:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
        poller = threading.Thread(target=_poll_anonymous, args=(proc.pid, stop, anon), daemon=True)
        poller.start()
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own usage
        wall = time.perf_counter() - start
        stop.set()
        poller.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed:\n{log.read_text()[-3000:]}")
    info = json.loads((out / "mmrad_corpus.json").read_text())
    rows = sum(info["num_rows"].values()) + info["rejected"]
    if rows != info["total"]:
        raise SystemExit(f"{out}: {rows} rows kept or rejected of {info['total']}")
    # Linux reports ru_maxrss in KiB
    return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, anon[0] / 1024)


def _count(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="2000,20000", help="the two manifest sizes compared (default 2000,20000)")
    parser.add_argument("--startup-rows", type=int, default=64, help="rows of the start-up run (default one shard)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of runs; medians count (default 3)")
    parser.add_argument("--source-size", type=int, default=48, help="height of the phantom source images")
    parser.add_argument("--image-size", type=int, default=32, help="ingest --image-size")
    parser.add_argument("--work-dir", type=Path, default=WORK, help=f"sources and outputs (default {WORK})")
    add_common_arguments(parser)
    args = parser.parse_args()
    small, large = (int(r) for r in args.rows.split(","))
    if not args.startup_rows < small < large:
        raise SystemExit("need --startup-rows < the smaller --rows < the larger")

    args.work_dir.mkdir(parents=True, exist_ok=True)
    manifests = _sources(args.work_dir, [args.startup_rows, small, large], args.source_size)
    # a fixed salt: the bench neither reads nor creates the user's salt file
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), MMRAD_SALT="bench-ingest-scale",
               HF_HOME=str(args.work_dir / "hf_home"))  # fmt: skip
    runs: dict[int, list[Run]] = {n: [] for n in manifests}
    for r in range(args.repeats):
        for n, manifest in manifests.items():
            run = _ingest(manifest, args.work_dir / f"out-{n}", args.image_size, env)
            runs[n].append(run)
            print(f"round {r + 1}: {n:>6} rows: {run.wall:6.1f} s (CPU {run.cpu:6.1f} s), peak RSS {run.peak:5.0f} MB "
                  f"(anonymous {run.anon:5.0f} MB)")  # fmt: skip
    med = {n: Run(*(statistics.median(getattr(x, k) for x in v) for k in ("wall", "cpu", "peak", "anon")))
           for n, v in runs.items()}  # fmt: skip
    n0 = args.startup_rows
    wall = {n: (med[n].wall - med[n0].wall) / (n - n0) for n in (small, large)}
    cpu = {n: (med[n].cpu - med[n0].cpu) / (n - n0) for n in (small, large)}
    print(f"medians of {args.repeats}: start-up run ({n0} rows) {med[n0].wall:.1f} s (CPU {med[n0].cpu:.1f} s), "
          f"peak RSS {med[n0].peak:.0f} MB (anonymous {med[n0].anon:.0f} MB)")  # fmt: skip
    for n in (small, large):
        print(
            f"  {n:>6} rows: {med[n].wall:.1f} s, {1e3 * wall[n]:.2f} ms/row after start-up (CPU "
            f"{1e3 * cpu[n]:.2f} ms/row), peak RSS {med[n].peak:.0f} MB (anonymous {med[n].anon:.0f} MB)"
        )
    print(f"whole command per row, start-up included: {med[large].wall / large / (med[small].wall / small):.3f}")
    for what, key in (("peak RSS", "peak"), ("peak anonymous RSS", "anon")):
        growth = (getattr(med[large], key) - getattr(med[small], key)) / (large - small) * 1e3
        print(f"{what} grows {growth:.2f} MB per 1000 rows: {growth * MIMIC_ROWS / 1e3:.0f} MB more at "
              f"{MIMIC_ROWS} rows (MIMIC-CXR)")  # fmt: skip
    tag = f"{_count(large)} vs {_count(small)} rows"
    unit = f"median of {args.repeats}"
    record(args, f"ingest time per row, {tag}", value=1e3 * wall[large], baseline=1e3 * wall[small],
           ratio=wall[large] / wall[small], goal=1.2, higher_is_better=False,
           unit=f"ms/row wall after start-up ({unit})")  # fmt: skip
    record(args, f"ingest peak memory, {tag}", value=med[large].peak, baseline=med[small].peak,
           ratio=med[large].peak / med[small].peak, goal=1.2, higher_is_better=False,
           unit=f"MB peak RSS ({unit})")  # fmt: skip
    record(args, f"ingest CPU time per row, {tag}", value=1e3 * cpu[large], baseline=1e3 * cpu[small],
           ratio=cpu[large] / cpu[small], goal=None, higher_is_better=False,
           unit=f"ms/row CPU after start-up ({unit})")  # fmt: skip
    if med[small].anon:
        record(args, f"ingest peak anonymous memory, {tag}", value=med[large].anon, baseline=med[small].anon,
               ratio=med[large].anon / med[small].anon, goal=None, higher_is_better=False,
               unit=f"MB peak RssAnon, polled ({unit})")  # fmt: skip


if __name__ == "__main__":
    main()
