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
    from mmrad.data.dicom import write_dicom

    def make(name: str = "image.dcm", photometric: str = "MONOCHROME2", pixels=None, **kwargs) -> Path:
        if pixels is None:
            yy, xx = np.mgrid[0:48, 0:40]
            pixels = ((yy * 40 + xx) * 2).astype(np.uint16)  # 0..3838, a ramp within 12 bits
            kwargs.setdefault("bits_stored", 12)
        path = tmp_path / name
        write_dicom(path, pixels, photometric=photometric, **kwargs)
        return path

    return make
