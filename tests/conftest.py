"""Shared fixtures. Every test runs offline with its own HF cache and a fixed identifier salt."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["MMRAD_SALT"] = "test-salt"

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "mmrad" / "config" / "presets"  # the shipped named configs (mmrad.list_configs())
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow (network or real weights): use --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _hf_home(tmp_path_factory, monkeypatch):
    """datasets/evaluate write caches under HF_HOME even for local work: keep them in a temp folder."""
    home = tmp_path_factory.getbasetemp() / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(home / "datasets"))


@pytest.fixture
def shared_data() -> Path:
    """The real public data in ../shared/data; skipped in a fresh clone that has none."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present (real public data lives beside the repo, not in it)")
    return SHARED_DATA


@pytest.fixture
def dicom_file(tmp_path):
    """A factory writing a synthetic 12-bit chest-like DICOM: ``dicom_file(photometric="MONOCHROME1", **tags)``."""
    from mmrad.io.dicom import write_dicom

    def make(name: str = "image.dcm", photometric: str = "MONOCHROME2", pixels=None, **kwargs) -> Path:
        if pixels is None:
            yy, xx = np.mgrid[0:48, 0:40]
            pixels = ((yy * 40 + xx) * 2).astype(np.uint16)  # 0..3838, a ramp within 12 bits
            kwargs.setdefault("bits_stored", 12)
        path = tmp_path / name
        write_dicom(path, pixels, photometric=photometric, **kwargs)
        return path

    return make


# ----------------------------------------------------------------------------------------------------------------
# Tiny model fixtures (mmrad.models); torch and the model stack are imported only by tests that use them
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture
def tiny_config():
    """The model section of the tiny preset: open_clip ViT (32 px, patch 8, width 32, 2 layers), a 2-layer BERT
    (hidden 32) with the shipped radiology WordPiece tokenizer, a 1-layer fusion decoder, projection 16."""
    from mmrad.config.schema import load_config

    return load_config(CONFIGS / "tiny.yaml").model


@pytest.fixture
def tiny_model(tiny_config):
    import torch

    from mmrad.models import MMRadModel

    torch.manual_seed(0)
    return MMRadModel(tiny_config)


@pytest.fixture
def batch(tiny_model):
    """A random batch for ``tiny_model``: 4 images, 4 reports (two identical), labels with 1/0/-1/NaN."""
    import torch

    generator = torch.Generator().manual_seed(0)
    size = tiny_model.config.preprocess.image_size
    reports = ["small left pleural effusion", "no acute cardiopulmonary process", "no acute cardiopulmonary process",
               "cardiomegaly with mild pulmonary edema"]  # fmt: skip
    labels = torch.full((4, len(tiny_model.label_names)), float("nan"))
    labels[:, :4] = torch.tensor([[1.0, 0.0, -1.0, 1.0], [0.0, 1.0, float("nan"), -1.0]]).repeat(2, 1)
    return {
        "pixel_values": torch.randn(4, 3, size, size, generator=generator),
        **tiny_model.tokenize(reports),
        "labels": labels,
    }


# ----------------------------------------------------------------------------------------------------------------
# A small ingested phantom corpus shared by the training, evaluation, zero-shot and grounding tests
# ----------------------------------------------------------------------------------------------------------------

PHANTOM_FINDINGS = ["Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Lung Lesion", "Consolidation"]


@pytest.fixture(scope="session")
def phantom_corpus(tmp_path_factory) -> Path:
    """80 phantom studies (64 px sources) ingested at 32 px with manifest labels: train/validation/test."""
    from mmrad.corpus.ingest import ingest
    from mmrad.phantom.corpus import make_phantom_corpus

    root = tmp_path_factory.mktemp("phantom")
    make_phantom_corpus(root / "source", n=80, image_size=64, seed=0)
    ingest(root / "source" / "manifest.csv", root / "corpus", image_size=32, labels="manifest", progress=False)
    return root / "corpus"


@pytest.fixture
def tiny_experiment(phantom_corpus):
    """the tiny preset on the phantom corpus: 5 findings, a few steps, no trackers."""
    from mmrad.config.schema import load_config

    return load_config(
        CONFIGS / "tiny.yaml",
        [
            f"data.corpus={phantom_corpus}",
            f"model.labels.names={PHANTOM_FINDINGS!r}",
            "data.batch_size=8",
            "train.max_steps=6",
            "train.eval_every=3",
            "train.save_every=3",
            "train.warmup_steps=1",
            "train.log_with=None",
        ],
    )


@pytest.fixture
def single_thread():
    """Run torch on one thread: on tiny models two OpenMP threads bring nothing, and when other processes keep the
    cores busy they were measured 10-40x slower than one. Use: ``pytestmark = pytest.mark.usefixtures(...)``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
