"""Ingest: a manifest of images and reports -> a cached, labelled, patient-split ``datasets.DatasetDict`` on disk.

:func:`ingest` decodes every image once (DICOM windowing and MONOCHROME1 through :func:`load_image`), resizes it so
that the longest side is ``image_size`` and stores it as lossless PNG (16-bit when the source has more than 8 bits).
Reports are de-identified, split into sections and sentences, and labelled from the manifest or by the report
labeler. Rows are split by patient. Bad rows are skipped, counted and written to ``rejects.csv`` (``row,path,reason``);
nothing is dropped silently. :func:`~mmrad.corpus.format.load_corpus` reads the result back with its
:class:`~mmrad.corpus.format.CorpusInfo`.

Work is cached under ``DIR/.mmrad_cache``: images are decoded in shards of ``SHARD_ROWS`` manifest rows, each stored
under a hash of its files (path, size, mtime) and the decode options, so an interrupted or repeated run decodes only
what changed. A finished corpus records a hash of the whole input; re-running with the same input does nothing.

The corpus folder's layout and row schema, and reading it back, are in :mod:`mmrad.corpus.format`; building
the rows from the decoded shards, a chunk at a time, is in :mod:`mmrad.corpus.rows`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np

from mmrad import __version__
from mmrad.corpus.cache import (
    SHARD_ROWS,
    DecodeOptions,
    Shard,
    decode_shards,
    digest,
    shard_key,
)
from mmrad.corpus.format import (
    CACHE_DIR,
    CORPUS_VERSION,
    REJECTS_FILE,
    CorpusInfo,
    corpus_features,
    read_info,
    write_corpus,
)
from mmrad.corpus.manifest import Manifest, ManifestError, ManifestRow, read_manifest
from mmrad.corpus.rows import join_metadata, kept_rows, load_images, write_metadata
from mmrad.corpus.splits import SPLIT_NAMES, parse_fractions, patient_split
from mmrad.files import writing
from mmrad.privacy.deid import default_salt, deidentify_text
from mmrad.processes import launched_processes
from mmrad.processing.image_processor import parse_window

logger = logging.getLogger(__name__)


@dataclass
class IngestSummary:
    """What :func:`ingest` did; the CLI prints it."""

    out_dir: Path
    info: CorpusInfo
    reused: bool  # the finished corpus already matched the input: nothing was done
    shards_reused: int = 0
    shards_decoded: int = 0
    seconds: float = 0.0

    @property
    def kept(self) -> int:
        return sum(self.info.num_rows.values())

    @property
    def rejected(self) -> int:
        return self.info.rejected

    @property
    def rejects_path(self) -> Path:
        return self.out_dir / REJECTS_FILE


# ---------------------------------------------------------------------------------------------------------- ingest


def _label_mode(labels: str, vocabulary: str) -> tuple[str, str]:
    if labels in ("manifest", "both"):
        return labels, vocabulary
    return "labeler", labels  # a vocabulary name or file: labels from the report labeler only


def reason_category(reason: str) -> str:
    """The fixed part of a reject reason ("truncated or malformed pixel data (...)" -> "truncated or ...")."""
    return re.split(r" \(|: | '| \"| in column", reason, maxsplit=1)[0].strip() or reason


def _label_rows(rows: list[ManifestRow], label_names: list[str], mode: str, vocabulary: str, num_proc: int,
                progress: bool) -> tuple[np.ndarray, list[str]]:  # fmt: skip
    """(N, K) labels and a label source per row: manifest cells where given, the labeler for the rest."""
    labels = np.full((len(rows), len(label_names)), np.nan, dtype=np.float32)
    from_manifest = np.zeros(labels.shape, dtype=bool)
    for i, row in enumerate(rows):
        for k, name in enumerate(label_names):
            if mode != "labeler" and name in row.labels:
                labels[i, k], from_manifest[i, k] = row.labels[name], True
    need = [] if mode == "manifest" else [i for i in range(len(rows)) if not from_manifest[i].all()]
    if need:
        from mmrad.reports.labeler import ReportLabeler

        labeler = ReportLabeler(vocabulary)
        known = [n for n in label_names if n in labeler.label_names]
        cols = np.asarray([label_names.index(n) for n in known], dtype=np.intp)
        # results are used as they come: only the (N, K) array outlives them
        results = labeler.label_iter([rows[i].report for i in need], num_workers=num_proc, progress=progress,
                                     evidence=False)  # fmt: skip
        for i, result in zip(need, results, strict=True):
            values = result.as_array(known)
            keep = ~from_manifest[i, cols]
            labels[i, cols[keep]] = values[keep]
    sources = []
    for i in range(len(rows)):
        given = from_manifest[i].all() or mode == "manifest"
        sources.append("manifest" if given else "labeler" if not from_manifest[i].any() else "manifest+labeler")
    return labels, sources


def _assign_splits(rows: list[ManifestRow], labels: np.ndarray, fractions, seed: int) -> tuple[list[int], tuple]:
    """A split index per row and the split fractions: the manifest's ``split`` column when it has one (the fractions
    are then its shares), else the patient-level split."""
    if not rows or rows[0].split is None:
        return patient_split([r.patient_id for r in rows], labels, fractions, seed), fractions
    assignment = [SPLIT_NAMES.index(r.split) for r in rows]
    splits_of: dict[str, set[int]] = {}
    for row, s in zip(rows, assignment, strict=True):
        splits_of.setdefault(row.patient_id, set()).add(s)
    crossing = sum(1 for s in splits_of.values() if len(s) > 1)
    if crossing:
        logger.warning("the manifest's split puts %d patient(s) in more than one split: their images leak between "
                       "training and evaluation", crossing)  # fmt: skip
    logger.info("splits from the manifest's split column (fractions and seed are not used)")
    counts = np.bincount(assignment, minlength=len(SPLIT_NAMES))
    return assignment, tuple(float(c) for c in counts / counts.sum())


def _corpus_key(manifest: Manifest, shards: list[Shard], opts: DecodeOptions, settings: dict) -> str:
    """A hash of everything the corpus is built from. Manifest rows and rejects are hashed one at a time, as JSON
    lines (JSON escapes newlines): hashing makes no copy of the whole manifest."""
    h = hashlib.sha256(_json([CORPUS_VERSION, __version__, settings, digest(opts.salt), [s.key for s in shards]]))
    for records in (manifest.rows, manifest.rejects):
        h.update(b"[")
        for r in records:
            h.update(_json({f.name: getattr(r, f.name) for f in dataclasses.fields(r)}) + b"\n")
        h.update(b"]")
    return h.hexdigest()[:32]


def _json(value) -> bytes:
    return json.dumps(value, sort_keys=True, default=str).encode("utf-8")


def ingest(
    manifest: str | PathLike,
    out_dir: str | PathLike,
    *,
    image_size: int = 512,
    num_proc: int = 1,
    seed: int = 0,
    split: str | tuple[float, float, float] = (0.8, 0.1, 0.1),
    labels: str = "both",
    vocabulary: str = "chexpert",
    window: str | tuple[float, float] = "auto",
    invert_monochrome1: bool = True,
    keep_report_text: bool = False,
    salt: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> IngestSummary | None:
    """Build a cached corpus from a manifest (CSV, JSONL, Parquet) or a folder tree of studies.

    Args:
        manifest: the manifest file, or a folder where each study folder holds images and a ``report.txt``.
        out_dir: the corpus folder; ``datasets.load_from_disk(out_dir)`` gives train/validation/test.
        image_size: longest side of the cached images (aspect ratio kept).
        num_proc: processes decoding images (and labelling reports).
        seed: the patient split's seed.
        split: train, validation and test fractions (``"0.8,0.1,0.1"``).
        labels: ``"manifest"`` (finding columns only), ``"both"`` (manifest cells where given, the report labeler
            for the rest), or a vocabulary (``"chexpert"``, ``"nih14"``, a YAML file) to label only from reports.
        vocabulary: the findings (label names) for ``"manifest"`` and ``"both"``.
        window, invert_monochrome1: DICOM display handling (``"auto"``, ``"none"``, ``"minmax"``, ``"center,width"``
            or a ``(center, width)`` pair), recorded in the corpus info; a model trained on the corpus decodes new
            images the same way (:class:`~mmrad.processing.image_processor.ImageProcessor`).
        keep_report_text: store report text as written instead of de-identified (names, IDs, dates removed).
        salt: salt for the patient/study hashes (default: :func:`mmrad.privacy.deid.default_salt`).
        force: rebuild even when the finished corpus matches the input (decoded shards are still reused).
        progress: show progress bars.

    Returns:
        An :class:`IngestSummary`; its ``info`` is also saved as ``out_dir/mmrad_corpus.json``. Under
        ``accelerate launch`` every process decodes a share of the images and the main process builds the corpus and
        returns the summary; the others return None.

    Raises:
        ManifestError: the manifest cannot be read or lacks required columns.
        ValueError: bad options (split fractions, image size, labels mode).
    """
    from mmrad.config.labels import load_vocabulary

    start = time.perf_counter()
    fractions = parse_fractions(split)
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    mode, vocab = _label_mode(labels, vocabulary)
    vocab_names = load_vocabulary(vocab).names
    table = read_manifest(manifest, vocab_names, labels_from_reports=mode == "labeler")
    if mode == "manifest":
        label_names = [n for n in vocab_names if n in table.label_columns.values()]
        if not label_names:
            raise ManifestError(f"{manifest}: --labels manifest needs finding columns named after {vocab!r} findings")
    else:
        label_names = vocab_names
    if not keep_report_text:
        for row in table.rows:
            row.report = deidentify_text(row.report)
    else:
        logger.warning("report text is stored as written: make sure it holds no patient identifiers")

    out = Path(out_dir)
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    cache = out / CACHE_DIR / "shards"
    if isinstance(window, str) and window not in ("auto", "none", "minmax"):
        window = parse_window(window)  # "center,width"
    opts = DecodeOptions(image_size, window if isinstance(window, str) else tuple(window), invert_monochrome1,
                    salt if salt is not None else default_salt())  # fmt: skip
    shards = [Shard([(r.row, r.path, r.masks) for r in table.rows[i : i + SHARD_ROWS]])
              for i in range(0, len(table.rows), SHARD_ROWS)]  # fmt: skip
    for s in shards:
        s.key = shard_key(s, opts)
    settings = {
        "mode": mode,
        "vocabulary": vocab,
        "seed": seed,
        "split": fractions,
        "deid": not keep_report_text,
        "vocab_digest": digest([dataclasses.asdict(f) for f in load_vocabulary(vocab).findings.values()]),
    }
    key = _corpus_key(table, shards, opts, settings)
    existing = read_info(out)
    if not force and existing is not None and existing.key == key and (out / "dataset_dict.json").is_file():
        logger.info("%s already holds this corpus (same manifest, files and options): nothing to do", out)
        return IngestSummary(out, existing, reused=True, shards_reused=len(shards),
                             seconds=time.perf_counter() - start)  # fmt: skip

    state = launched_processes()
    if state is not None:
        # under `accelerate launch`: each process decodes its share of the shards into the shared cache; the main
        # process then builds the corpus from the cache while the others are done
        with writing(out):
            mine = decode_shards(shards[state.process_index :: state.num_processes], opts, cache, num_proc,
                                 progress and state.is_main_process)  # fmt: skip
        logger.info("process %d of %d: %d shard(s) decoded", state.process_index, state.num_processes, mine)
        from accelerate.utils import gather_object

        decoded = sum(gather_object([mine]))  # a collective: every process has finished its shards
        if not state.is_main_process:
            state.destroy_process_group()
            return None
    with writing(out):  # a full disk while caching images: the message names the corpus folder
        decoded = decode_shards(shards, opts, cache, num_proc, progress) + (decoded if state is not None else 0)
    logger.info("images: %d shard(s) decoded, %d reused from %s", decoded, len(shards) - decoded, cache)

    from datasets import Dataset, DatasetDict

    images, block_rows, rejects = load_images(shards, cache, list(table.rejects))
    keep, rows, box_rejects = kept_rows(images, table.rows)
    rejects += box_rejects
    label_array, sources = _label_rows(rows, label_names, mode, vocab, num_proc, progress)
    assignment, fractions = _assign_splits(rows, label_array, fractions, seed)
    positions = {name: [keep[i] for i, s in enumerate(assignment) if s == k] for k, name in enumerate(SPLIT_NAMES)}
    for name, pos in positions.items():
        if not pos and fractions[SPLIT_NAMES.index(name)] > 0:
            logger.warning("the %s split is empty (too few patients for the requested fractions)", name)

    rejects.sort(key=lambda r: r.row)
    unnamed = {r.row for r in rejects if not r.path}  # rejected while decoding or checking boxes
    path_of = {r.row: r.image for r in table.rows if r.row in unnamed}
    reasons = Counter(reason_category(r.reason) for r in rejects)
    info = CorpusInfo(
        label_names=label_names,
        labels=mode if mode != "labeler" else vocab,
        vocabulary=vocab,
        image_size=image_size,
        seed=seed,
        split=list(fractions),
        num_rows={name: len(pos) for name, pos in positions.items()},
        total=table.total,
        rejected=len(rejects),
        reject_reasons=dict(reasons.most_common()),
        label_sources=dict(Counter(sources).most_common()),
        deidentified=not keep_report_text,
        key=key,
        reports=sum(1 for r in rows if r.report),
        window=opts.window if isinstance(opts.window, str) else ",".join(f"{v:g}" for v in opts.window),
        invert_monochrome1=opts.invert_monochrome1,
    )
    rejected = [(r.row, r.path or path_of.get(r.row, ""), r.reason) for r in rejects]
    shard_keys = {s.key for s in shards}
    full_features = corpus_features()
    meta_path = out / CACHE_DIR / "rows.arrow"  # one metadata row per decoded image, until the splits are written
    try:
        if len(images):
            with writing(out):
                write_metadata(meta_path, images, keep, rows, label_array, sources, opts.salt, progress)
            full = join_metadata(images, block_rows, meta_path).select_columns(list(full_features))
        else:
            full = Dataset.from_dict({k: [] for k in full_features}, features=full_features)
        # writing the splits is when an ingest holds the most: the manifest's rows (their text, paths, boxes) are
        # no longer needed and go first
        del table, rows, shards
        write_corpus(out, DatasetDict({name: full.select(pos) for name, pos in positions.items()}), info, rejected)
    finally:
        meta_path.unlink(missing_ok=True)  # after an error too: a full disk keeps no partial file
    _clean_cache(cache, shard_keys)
    logger.info("corpus %s: %d row(s) kept, %d rejected (%s)", out, sum(info.num_rows.values()), len(rejects),
                out / REJECTS_FILE)  # fmt: skip
    if state is not None:
        state.destroy_process_group()
    return IngestSummary(out, info, reused=False, shards_reused=len(shard_keys) - decoded, shards_decoded=decoded,
                         seconds=time.perf_counter() - start)  # fmt: skip


def _clean_cache(cache: Path, keep: set[str]) -> None:
    if not cache.is_dir():
        return
    for entry in cache.iterdir():
        if entry.name not in keep:
            shutil.rmtree(entry, ignore_errors=True)
