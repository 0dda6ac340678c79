"""One preprocessing path: ingest's decoding, training collation and inference give the same pixel_values."""

import csv
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from mmrad.config.schema import PreprocessConfig
from mmrad.corpus.format import load_corpus
from mmrad.corpus.ingest import ingest
from mmrad.io.dicom import read_dicom, write_dicom
from mmrad.processing.image_processor import ImageProcessor, parse_window, quantize
from tests.conftest import CONFIGS

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def sources(tmp_path):
    """A 12-bit MONOCHROME1 DICOM with a window, a 16-bit PNG and an 8-bit PNG, larger than the cache size."""
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    src.mkdir()
    write_dicom(src / "a.dcm", rng.integers(0, 4096, (90, 70)).astype(np.uint16), photometric="MONOCHROME1",
                bits_stored=12, window=(1800.0, 2400.0))  # fmt: skip
    Image.fromarray(rng.integers(0, 65536, (60, 100)).astype(np.uint16)).save(src / "b.png")
    Image.fromarray(rng.integers(0, 256, (80, 80)).astype(np.uint8)).save(src / "c.png")
    rows = [{"image": f"src/{n}", "patient_id": f"P{i}", "Cardiomegaly": "1", "split": "test"}
            for i, n in enumerate(["a.dcm", "b.png", "c.png"])]  # fmt: skip
    with (tmp_path / "manifest.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return tmp_path


@pytest.mark.parametrize("window", ["auto", "1000,3000"])
def test_training_collation_and_inference_give_the_same_pixel_values(sources, window, tmp_path):
    from mmrad.config.schema import load_config
    from mmrad.processing.collate import MMRadCollator
    from mmrad.training.data import adopt_corpus_decoding
    from mmrad.training.loop import build_model

    ingest(sources / "manifest.csv", tmp_path / "corpus", image_size=48, labels="manifest", window=window,
           progress=False)  # fmt: skip
    splits, info = load_corpus(tmp_path / "corpus")
    assert (info.window, info.invert_monochrome1, info.image_size) == (window, True, 48)
    cfg = load_config(CONFIGS / "tiny.yaml", [f"data.corpus={tmp_path / 'corpus'}"])
    model = build_model(cfg)
    adopt_corpus_decoding(model, info, tmp_path / "corpus")  # what training does with the corpus
    pre = model.config.preprocess
    assert (pre.window, pre.decode_size) == (window, 48)
    collate = MMRadCollator(model.tokenizer, pre, model.label_names, corpus_label_names=info.label_names)
    rows = collate.rows(splits["test"])
    training = collate([rows[i] for i in range(len(rows))])["pixel_values"]
    order = [sources / "src" / n for n in ("a.dcm", "b.png", "c.png")]
    by_row = {int(r): order[int(r)] for r in splits["test"]["manifest_row"]}
    inference = ImageProcessor(pre)([by_row[int(r)] for r in splits["test"]["manifest_row"]])["pixel_values"]
    assert torch.equal(training, inference)  # bit for bit: the same decode, the same rounding, the same fit


def test_decode_applies_the_window_and_inversion(sources):
    path = sources / "src" / "a.dcm"
    pixels = ImageProcessor(window="1000,3000").decode(path).pixels
    expected, _ = read_dicom(path, window=(1000.0, 3000.0))
    assert np.array_equal(pixels, expected)
    raw = ImageProcessor(window="1000,3000", invert_monochrome1=False).decode(path).pixels
    np.testing.assert_allclose(raw, 1.0 - expected, atol=1e-6)
    with pytest.raises(ValueError, match="center,width"):
        parse_window("wide")


def test_maps_go_back_to_the_original_image_through_the_decode_resize():
    image = np.zeros((200, 100), np.float32)
    processor = ImageProcessor(PreprocessConfig(image_size=32, mean=[0.5] * 3, std=[0.5] * 3), decode_size=50)
    batch = processor(image)
    assert batch["pixel_values"].shape == (1, 3, 32, 32) and batch["original_sizes"] == [(200, 100)]
    grid = torch.zeros(4, 4)
    grid[1, 2] = 1.0  # a patch right of centre in the upper half of the input
    heat = processor.to_original(grid, batch["matrices"][0], (200, 100), smooth=0.0)
    y, x = np.unravel_index(int(heat.argmax()), heat.shape)
    # the input is the image padded left and right (aspect 1:2): patch column 2 of 4 covers x in [50, 75)
    assert heat.shape == (200, 100) and 50 <= x < 100 and 50 <= y < 100


def test_quantize_matches_the_cache_rounding():
    from mmrad.corpus.cache import encode_png
    from mmrad.processing.transforms import to_float_array

    x = np.random.default_rng(1).random((8, 8)).astype(np.float32)
    for bits in (8, 16):
        stored = to_float_array({"bytes": encode_png(x, bits), "path": None})
        assert np.array_equal(quantize(x, bits), stored)


def test_from_pretrained_and_a_loud_warning_when_a_trained_model_meets_other_decoding(tiny_model, tmp_path, caplog):
    from mmrad.corpus.format import CorpusInfo
    from mmrad.training.data import adopt_corpus_decoding

    tiny_model.save_pretrained(tmp_path / "m")
    processor = ImageProcessor.from_pretrained(tmp_path / "m")
    assert processor.config == tiny_model.config.preprocess
    tiny_model.name_or_path = str(tmp_path / "m")  # as train.init_from loads it
    info = CorpusInfo([], "manifest", "chexpert", 64, 0, [1, 0, 0], {}, 0, 0, {}, {}, True, "k", window="minmax",
                      invert_monochrome1=True)  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="mmrad"):
        adopt_corpus_decoding(tiny_model, info, "corpus")
    assert any("PREPROCESSING CHANGES" in r.getMessage() for r in caplog.records)
    assert tiny_model.config.preprocess.window == "minmax" and tiny_model.config.preprocess.decode_size == 64
