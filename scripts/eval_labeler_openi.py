"""Measure the report labeler against the OpenI gold labels (NegBio's Indiana University gold standard).

    .venv/bin/python scripts/eval_labeler_openi.py                      # nih14 vocabulary, 13 findings
    .venv/bin/python scripts/eval_labeler_openi.py --vocabulary chexpert  # the CheXpert vocabulary, mapped
    .venv/bin/python scripts/eval_labeler_openi.py --errors Effusion      # print the disagreements of one finding

The labeler reads each report's findings and impression columns (joined by a blank line). The gold has 1 for
"present" and 0 for "absent or not mentioned", so a label counts as predicted-positive when it is 1, and -1
(uncertain) is counted both ways: as positive and as negative. Prints per-finding precision / recall / F1 and the
micro and macro averages; writes nothing unless ``--out FILE.json`` is given.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

from mmrad.reports.labeler import ReportLabeler

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "openi"
NIH13 = [
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
]  # fmt: skip  (Hernia has no positive in the gold)
# gold column -> labeler findings whose union predicts it
MAPPINGS = {
    "nih14": {name: [name] for name in NIH13},
    "chexpert": {
        "Atelectasis": ["Atelectasis"], "Cardiomegaly": ["Cardiomegaly"], "Effusion": ["Pleural Effusion"],
        "Pneumonia": ["Pneumonia"], "Pneumothorax": ["Pneumothorax"], "Consolidation": ["Consolidation"],
        "Edema": ["Edema"], "Mass|Nodule": ["Lung Lesion"], "Pleural_Thickening": ["Pleural Other"],
        "normal": ["No Finding"],
    },
}  # fmt: skip


def read_openi(folder: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """The report texts (findings + impression) and the gold columns, for the reports that have gold labels."""
    with open(folder / "indiana_reports.csv", newline="", encoding="utf-8") as f:
        reports = {
            f"CXR{row['uid']}": "\n\n".join(t for t in (row["findings"], row["impression"]) if t and t.strip())
            for row in csv.DictReader(f)
        }
    with open(folder / "openi_gold_dev.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    missing = [r["filename"] for r in rows if r["filename"] not in reports]
    if missing:
        raise SystemExit(f"{len(missing)} gold rows have no report (e.g. {missing[:3]})")
    texts = [reports[r["filename"]] for r in rows]
    gold = {col: np.array([int(r[col]) for r in rows]) for col in rows[0] if col != "filename"}
    return texts, gold


def gold_column(gold: dict[str, np.ndarray], key: str) -> np.ndarray:
    return np.max([gold[k] for k in key.split("|")], axis=0)


def prf(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    tp = int(np.sum(pred & true))
    fp = int(np.sum(pred & ~true))
    fn = int(np.sum(~pred & true))
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f, "tp": tp, "fp": fp, "fn": fn, "support": int(true.sum())}


def evaluate(labels: np.ndarray, names: list[str], gold: dict[str, np.ndarray], mapping: dict) -> dict:
    out = {}
    for mode, positive in (("uncertain_as_positive", (1.0, -1.0)), ("uncertain_as_negative", (1.0,))):
        per = {}
        for key, findings in mapping.items():
            cols = [names.index(f) for f in findings]
            pred = np.isin(labels[:, cols], positive).any(axis=1)
            per[key] = prf(pred, gold_column(gold, key).astype(bool))
        scored = {k: v for k, v in per.items() if k != "normal"}  # the averages are over findings
        tp, fp, fn = (sum(v[x] for v in scored.values()) for x in ("tp", "fp", "fn"))
        micro_p, micro_r = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
        out[mode] = {
            "per_finding": per,
            "micro": {
                "precision": micro_p,
                "recall": micro_r,
                "f1": 2 * micro_p * micro_r / max(micro_p + micro_r, 1e-12),
            },
            "macro": {m: float(np.mean([v[m] for v in scored.values()])) for m in ("precision", "recall", "f1")},
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the openi folder")
    parser.add_argument("--vocabulary", default="nih14", choices=sorted(MAPPINGS))
    parser.add_argument(
        "--speculation",
        default=None,
        choices=["uncertain", "absent"],
        help="label of findings only proposed as an interpretation ('may represent X'); default: the vocabulary's "
        "convention (nih14: absent, as the OpenI gold indexes them; chexpert: uncertain)",
    )
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--errors", metavar="COLUMN", help="print the reports where COLUMN disagrees with the gold")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"no OpenI data at {args.data}", file=sys.stderr)
        return 1
    texts, gold = read_openi(args.data)
    labeler = ReportLabeler(args.vocabulary, speculation=args.speculation)
    t0 = time.perf_counter()
    results = labeler.label_many(texts)
    seconds = time.perf_counter() - t0
    labels = np.stack([r.as_array() for r in results])
    mapping = MAPPINGS[args.vocabulary]
    scores = evaluate(labels, labeler.label_names, gold, mapping)
    print(
        f"OpenI dev: {len(texts)} reports, vocabulary {args.vocabulary}, speculation {labeler.speculation}, "
        f"labeled in {seconds:.2f} s"
    )
    for mode, res in scores.items():
        print(f"\n{mode.replace('_', ' ')}")
        print(
            f"  {'finding':<20} {'precision':>9} {'recall':>7} {'F1':>6} {'support':>8} {'TP':>5} {'FP':>5} {'FN':>5}"
        )
        for key, v in res["per_finding"].items():
            print(
                f"  {key:<20} {v['precision']:9.3f} {v['recall']:7.3f} {v['f1']:6.3f} {v['support']:8d}"
                f" {v['tp']:5d} {v['fp']:5d} {v['fn']:5d}"
            )
        for avg in ("micro", "macro"):
            v = res[avg]
            print(f"  {avg + ' average':<20} {v['precision']:9.3f} {v['recall']:7.3f} {v['f1']:6.3f}")
    if args.errors:
        _print_errors(args.errors, texts, results, labels, labeler.label_names, gold, mapping)
    if args.out:
        meta = {"vocabulary": args.vocabulary, "speculation": labeler.speculation, "reports": len(texts)}
        args.out.write_text(json.dumps({**meta, **scores}, indent=2))
    return 0


def _print_errors(column, texts, results, labels, names, gold, mapping) -> None:
    if column not in mapping:
        raise SystemExit(f"--errors: {column!r} is not one of {list(mapping)}")
    cols = [names.index(f) for f in mapping[column]]
    pred = np.isin(labels[:, cols], (1.0, -1.0)).any(axis=1)
    true = gold_column(gold, column).astype(bool)
    for kind, mask in (("false positive", pred & ~true), ("false negative", ~pred & true)):
        print(f"\n==== {column}: {int(mask.sum())} {kind}s")
        for i in np.flatnonzero(mask):
            print(f"--- #{i}  labels {[labels[i, c] for c in cols]}")
            print("   ", " ".join(texts[i].split()))
            for f in mapping[column]:
                for ev in results[i].evidence[f]:
                    print(f"    evidence {ev.value:+.0f} {ev.mention!r} cue={ev.cue!r} in: {ev.sentence!r}")


if __name__ == "__main__":
    sys.exit(main())
