"""Real radiographs, real pretrained tower: mmrad vs the timm loop a user would write, on NIH ChestX-ray14 boxes.

    .venv/bin/python scripts/bench_real_nih.py [--dev ../shared/data/nih_boxes_dev] [--test DIR] [--keep OUT]

In one run, on one patient-level split (``--dev`` split 70/10/20 by patient with a fixed seed; with ``--test``, the dev
set is split 88/12 into train/validation and ``--test`` is the test set):

1. mmrad as a user runs it, each command in its own process: ``mmrad ingest`` (a manifest whose ``split`` column
   holds that split) -> ``mmrad train --config the nih-effnet-lite2 preset`` (ImageNet EfficientNet-Lite2 + the
   pretrained MiniLM for the finding queries, attention trained toward the boxes) -> ``mmrad evaluate`` on the test
   split;
2. the hand-written baseline (``scripts/timm_baseline.py``): timm ``tf_efficientnet_lite2`` with the same weights,
   plain BCE, AdamW + one-cycle, batch 32, the same image size and epochs; its class activation maps;
3. a location prior: per finding, the mean of the train boxes as a map.

It prints per-finding and macro AUROC over the 8 box findings, the pointing game over the test boxes (a map's peak
inside a box of that finding, for each present finding with a box) of mmrad's attention and cosine maps, CAM and the
prior, each side's wall time and training throughput, and records the ratios in ``bench/results.json``. ``--keep OUT``
leaves mmrad's model in ``OUT/model`` and the corpus in ``OUT/test_corpus`` (its ``test`` split is the benchmark's
test set; ``train``/``validation`` are the training data). Without ``../shared/data`` (a fresh clone) it skips.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchlib import REPO, add_common_arguments, record

from mmrad.config.registry import PRESET_DIR as CONFIGS

FINDINGS = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax"]
DEFAULT_DEV = REPO.parent / "shared" / "data" / "nih_boxes_dev"
PYTHON = sys.executable


def read_manifest(path: Path) -> list[dict]:
    """Rows with absolute image paths, labels as 0/1 ints and boxes in [0, 1] image coordinates."""
    from PIL import Image

    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["image"] = str((path.parent / row["image"]).resolve())
        width, height = Image.open(row["image"]).size  # the header only
        row["norm_boxes"] = [
            {"label": b["label"], "x0": b["x"] / width, "y0": b["y"] / height, "x1": (b["x"] + b["w"]) / width,
             "y1": (b["y"] + b["h"]) / height}
            for b in json.loads(row.get("boxes") or "[]")
        ]  # fmt: skip
    return rows


def assign_splits(dev: list[dict], test: list[dict] | None, seed: int = 0) -> list[dict]:
    """One table with a ``split`` column: a stratified patient split of ``dev`` (70/10/20, or 88/12 train/validation
    when a test set is given) plus the test rows."""
    from mmrad.corpus.splits import SPLIT_NAMES, patient_split

    labels = np.array([[float(r[f]) for f in FINDINGS] for r in dev])
    fractions = (0.7, 0.1, 0.2) if test is None else (0.88, 0.12, 0.0)
    for row, s in zip(dev, patient_split([r["patient_id"] for r in dev], labels, fractions, seed), strict=True):
        row["split"] = SPLIT_NAMES[s]
    for row in test or []:
        row["split"] = "test"
    return dev + (test or [])


def write_manifest(rows: list[dict], path: Path) -> None:
    fields = ["image", "patient_id", *FINDINGS, "boxes", "split"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def run(args: list[str]) -> float:
    """Run a command, echoing its output; returns its wall time."""
    print("$", " ".join(args), flush=True)
    start = time.perf_counter()
    subprocess.run(args, check=True, cwd=REPO)
    return time.perf_counter() - start


def pointing_game(rows: list[dict], peak_of) -> tuple[float, dict[str, float], int]:
    """Share of (test row, present finding with a box) pairs whose map peak ``peak_of(i, k) -> (x, y)`` in [0, 1]
    lies inside a box of that finding; overall, per finding, and the number of pairs."""
    hits: dict[str, list[bool]] = {f: [] for f in FINDINGS}
    for i, row in enumerate(rows):
        for k, finding in enumerate(FINDINGS):
            boxes = [b for b in row["norm_boxes"] if b["label"] == finding]
            if int(row[finding]) != 1 or not boxes:
                continue
            x, y = peak_of(i, k)
            hits[finding].append(any(b["x0"] <= x <= b["x1"] and b["y0"] <= y <= b["y1"] for b in boxes))
    every = [h for v in hits.values() for h in v]
    return float(np.mean(every)), {f: float(np.mean(v)) for f, v in hits.items() if v}, len(every)


def location_prior(train: list[dict], grid: int = 64) -> np.ndarray:
    """(K, 2) peak of each finding's mean train-box map, in [0, 1] coordinates."""
    peaks = np.full((len(FINDINGS), 2), 0.5)
    for k, finding in enumerate(FINDINGS):
        acc = np.zeros((grid, grid))
        for row in train:
            for b in row["norm_boxes"]:
                if b["label"] == finding:
                    x0, y0 = int(b["x0"] * grid), int(b["y0"] * grid)
                    acc[
                        y0 : max(int(np.ceil(b["y1"] * grid)), y0 + 1), x0 : max(int(np.ceil(b["x1"] * grid)), x0 + 1)
                    ] += 1
        if acc.any():
            y, x = np.unravel_index(int(acc.argmax()), acc.shape)
            peaks[k] = ((x + 0.5) / grid, (y + 0.5) / grid)
    return peaks


