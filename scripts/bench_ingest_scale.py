"""Scale of ``mmrad ingest``: time per row and peak memory at 20,000 vs 2,000 rows (goal <= 1.2 for both).

Real corpora have 10^5 images (MIMIC-CXR 377k), so ingest must stream: its time must grow linearly with the rows
and its peak memory must stay flat. The sources are one phantom corpus (``make_phantom_corpus``, small images with
masks and reports) of the largest size; each smaller manifest is its first rows. Generating it is set-up, not
measured, and is kept under ``--work-dir`` for the next run (``bench/*.tmp`` is git-ignored).

Each measurement runs the real command, ``python -m mmrad.cli ingest MANIFEST --out DIR --image-size 32``
(default labels: manifest cells plus the report labeler), in a fresh process into an empty folder, and takes its
wall time and its own peak RSS (``os.wait4`` returns the usage of that one child). A run on a one-shard manifest
(``--startup-rows``) measures what every run pays once (interpreter, imports, vocabulary, writing the folder); time
per row is (wall - that) / (rows - its rows), so a fixed cost does not hide growth. Runs are interleaved in
``--repeats`` rounds and the medians count (a shared 2-core machine is noisy).

    .venv/bin/python scripts/bench_ingest_scale.py [--rows 2000,20000] [--repeats 2] [--source-size 48]
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
import time
from pathlib import Path

from benchlib import REPO, add_common_arguments, record

WORK = REPO / "bench" / "ingest_scale.tmp"
DONE = "complete.json"  # written last: a generated source folder is complete


def _sources(work: Path, rows: list[int], source_size: int) -> dict[int, Path]:
    """The phantom corpus of ``max(rows)`` studies (generated once) and a manifest of its first ``n`` rows each."""
    from mmrad.data.synthetic import make_phantom_corpus

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


def _ingest(manifest: Path, out: Path, image_size: int, env: dict) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one ``mmrad ingest`` in a fresh process."""
    shutil.rmtree(out, ignore_errors=True)
    log = out.with_suffix(".log")
    cmd = [sys.executable, "-m", "mmrad.cli", "ingest", str(manifest), "--out", str(out), "--image-size",
           str(image_size), "--no-progress"]  # fmt: skip
    with log.open("w") as f:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)  # the usage of this child alone (RUSAGE_CHILDREN is a running max)
        seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed:\n{log.read_text()[-3000:]}")
    info = json.loads((out / "mmrad_corpus.json").read_text())
    rows = sum(info["num_rows"].values()) + info["rejected"]
    if rows != info["total"]:
        raise SystemExit(f"{out}: {rows} rows kept or rejected of {info['total']}")
    return seconds, usage.ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="2000,20000", help="the two manifest sizes compared (default 2000,20000)")
    parser.add_argument("--startup-rows", type=int, default=64, help="rows of the start-up run (default one shard)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of runs; medians count (default 2)")
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
    times: dict[int, list[float]] = {n: [] for n in manifests}
    peaks: dict[int, list[float]] = {n: [] for n in manifests}
    for r in range(args.repeats):
        for n, manifest in manifests.items():
            seconds, peak = _ingest(manifest, args.work_dir / f"out-{n}", args.image_size, env)
            times[n].append(seconds)
            peaks[n].append(peak)
            print(f"round {r + 1}: {n:>6} rows: {seconds:7.1f} s, peak RSS {peak:6.0f} MB")
    t = {n: statistics.median(v) for n, v in times.items()}
    m = {n: statistics.median(v) for n, v in peaks.items()}
    n0 = args.startup_rows
    per_row = {n: (t[n] - t[n0]) / (n - n0) for n in (small, large)}
    print(f"medians of {args.repeats}: start-up run ({n0} rows) {t[n0]:.1f} s, {m[n0]:.0f} MB")
    for n in (small, large):
        print(f"  {n:>6} rows: {t[n]:.1f} s, {1e3 * per_row[n]:.2f} ms/row after start-up, peak RSS {m[n]:.0f} MB")
    growth = (m[large] - m[small]) / (large - small) * 1e3
    print(f"memory growth: {growth:.2f} MB per 1000 rows ({growth * 377:.0f} MB more at 377k rows, MIMIC-CXR)")
    print(f"whole command per row (start-up included): {t[large] / large / (t[small] / small):.3f}")
    tag = f"{large // 1000}k vs {small // 1000}k rows"
    record(args, f"ingest time per row, {tag}", value=1e3 * per_row[large], baseline=1e3 * per_row[small],
           ratio=per_row[large] / per_row[small], goal=1.2, higher_is_better=False,
           unit=f"ms/row after start-up (median of {args.repeats})")  # fmt: skip
    record(args, f"ingest peak memory, {tag}", value=m[large], baseline=m[small], ratio=m[large] / m[small], goal=1.2,
           higher_is_better=False, unit=f"MB peak RSS (median of {args.repeats})")  # fmt: skip


if __name__ == "__main__":
    main()
