"""Decode each image once into cached shards: the expensive half of :func:`mmrad.corpus.ingest.ingest`.

Manifest rows are decoded in shards of ``SHARD_ROWS`` rows. A shard is a small ``datasets`` folder (PNG bytes at the
cached size, sizes, masks, DICOM view and hashed study key) plus ``rejects.json`` with the reason of every row that
failed; it is stored under a hash of its files (path, size, mtime) and the decode options and written atomically,
so an interrupted or repeated ingest decodes only what changed. Shards hold no source paths or raw identifiers.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmrad.errors import MMRadImageError

logger = logging.getLogger(__name__)

CACHE_VERSION = 3  # bump when decoding, encoding or the shard layout changes
SHARD_ROWS = 64  # manifest rows per shard


@dataclass(frozen=True)
class DecodeOptions:
    image_size: int
    window: str | tuple[float, float]
    invert_monochrome1: bool
    salt: str


@dataclass
class Shard:
    items: list[tuple[int, str, dict[str, str]]]  # (manifest row, image path, {finding: mask path})
    key: str = ""


def shard_features():
    from datasets import Features, Image, Value

    return Features(
        {
            "manifest_row": Value("int64"),
            "image": Image(),
            "masks": [{"label": Value("string"), "mask": Image()}],
            **{k: Value("int32") for k in ("height", "width", "orig_height", "orig_width", "bit_depth")},
            "source_format": Value("string"),
            "dicom_view": Value("string"),
            "dicom_study_key": Value("string"),
        }
    )


@contextmanager
def quiet_datasets():
    """Hide datasets' own progress bars while we show ours."""
    from datasets.utils import logging as ds_logging

    was = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            ds_logging.enable_progress_bar()


class _OncePerMessage(logging.Filter):
    """Let the first warning of each kind through: one per image would flood the log of a large ingest."""

    def __init__(self):
        super().__init__()
        self.seen: set[tuple[str, object]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.msg)
        if record.levelno < logging.WARNING or key not in self.seen:
            self.seen.add(key)
            return True
        return False


@contextmanager
def warnings_once(names=("mmrad.io.dicom", "mmrad.io.voi", "mmrad.io.images")):
    """Within the block, each warning message of the readers' loggers is shown once (worker processes started in
    the block inherit the filter and show each once too)."""
    once = _OncePerMessage()
    loggers = [logging.getLogger(name) for name in names]
    for log in loggers:
        log.addFilter(once)
    try:
        yield
    finally:
        for log in loggers:
            log.removeFilter(once)


# --------------------------------------------------------------------------------------------------------- decoding


def encode_png(arr: np.ndarray, bits: int = 8) -> bytes:
    """float [0, 1] (H, W) or (H, W, 3), or bool masks, as PNG bytes (16-bit grey when ``bits == 16``).

    Images are stored uncompressed (zlib level 0) and unfiltered (:mod:`mmrad.io.png`): the low bits of
    radiographs are noise, so deflate saves only ~20% on 16-bit chest images (measured on ../shared/data/dicom) while
    making every decode ~10x slower (25 ms vs 2.7 ms at 512x512); unfiltered rows are read back with a copy instead
    of a PNG decoder. Reading fast is what the cache is for. Masks compress ~100x and decode fast, so they are
    deflated.
    """
    from mmrad.io.png import write_png

    if arr.dtype == bool:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(arr.astype(np.uint8) * 255, "L").save(buf, format="PNG", compress_level=6)
        return buf.getvalue()
    if bits == 16 and arr.ndim == 2:
        return write_png(np.round(arr * 65535.0).astype(np.uint16))
    return write_png(np.round(arr * 255.0).astype(np.uint8))


def processor_for(opts: DecodeOptions):
    """The :class:`~mmrad.processing.image_processor.ImageProcessor` whose decoding step the cache stores: a model
    trained on the corpus records the same window, inversion and decode size, so inference decodes as ingest did."""
    from mmrad.config.schema import PreprocessConfig
    from mmrad.processing.image_processor import ImageProcessor

    window = opts.window if isinstance(opts.window, str) else ",".join(f"{v:g}" for v in opts.window)
    config = PreprocessConfig(window=window, invert_monochrome1=opts.invert_monochrome1, decode_size=opts.image_size)
    return ImageProcessor(config)


