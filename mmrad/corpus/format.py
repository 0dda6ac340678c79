"""The on-disk corpus format: what a corpus folder holds, how it is written, and :func:`load_corpus` to read it.

A corpus folder (built by :func:`mmrad.corpus.ingest.ingest`) holds the ``datasets.DatasetDict`` splits
(train/validation/test), ``rejects.csv`` (``row,path,reason``) and ``mmrad_corpus.json`` (a :class:`CorpusInfo`),
which is written last and so marks a finished corpus.

Row schema (one row per image): ``image`` (PNG), ``report``, ``findings``, ``impression``, ``sentences``,
``labels`` (float32, NaN = unknown, aligned to ``CorpusInfo.label_names``), ``label_source`` (``manifest``,
``labeler`` or ``manifest+labeler``), ``boxes`` (``label, x, y, w, h`` in cached-image pixels), ``masks``
(``label``, ``mask`` PNG at the cached size), ``patient_key``/``study_key`` (salted hashes), ``view``, ``height``,
``width``, ``orig_height``, ``orig_width``, ``source_format``, ``bit_depth``, ``manifest_row``. No raw identifiers and
no source paths are stored.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np

from mmrad import __version__
from mmrad.corpus.cache import quiet_datasets
from mmrad.errors import MMRadError
from mmrad.files import atomic_file, writing

CORPUS_VERSION = 1  # bump when the corpus layout changes
INFO_FILE = "mmrad_corpus.json"
REJECTS_FILE = "rejects.csv"
CACHE_DIR = ".mmrad_cache"


@dataclass
class CorpusInfo:
    """What a corpus folder holds, stored as ``mmrad_corpus.json`` beside the splits."""

    label_names: list[str]
    labels: str  # "manifest", "both", or the labeler's vocabulary
    vocabulary: str
    image_size: int
    seed: int
    split: list[float]
    num_rows: dict[str, int]  # split -> rows
    total: int  # manifest records read
    rejected: int
    reject_reasons: dict[str, int]  # reason category -> count
    label_sources: dict[str, int]
    deidentified: bool  # report text went through deidentify_text
    key: str  # hash of everything the corpus was built from
    reports: int | None = None  # rows with report text (None: a corpus written before this was recorded)
    # the decoding choices of the cached images (ImageProcessor.decode): a model trained on the corpus records them
    window: str | None = None  # "auto", "none", "minmax" or "center,width" (None: not recorded)
    invert_monochrome1: bool | None = None
    mmrad_version: str = __version__
    corpus_version: int = CORPUS_VERSION


def corpus_features():
    """The ``datasets.Features`` of a corpus split."""
    from datasets import Features, Image, Sequence, Value

    box = {k: Value("float32") for k in ("x", "y", "w", "h")}
    return Features(
        {
            "image": Image(),
            "report": Value("string"),
            "findings": Value("string"),
            "impression": Value("string"),
            "sentences": Sequence(Value("string")),
            "labels": Sequence(Value("float32")),
            "label_source": Value("string"),
            "boxes": [{"label": Value("string"), **box}],
            "masks": [{"label": Value("string"), "mask": Image()}],
            "patient_key": Value("string"),
            "study_key": Value("string"),
            "view": Value("string"),
            "height": Value("int32"),
            "width": Value("int32"),
            "orig_height": Value("int32"),
            "orig_width": Value("int32"),
            "source_format": Value("string"),
            "bit_depth": Value("int32"),
            "manifest_row": Value("int64"),
        }
    )


def write_corpus(out: Path, splits, info: CorpusInfo, rejects: list[tuple[int, str, str]]) -> None:
    """Write splits, rejects.csv and the info file so that a crash never leaves a corpus that looks finished."""
    staging = out / CACHE_DIR / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with writing(out), quiet_datasets():
            # datasets cannot load an empty split saved with zero shards: give empty splits one (empty) shard
            splits.save_to_disk(str(staging), num_shards={name: 1 for name, split in splits.items() if not len(split)})
            with (staging / REJECTS_FILE).open("w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(["row", "path", "reason"])
                writer.writerows(rejects)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # a full disk: the previous corpus (if any) is untouched
        raise
    (out / INFO_FILE).unlink(missing_ok=True)  # the info file marks a finished corpus: it goes first, comes last
    for name in ["dataset_dict.json", REJECTS_FILE, *splits]:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(staging / name, target)
    shutil.rmtree(staging, ignore_errors=True)
    with atomic_file(out / INFO_FILE) as tmp:
        tmp.write_text(json.dumps(dataclasses.asdict(info), indent=2, allow_nan=False), encoding="utf-8")


def read_info(path: Path) -> CorpusInfo | None:
    try:
        data = json.loads((path / INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    known = {f.name for f in dataclasses.fields(CorpusInfo)}
    try:
        return CorpusInfo(**{k: v for k, v in data.items() if k in known})
    except TypeError:
        return None


def load_corpus(path: str | PathLike):
    """Load an ingested corpus.

    Returns:
        ``(splits, info)``: the ``datasets.DatasetDict`` (train/validation/test) and its :class:`CorpusInfo`
        (``info.label_names`` is aligned to each row's ``labels``).

    Raises:
        MMRadError: the folder is not a finished mmrad corpus.
    """
    from datasets import load_from_disk

    path = Path(path)
    info = read_info(path)
    if info is None or not (path / "dataset_dict.json").is_file():
        raise MMRadError(f"{path}: not an mmrad corpus (no {INFO_FILE}; build one with `mmrad ingest`)")
    if info.corpus_version > CORPUS_VERSION:
        raise MMRadError(f"{path}: corpus format {info.corpus_version} is newer than this mmrad ({CORPUS_VERSION})")
    return load_from_disk(str(path)), info


def corpus_label_matrix(split) -> np.ndarray:
    """The (N, K) float32 labels of a split, read without decoding images."""
    values = list(split.select_columns(["labels"])["labels"])
    if not values:
        return np.zeros((0, 0), dtype=np.float32)
    return np.asarray(values, dtype=np.float32)


def annotation_kind(split) -> str | None:
    """``"masks"`` when some row of ``split`` has a finding mask, else ``"boxes"`` when some row has a box, else None;
    read from the list lengths, without decoding a mask image."""
    import pyarrow.compute as pc

    for name in ("masks", "boxes"):
        if name in split.column_names and len(split):
            column = split.select_columns([name]).with_format("arrow")[:][name]
            if pc.sum(pc.list_value_length(column)).as_py():
                return name
    return None
