"""Corpora without report text (image labels and boxes only, as ChestX-ray14 or VinDr-CXR ship) and mixed ones."""

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmrad.corpus.format import load_corpus
from mmrad.corpus.ingest import ingest
from mmrad.corpus.manifest import ManifestError
from mmrad.corpus.splits import SPLIT_NAMES
from mmrad.models.losses import contrastive_loss
from tests.conftest import CONFIGS

pytestmark = pytest.mark.usefixtures("single_thread")

FINDINGS = ["Cardiomegaly", "Pleural Effusion"]


def _manifest(root: Path, n: int, *, reports: str) -> Path:
    """``n`` small images with label columns and boxes; ``reports`` is "none" (no column), "all" or "mixed" (every
    other row, plus one row with neither report nor label)."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (40, 48), dtype=np.uint8)).save(root / "img" / f"{i}.png")
        row = {"image": f"img/{i}.png", "patient_id": f"P{i}", "Cardiomegaly": str(i % 2), "Pleural Effusion": "0"}
        if i % 2:
            row["boxes"] = json.dumps([{"label": "Cardiomegaly", "x": 10, "y": 12, "w": 20, "h": 14}])
        if reports == "all" or (reports == "mixed" and i % 2 == 0):
            row["report"] = "Heart size is enlarged." if i % 2 else "No acute findings."
        rows.append(row)
    if reports == "mixed":
        Image.fromarray(np.zeros((40, 48), dtype=np.uint8)).save(root / "img" / "extra.png")
        rows.append({"image": "img/extra.png", "patient_id": "PX", "report": ""})
    fields = list(dict.fromkeys(k for r in rows for k in r))
    path = root / "manifest.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_manifest_without_report_column_ingests(tmp_path):
    summary = ingest(_manifest(tmp_path / "src", 12, reports="none"), tmp_path / "corpus", image_size=32,
                     labels="manifest", progress=False)  # fmt: skip
    assert summary.kept == 12 and summary.rejected == 0 and summary.info.reports == 0
    splits, info = load_corpus(tmp_path / "corpus")
    rows = [r for name in SPLIT_NAMES for r in splits[name]]
    assert {r["report"] for r in rows} == {""} and all(r["sentences"] == [] for r in rows)
    boxed = [r for r in rows if r["boxes"]]
    assert len(boxed) == 6 and all(r["labels"][info.label_names.index("Cardiomegaly")] == 1 for r in boxed)


def test_labels_from_reports_need_a_report_column(tmp_path):
    with pytest.raises(ManifestError, match=r"report \(or report_path\), which the report labeler reads"):
        ingest(_manifest(tmp_path / "src", 4, reports="none"), tmp_path / "corpus", labels="chexpert", progress=False)


def test_mixed_manifest_keeps_rows_without_report_and_rejects_rows_with_nothing(tmp_path):
    summary = ingest(_manifest(tmp_path / "src", 12, reports="mixed"), tmp_path / "corpus", image_size=32,
                     progress=False)  # fmt: skip
    # the 13th row names no report and no label: nothing to learn from
    assert summary.kept == 12 and summary.rejected == 1 and summary.info.reports == 6
    assert summary.info.reject_reasons == {"no report and no finding labels": 1}


def test_contrastive_loss_counts_only_rows_with_a_report():
    torch.manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1).requires_grad_()
    texts = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    scale = torch.tensor(10.0)
    mask = torch.tensor([True, False, True, True, False, True])
    masked = contrastive_loss(images, texts, scale, mask)
    assert torch.allclose(masked, contrastive_loss(images[mask], texts[mask], scale))
    none = contrastive_loss(images, texts, scale, torch.zeros(6, dtype=torch.bool))
    none.backward()
    assert none.item() == 0 and images.grad is not None and not images.grad.any()


def _experiment(corpus: Path, steps: int = 4):
    from mmrad.config.schema import load_config

    return load_config(CONFIGS / "tiny.yaml", [
        f"data.corpus={corpus}", f"model.labels.names={FINDINGS!r}", "data.batch_size=4", f"train.max_steps={steps}",
        "train.eval_every=2", "train.save_every=2", "train.warmup_steps=1", "model.loss.grounding=1.0",
    ])  # fmt: skip


def test_training_on_a_corpus_without_reports_turns_the_report_losses_off(tmp_path, caplog):
    from mmrad.models import MMRadModel
    from mmrad.training.loop import train

    ingest(_manifest(tmp_path / "src", 16, reports="none"), tmp_path / "corpus", image_size=32, labels="manifest",
           progress=False)  # fmt: skip
    cfg = _experiment(tmp_path / "corpus")
    assert cfg.model.loss.contrastive > 0
    with caplog.at_level(logging.INFO, logger="mmrad"):
        model_dir = train(cfg, tmp_path / "run")
    lines = [r.getMessage() for r in caplog.records if "no report text" in r.getMessage()]
    assert len(lines) == 1 and "report losses" in lines[0]
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert all(np.isfinite(summary["train_losses"]))
    model = MMRadModel.from_pretrained(model_dir).eval()
    assert model.config.loss.contrastive == 0 and model.config.loss.grounding == 1.0
    # free-text queries still go through the text tower: zero-shot scores and maps for any phrase
    with torch.no_grad():
        logits, maps = model.score_queries(torch.zeros(2, 3, 32, 32), ["enlarged heart", "left pleural fluid"])
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
    assert maps.shape[:2] == (2, 2) and torch.allclose(maps.flatten(2).sum(-1), torch.ones(2, 2), atol=1e-4)


def test_training_on_a_mixed_corpus_uses_the_reports_it_has(tmp_path):
    from mmrad.training.data import build_dataloaders
    from mmrad.training.loop import build_model

    ingest(_manifest(tmp_path / "src", 16, reports="mixed"), tmp_path / "corpus", image_size=32, progress=False)
    cfg = _experiment(tmp_path / "corpus")
    model = build_model(cfg)
    data = build_dataloaders(cfg, model)
    assert model.config.loss.contrastive > 0  # some rows have reports: the loss stays on
    batch = next(iter(data.train_loader))
    assert batch["has_report"].dtype == torch.bool and 0 < int(batch["has_report"].sum()) < 4
    text = {k: batch[k] for k in ("input_ids", "attention_mask")}
    out = model(pixel_values=batch["pixel_values"], labels=batch["labels"], report_mask=batch["has_report"], **text)
    keep = batch["has_report"]
    expected = contrastive_loss(out.image_embeds[keep], out.text_embeds[keep], out.logit_scale)
    assert torch.allclose(out.loss_terms["contrastive"], expected)