def _decode_row(row: int, path: str, masks: dict[str, str], opts: DecodeOptions) -> dict:
    from mmrad.io.images import load_image, resize_longest

    decoded = processor_for(opts).decode(path, salt=opts.salt)
    meta, small = decoded.meta, decoded.pixels
    h0, w0 = decoded.original_size
    encoded_masks = []
    for label, mask_path in masks.items():
        try:
            mask, _ = load_image(mask_path)
        except MMRadImageError as err:
            raise ValueError(f"bad mask ({label!r}: {err.reason})") from None
        mask = mask.mean(axis=-1) if mask.ndim == 3 else mask
        if mask.shape != (h0, w0):
            raise ValueError(f"bad mask ({label!r} is {mask.shape[1]}x{mask.shape[0]}, the image {w0}x{h0})")
        small_mask = resize_longest(mask, opts.image_size) >= 0.5
        encoded_masks.append({"label": label, "mask": {"bytes": encode_png(small_mask), "path": None}})
    dicom = meta.dicom
    return {
        "manifest_row": row,
        "image": {"bytes": encode_png(small, 16 if meta.bit_depth > 8 else 8), "path": None},
        "masks": encoded_masks,
        "height": small.shape[0],
        "width": small.shape[1],
        "orig_height": h0,
        "orig_width": w0,
        "source_format": meta.format,
        "bit_depth": meta.bit_depth,
        "dicom_view": dicom.view_position if dicom else None,
        "dicom_study_key": dicom.study_key if dicom else None,
    }


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # one process per core already


def _build_shard(shard: Shard, opts: DecodeOptions, shard_dir: str) -> tuple[int, list[tuple[int, str]]]:
    """Decode one shard's images into ``shard_dir`` (written atomically); returns (rows kept, [(row, reason)])."""
    from datasets import Dataset

    rows, rejects = [], []
    for row, path, masks in shard.items:
        try:
            rows.append(_decode_row(row, path, masks, opts))
        except MMRadImageError as err:
            rejects.append((row, err.reason))
        except ValueError as err:
            rejects.append((row, str(err)))
        except Exception as err:  # one strange file must not stop a long ingest; the reason goes to rejects.csv
            logger.warning("row %d: unexpected %s while reading the image", row, type(err).__name__)
            rejects.append((row, f"unexpected error reading the image ({type(err).__name__}: {err})"))
    features = shard_features()
    tmp = f"{shard_dir}.tmp{os.getpid()}"
    try:
        with quiet_datasets():
            # one shard even when empty: datasets cannot load a dataset saved with zero shards
            Dataset.from_dict({k: [r[k] for r in rows] for k in features}, features=features).save_to_disk(
                tmp, num_shards=1
            )
        Path(tmp, "rejects.json").write_text(json.dumps(rejects), encoding="utf-8")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk: no partial shard keeps the space
        raise
    try:
        os.replace(tmp, shard_dir)
    except OSError:  # another run finished the same shard first
        shutil.rmtree(tmp, ignore_errors=True)
    return len(rows), rejects


def _stat(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:32]


def shard_key(shard: Shard, opts: DecodeOptions) -> str:
    files = [[row, path, _stat(path), sorted((k, p, _stat(p)) for k, p in masks.items())]
             for row, path, masks in shard.items]  # fmt: skip
    return digest(CACHE_VERSION, opts.image_size, opts.window, opts.invert_monochrome1, digest(opts.salt), files)


def decode_shards(shards: list[Shard], opts: DecodeOptions, cache: Path, num_proc: int, progress: bool) -> int:
    """Decode the shards missing from ``cache``; returns how many were decoded."""
    from tqdm.auto import tqdm

    todo = [s for s in shards if not (cache / s.key).is_dir()]
    if not todo:
        return 0
    cache.mkdir(parents=True, exist_ok=True)
    total = sum(len(s.items) for s in todo)
    with warnings_once(), tqdm(total=total, desc="decoding images", unit="img", disable=not progress) as bar:
        if num_proc <= 1:
            import torch

            # one image at a time is too little work for torch's intra-op threads: measured here, resizing a 2048^2
            # image takes 7 ms on one thread and 27 ms on two
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                for s in todo:
                    _build_shard(s, opts, str(cache / s.key))
                    bar.update(len(s.items))
            finally:
                torch.set_num_threads(threads)
        else:
            import multiprocessing

            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            ctx = multiprocessing.get_context(method)
            with ProcessPoolExecutor(num_proc, mp_context=ctx, initializer=_worker_init) as pool:
                futures = {pool.submit(_build_shard, s, opts, str(cache / s.key)): s for s in todo}
                for future in as_completed(futures):
                    future.result()
                    bar.update(len(futures[future].items))
    return len(todo)