def macro_auroc(probs: np.ndarray, rows: list[dict]) -> tuple[float, dict[str, float]]:
    from mmrad.evaluation.metrics.functional import multilabel_metrics

    labels = np.array([[float(r[f]) for f in FINDINGS] for r in rows])
    metrics = multilabel_metrics(probs, labels, FINDINGS)
    return metrics["macro_auroc"], {f: v["auroc"] for f, v in metrics["per_class"].items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dev", type=Path, default=DEFAULT_DEV, help=f"dev manifest folder (default {DEFAULT_DEV})")
    parser.add_argument("--test", type=Path, help="a held-out manifest folder used as the test set")
    parser.add_argument("--keep", type=Path, metavar="OUT", help="keep the model (OUT/model) and corpus")
    parser.add_argument("--config", type=Path, default=CONFIGS / "nih-effnet-lite2.yaml")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], help="extra mmrad train --set overrides")
    add_common_arguments(parser)
    args = parser.parse_args()
    if not (args.dev / "manifest.csv").is_file():
        print(f"skipped: {args.dev}/manifest.csv not found (the real data lives in ../shared/data beside the repo)")
        return 0

    work = Path(tempfile.mkdtemp(prefix="mmrad_nih_"))
    dev = read_manifest(args.dev / "manifest.csv")
    test = read_manifest(args.test / "manifest.csv") if args.test else None
    rows = assign_splits(dev, test)
    write_manifest(rows, work / "manifest.csv")
    train_rows = [r for r in rows if r["split"] == "train"]
    test_rows = [r for r in rows if r["split"] == "test"]
    print(f"split: train {len(train_rows)}, validation {sum(r['split'] == 'validation' for r in rows)}, "
          f"test {len(test_rows)} images; work folder {work}", flush=True)  # fmt: skip

    # 1. the hand-written baseline
    baseline_seconds = run([PYTHON, "scripts/timm_baseline.py", str(work / "manifest.csv"), "--out",
                            str(work / "baseline.json"), "--image-size", str(args.image_size), "--epochs",
                            str(args.epochs)])  # fmt: skip
    baseline = json.loads((work / "baseline.json").read_text())
    assert baseline["images"] == [r["image"] for r in test_rows]

    # 2. mmrad, as a user runs it
    mmrad = [PYTHON, "-m", "mmrad.cli"]
    seconds = {"ingest": run([*mmrad, "ingest", str(work / "manifest.csv"), "--out", str(work / "corpus"),
                              "--labels", "manifest", "--vocabulary", "nih14", "--image-size", str(args.image_size),
                              "--no-progress"])}  # fmt: skip
    seconds["train"] = run([*mmrad, "train", "--config", str(args.config), "--corpus", str(work / "corpus"),
                            "--out", str(work / "run"), "--set", f"train.epochs={args.epochs}",
                            f"model.preprocess.image_size={args.image_size}",
                            f"model.vision.model_cfg.vision_cfg.image_size={args.image_size}",
                            *args.overrides])  # fmt: skip
    seconds["evaluate"] = run([*mmrad, "evaluate", str(work / "run" / "model"), str(work / "corpus"), "--split",
                               "test", "--out", str(work / "metrics.json")])  # fmt: skip
    mmrad_seconds = sum(seconds.values())
    metrics = json.loads((work / "metrics.json").read_text())
    summary = json.loads((work / "run" / "train_summary.json").read_text())

    # 3. scores, computed the same way for every side
    base_macro, base_auroc = macro_auroc(np.array(baseline["probs"]), test_rows)
    cls = metrics["classification"]
    mm_macro, mm_auroc = cls["macro_auroc"], {f: cls["per_class"][f]["auroc"] for f in FINDINGS}
    cams = np.array(baseline["cam_peaks"])
    cam_pg, cam_per, pairs = pointing_game(test_rows, lambda i, k: cams[i, k])
    prior = location_prior(train_rows)
    prior_pg, prior_per, _ = pointing_game(test_rows, lambda i, k: prior[k])
    grounding = metrics["grounding"]
    att, cos = grounding["attention"], grounding["cosine"]

    print(f"\n{'finding':<14} {'mmrad AUROC':>11} {'timm AUROC':>10} {'mmrad PG':>9} {'cosine PG':>9} "
          f"{'CAM PG':>7} {'prior PG':>8}")  # fmt: skip
    for f in FINDINGS:
        row = [mm_auroc[f], base_auroc[f], att["per_finding"].get(f, {}).get("pointing_game", np.nan),
               cos["per_finding"].get(f, {}).get("pointing_game", np.nan), cam_per.get(f, np.nan),
               prior_per.get(f, np.nan)]  # fmt: skip
        print(f"{f:<14} " + " ".join(f"{v:>{w}.3f}" for v, w in zip(row, (11, 10, 9, 9, 7, 8), strict=True)))
    print(f"{'macro':<14} {mm_macro:>11.3f} {base_macro:>10.3f} {att['pointing_game']:>9.3f} "
          f"{cos['pointing_game']:>9.3f} {cam_pg:>7.3f} {prior_pg:>8.3f}")  # fmt: skip
    print(f"pointing-game pairs: mmrad {grounding['pairs']}, CAM/prior {pairs}")
    print(f"wall time: mmrad {mmrad_seconds:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in seconds.items())}), "
          f"baseline {baseline_seconds:.0f} s")  # fmt: skip
    mm_ips, base_ips = summary["images_per_second"], baseline["train_images_per_second"]
    print(f"training throughput: mmrad {mm_ips:.2f} images/s, baseline {base_ips:.2f} images/s\n")

    record(args, "NIH boxes: macro AUROC, mmrad vs hand-written timm", value=mm_macro, baseline=base_macro,
           ratio=mm_macro / base_macro, goal=1.05, higher_is_better=True, unit="AUROC")  # fmt: skip
    record(args, "NIH boxes: attention pointing game", value=att["pointing_game"], baseline=None,
           ratio=att["pointing_game"], goal=0.5, higher_is_better=True, unit="")  # fmt: skip
    record(args, "NIH boxes: attention pointing game minus location prior (difference)",
           value=att["pointing_game"], baseline=prior_pg, ratio=att["pointing_game"] - prior_pg, goal=0.1,
           higher_is_better=True, unit="")  # fmt: skip
    record(args, "NIH boxes: wall time, mmrad (ingest+train+evaluate) vs hand-written", value=mmrad_seconds,
           baseline=baseline_seconds, ratio=mmrad_seconds / baseline_seconds, goal=1.2, higher_is_better=False,
           unit="s")  # fmt: skip
    record(args, "NIH boxes: training throughput, mmrad train vs hand-written loop", value=mm_ips, baseline=base_ips,
           ratio=mm_ips / base_ips, goal=0.95, higher_is_better=True, unit="images/s")  # fmt: skip
    result = {"mmrad": {"macro_auroc": mm_macro, "auroc": mm_auroc, "pointing_game": att["pointing_game"],
                        "pointing_game_per_finding": {f: v["pointing_game"] for f, v in att["per_finding"].items()},
                        "cosine_pointing_game": cos["pointing_game"], "seconds": seconds,
                        "images_per_second": mm_ips},
              "baseline": {"macro_auroc": base_macro, "auroc": base_auroc, "cam_pointing_game": cam_pg,
                           "cam_per_finding": cam_per, "seconds": baseline_seconds, "images_per_second": base_ips},
              "prior": {"pointing_game": prior_pg, "per_finding": prior_per}, "pairs": pairs,
              "split": {s: sum(r["split"] == s for r in rows) for s in ("train", "validation", "test")}}  # fmt: skip
    (work / "bench_real_nih.json").write_text(json.dumps(result, indent=1))
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        for name, src in (("model", work / "run" / "model"), ("test_corpus", work / "corpus")):
            shutil.rmtree(args.keep / name, ignore_errors=True)
            shutil.copytree(src, args.keep / name)
        shutil.copy2(work / "bench_real_nih.json", args.keep / "bench_real_nih.json")
        shutil.copy2(work / "metrics.json", args.keep / "metrics.json")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
