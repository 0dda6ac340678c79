"""Report labeler throughput: reports per second on one core, and with several worker processes.

    .venv/bin/python scripts/bench_labeler.py                    # one core and all cores, both vocabularies
    .venv/bin/python scripts/bench_labeler.py --num-workers 1    # one core only

Reads the OpenI reports (findings + impression) from ../shared/data/openi when present, else builds reports from a
fixed set of typical sentences; cycles them up to ``--reports`` reports. The one-core number is the median of
``--repeats`` runs of ``ReportLabeler.label`` in this process (the report parse included), in wall-clock time and
in CPU time (the second stays honest when other jobs share the machine).

Recorded in bench/results.json (chexpert vocabulary): the one-core rate against the goal of 2,000 reports/s (the
ratio is rate / 2,000), and the all-cores rate of ``label_many(num_workers=N)`` against the one-core rate.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import statistics
import sys
import time
from pathlib import Path

from benchlib import add_common_arguments, record

from mmrad.reports.labeler import ReportLabeler

ONE_CORE_GOAL = 2000.0  # reports/s

OPENI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "openi" / "indiana_reports.csv"
SENTENCES = [
    "The heart is normal in size.", "The mediastinum is unremarkable.", "The lungs are clear.",
    "No pneumothorax or pleural effusion.", "Mild cardiomegaly.", "Possible right lower lobe pneumonia.",
    "There is no focal airspace consolidation to suggest pneumonia.", "Bibasilar atelectasis or scarring.",
    "Stable calcified granuloma in the right upper lobe.", "Degenerative changes of the thoracic spine.",
    "Small left pleural effusion has decreased.", "No change in the right pleural thickening.",
    "Endotracheal tube tip 4 cm above the carina.", "Left PICC line terminates in the SVC.",
    "Hyperexpanded lungs suggestive of emphysema.", "A 2.5 cm nodule in the left upper lobe.",
]  # fmt: skip


def load_reports(n: int) -> tuple[list[str], str]:
    if OPENI.is_file():
        with open(OPENI, newline="", encoding="utf-8") as f:
            base = ["\n\n".join(t for t in (r["findings"], r["impression"]) if t) for r in csv.DictReader(f)]
        source = f"OpenI ({len(base)} reports, cycled)"
    else:
        rng = random.Random(0)
        base = [" ".join(rng.sample(SENTENCES, 6)) for _ in range(1000)]
        source = "synthetic (6 typical sentences per report)"
    return [base[i % len(base)] for i in range(n)], source


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reports", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--num-workers", type=int, default=os.cpu_count() or 1, help="also time label_many with this many processes"
    )
    parser.add_argument("--vocabulary", action="append", help="default: chexpert and nih14")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    texts, source = load_reports(args.reports)
    chars = sum(len(t) for t in texts) / len(texts)
    print(f"{len(texts)} reports from {source}, {chars:.0f} characters on average")
    for vocab in args.vocabulary or ["chexpert", "nih14"]:
        labeler = ReportLabeler(vocab)
        labeler.label_many(texts[:200])  # warm up
        wall, cpu = [], []
        for _ in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            for text in texts:
                labeler.label(text)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        rate, cpu_rate = len(texts) / statistics.median(wall), len(texts) / statistics.median(cpu)
        print(
            f"{vocab:<10} one core:     {rate:8.0f} reports/s  ({1e6 / rate:.0f} µs per report; "
            f"{cpu_rate:.0f} reports per CPU-second)"
        )
        if vocab == "chexpert":
            record(args, "labeler reports/s, one core", value=rate, baseline=ONE_CORE_GOAL,
                   ratio=rate / ONE_CORE_GOAL, goal=1.0, higher_is_better=True, unit="reports/s")  # fmt: skip
        if args.num_workers > 1:
            for evidence in (True, False):
                t0 = time.perf_counter()
                labeler.label_many(texts, num_workers=args.num_workers, evidence=evidence)
                many = len(texts) / (time.perf_counter() - t0)
                what = "with evidence" if evidence else "labels only"
                print(f"{vocab:<10} {args.num_workers} workers:    {many:8.0f} reports/s  ({what}; start-up included)")
                if vocab == "chexpert" and not evidence:
                    record(args, f"labeler reports/s, {args.num_workers} processes", value=many, baseline=rate,
                           ratio=many / rate, goal=None, higher_is_better=True, unit="reports/s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
