"""Images for inference (zero-shot scoring, grounding): files, folders and ingested corpora, as model inputs.

A folder is searched recursively for image files (by suffix) and for DICOM files (by content, whatever their name).
A corpus folder (written by ``mmrad ingest``) gives the rows of one split. Each item keeps the matrix from its
image's pixels to model-input pixels, so maps computed on the model input can be drawn back onto the image.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mmrad.config.schema import PreprocessConfig
from mmrad.errors import MMRadError, MMRadImageError
from mmrad.processing.image_processor import DecodedImage, ImageProcessor
from mmrad.processing.transforms import encoded_images

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"}
CORPUS_MARKER = "mmrad_corpus.json"


@dataclass
class InferenceItem:
    id: str  # the path as given (files) or "split:index" (corpus rows)
    path: Path | None = None
    row: int | None = None  # index into ``corpus_split``


def is_corpus(path: Path) -> bool:
    return path.is_dir() and (path / CORPUS_MARKER).is_file()


def collect_inputs(inputs: list[str | Path], *, split: str = "test") -> tuple[list[InferenceItem], object]:
    """Expand files, folders and at most one corpus folder into items.

    Returns:
        ``(items, corpus_split)``: ``corpus_split`` is the ``datasets.Dataset`` the corpus items index, else None.

    Raises:
        MMRadError: an input that does not exist, or no image found.
    """
    from mmrad.io.dicom import is_dicom

    items: list[InferenceItem] = []
    corpus_split = None
    for given in inputs:
        path = Path(given)
        if not path.exists():
            raise MMRadError(f"{given}: no such file or folder")
        if is_corpus(path):
            if corpus_split is not None:
                raise MMRadError("give at most one corpus folder per run")
            from mmrad.corpus.format import load_corpus

            splits, _ = load_corpus(path)
            if split not in splits:
                raise MMRadError(f"{path}: no split {split!r} (have: {', '.join(splits)})")
            corpus_split = encoded_images(splits[split])
            items += [InferenceItem(f"{split}:{i}", row=i) for i in range(len(corpus_split))]
        elif path.is_dir():
            found = sorted(
                p for p in path.rglob("*")
                if p.is_file() and not p.name.startswith(".") and (p.suffix.lower() in IMAGE_SUFFIXES or is_dicom(p))
            )  # fmt: skip
            if not found:
                logger.warning("%s: no image files found", path)
            items += [InferenceItem(str(p), path=p) for p in found]
        else:
            items.append(InferenceItem(str(given), path=path))
    if not items:
        raise MMRadError("no images to process")
    return items, corpus_split


def model_input(image: np.ndarray, preprocess: PreprocessConfig) -> tuple[torch.Tensor, np.ndarray]:
    """A float image in [0, 1] ((H, W) or (H, W, 3)) as the model's input (C, S, S), normalised, plus the 3x3 matrix
    from image pixels to input pixels, through the model's :class:`~mmrad.processing.image_processor.ImageProcessor`
    (with its decode size and rounding when the model records one)."""
    batch = ImageProcessor(preprocess)(image)
    return batch["pixel_values"][0], batch["matrices"][0]


class InferenceImages(Dataset):
    """Items as model inputs: ``{"index", "pixel_values", "matrix", "size", "error"}``; a file that cannot be read
    gives ``pixel_values`` None and its ``error`` (never an exception mid-run)."""

    def __init__(self, items: list[InferenceItem], preprocess: PreprocessConfig, corpus_split=None, keep_image=False):
        self.items, self.preprocess, self.corpus_split, self.keep_image = items, preprocess, corpus_split, keep_image
        self.processor = ImageProcessor(preprocess)

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> DecodedImage:
        """The item decoded by the model's processor (a corpus row: its cached image, decoded at ingest)."""
        item = self.items[index]
        if item.row is not None:
            return ImageProcessor.cached(self.corpus_split[item.row])
        return self.processor.decode(item.path)

    def __getitem__(self, index: int) -> dict:
        out = {"index": index, "pixel_values": None, "matrix": None, "size": None, "error": None, "image": None}
        try:
            image = self.load(index)
        except MMRadImageError as err:
            out["error"] = err.reason
            return out
        batch = self.processor(image)
        out["pixel_values"], out["matrix"] = batch["pixel_values"][0], batch["matrices"][0]
        out["size"] = image.original_size
        if self.keep_image:
            out["image"] = image.pixels
        return out


def collate_inference(samples: list[dict]) -> dict:
    """Stack the readable samples; keep the others' errors."""
    ok = [s for s in samples if s["pixel_values"] is not None]
    return {
        "index": [s["index"] for s in ok],
        "pixel_values": torch.stack([s["pixel_values"] for s in ok]) if ok else None,
        "matrix": [s["matrix"] for s in ok],
        "size": [s["size"] for s in ok],
        "image": [s["image"] for s in ok],
        "errors": {s["index"]: s["error"] for s in samples if s["pixel_values"] is None},
    }


def my_share(state, count: int) -> list[int]:
    """The positions of ``count`` items this process handles (all of them when it runs alone): contiguous shares,
    in rank order (accelerate's ``split_between_processes``)."""
    with state.split_between_processes(list(range(count))) as share:
        return list(share)


def gather_shares(state, items: list[InferenceItem], mine: list[int], rows: np.ndarray, errors: dict[str, str]):
    """Every process's ``rows`` (one per item of its share) and errors, put back in input order on every process;
    errors keyed by item id, in input order."""
    if state.num_processes > 1:
        from accelerate.utils import gather_object

        shares = gather_object([(mine, rows, errors)])  # one entry per rank, in rank order
        rows = np.full((len(items), *rows.shape[1:]), np.nan, dtype=rows.dtype)
        errors = {}
        for indices, part, part_errors in shares:
            rows[indices] = part
            errors.update(part_errors)
    order = {item.id: i for i, item in enumerate(items)}
    return rows, dict(sorted(errors.items(), key=lambda kv: order[kv[0]]))
