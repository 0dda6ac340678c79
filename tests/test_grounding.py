import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmrad.cli import main
from mmrad.inference.grounding import ground, ground_report, overlay, report_phrases, to_image_space
from mmrad.inference.inputs import model_input


def hot_grid(h: int, w: int, row: int, col: int) -> torch.Tensor:
    grid = torch.zeros(h, w)
    grid[row, col] = 1.0
    return grid


@pytest.mark.parametrize("mode", ["pad", "crop", "squash"])
@pytest.mark.parametrize("shape", [(60, 40), (40, 60), (50, 50)])
def test_a_hot_patch_lands_on_its_image_region(mode, shape):
    from mmrad.config.schema import PreprocessConfig

    pre = PreprocessConfig(image_size=32, mean=[0.5] * 3, std=[0.25] * 3, resize=mode)
    image = np.zeros(shape, dtype=np.float32)
    _, matrix = model_input(image, pre)
    row, col = 1, 2  # of a 4 x 4 grid of 8-pixel patches over the 32-pixel input
    heat = to_image_space(hot_grid(4, 4, row, col), matrix, shape, 32, smooth=0.5)
    assert heat.shape == shape and heat.max() == pytest.approx(1.0)
    y, x = np.unravel_index(np.argmax(heat), shape)
    # the argmax, mapped into input pixels, falls in the hot patch
    u, v = (matrix @ np.array([x + 0.5, y + 0.5, 1.0]))[:2]
    assert int(v // 8) == row and int(u // 8) == col


def test_ground_follows_a_hand_built_attention(tiny_model, monkeypatch):
    """A decoder whose attention is one hot patch gives maps whose argmax is that patch, at the image's size."""
    size = tiny_model.config.preprocess.image_size
    grid = tiny_model.vision(torch.zeros(1, 3, size, size))[2]
    hot = (1, 3)

    def decode(memory, queries, image=None):
        b, q = memory.shape[0], queries.shape[-2]
        attention = torch.zeros(b, q, grid[0] * grid[1])
        attention[..., hot[0] * grid[1] + hot[1]] = 1.0
        return torch.zeros(b, q), [attention]

    monkeypatch.setattr(tiny_model, "decode", decode)
    image = np.random.default_rng(0).random((size * 3, size * 2), dtype=np.float32)  # tall: padded left and right
    maps = ground(tiny_model, image, ["left pleural effusion", "cardiomegaly"])
    assert [m.phrase for m in maps] == ["left pleural effusion", "cardiomegaly"]
    _, matrix = model_input(image, tiny_model.config.preprocess)
    patch = size / grid[0]
    for heatmap in maps:
        assert heatmap.map.shape == image.shape and heatmap.method == "attention"
        y, x = np.unravel_index(np.argmax(heatmap.map), image.shape)
        u, v = (matrix @ np.array([x + 0.5, y + 0.5, 1.0]))[:2]
        assert (int(v // patch), int(u // patch)) == hot


def test_cosine_method_and_report_grounding(tiny_model):
    image = np.random.default_rng(1).random((48, 48), dtype=np.float32)
    maps = ground(tiny_model, image, ["pneumothorax"], method="cosine")
    assert maps[0].method == "cosine" and maps[0].map.shape == (48, 48) and -1 <= maps[0].score <= 1
    report = "FINDINGS: Small left pleural effusion. No pneumothorax. Possible right lower lobe consolidation."
    pairs = report_phrases(report)
    assert ("Pleural Effusion", "Small left pleural effusion.") in pairs
    assert ("Consolidation", "Possible right lower lobe consolidation.") in pairs
    assert all(finding != "Pneumothorax" for finding, _ in pairs)  # negated: nothing to ground
    grounded = ground_report(tiny_model, image, report)
    assert {m.finding for m in grounded} >= {"Pleural Effusion", "Consolidation"}
    picture = overlay(image, grounded[0])
    assert picture.mode == "RGB" and picture.size[0] > 100


def test_ground_cli_writes_maps_at_image_resolution(tiny_model, tmp_path):
    model_dir = tmp_path / "model"
    tiny_model.save_pretrained(model_dir)
    image = tmp_path / "chest.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (96, 64), dtype=np.uint8)).save(image)
    report = tmp_path / "report.txt"
    report.write_text("IMPRESSION: Moderate cardiomegaly. Small right pleural effusion.")
    out = tmp_path / "ground"
    argv = ["ground", str(model_dir), str(image)]
    assert main([*argv, "--phrases", "cardiomegaly", "effusion", "--out", str(out)]) == 0
    entries = json.loads((out / "index.json").read_text())["entries"]
    assert [e["phrase"] for e in entries] == ["cardiomegaly", "effusion"]
    for e in entries:
        assert np.load(out / e["map"]).shape == (96, 64) and (out / e["overlay"]).is_file()
    assert main([*argv, "--report", str(report), "--out", str(out / "r")]) == 0
    entries = json.loads((out / "r" / "index.json").read_text())["entries"]
    assert {e["finding"] for e in entries} == {"Cardiomegaly", "Pleural Effusion"}


def test_real_nih_image_maps_align_with_a_synthetic_box(tiny_model, shared_data):
    """A 1024 x 1024 NIH image: a hot patch maps back inside the box it covers (alignment, not accuracy)."""
    from mmrad.io.images import load_image

    path = sorted((shared_data / "nih_sample" / "images").glob("*.png"))[0]
    image, _ = load_image(path)
    size = tiny_model.config.preprocess.image_size
    _, matrix = model_input(image, tiny_model.config.preprocess)
    grid = tiny_model.vision(torch.zeros(1, 3, size, size))[2]
    row, col = 2, 1
    heat = to_image_space(hot_grid(*grid, row, col), matrix, image.shape, size, smooth=0.0)
    assert heat.shape == (1024, 1024)
    cell = 1024 / grid[0]  # the patch's box in the original image
    box = (col * cell, row * cell, cell, cell)
    y, x = np.unravel_index(np.argmax(heat), heat.shape)
    assert box[0] <= x < box[0] + box[2] and box[1] <= y < box[1] + box[3]
