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
from mmrad.corpus.labeling import assign_splits, label_rows
from mmrad.corpus.manifest import Manifest, ManifestError, ManifestRow, Reject, read_manifest
from mmrad.corpus.rows import join_metadata, kept_rows, load_images, write_metadata
from mmrad.corpus.splits import SPLIT_NAMES, parse_fractions
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
    start = time.perf_counter()
    plan = plan_ingest(manifest, out_dir, image_size=image_size, num_proc=num_proc, seed=seed, split=split,
                       labels=labels, vocabulary=vocabulary, window=window, invert_monochrome1=invert_monochrome1,
                       keep_report_text=keep_report_text, salt=salt, progress=progress)  # fmt: skip
    existing = read_info(plan.out)
    if not force and existing is not None and existing.key == plan.key and (plan.out / "dataset_dict.json").is_file():
        logger.info("%s already holds this corpus (same manifest, files and options): nothing to do", plan.out)
        return IngestSummary(plan.out, existing, reused=True, shards_reused=len(plan.shards),
                             seconds=time.perf_counter() - start)  # fmt: skip
    state = launched_processes()
    decoded = decode_images(plan, state)
    if decoded is None:  # another process of `accelerate launch` builds the corpus
        return None
    labelled = label_and_split(plan)
    info = write_out(plan, labelled)
    if state is not None:
        state.destroy_process_group()
    return IngestSummary(plan.out, info, reused=False, shards_reused=len(plan.shards) - decoded,
                         shards_decoded=decoded, seconds=time.perf_counter() - start)  # fmt: skip


@dataclass
class IngestPlan:
    """What an ingest will do, decided before any image is decoded."""

    out: Path
    table: Manifest  # the checked manifest (raw identifiers: it never leaves the ingest step)
    label_names: list[str]
    mode: str  # "manifest", "both" or "labeler"
    vocabulary: str
    opts: DecodeOptions
    shards: list[Shard]
    key: str  # the hash of everything the corpus is built from
    fractions: tuple[float, float, float]
    seed: int
    deidentified: bool
    num_proc: int
    progress: bool

    @property
    def cache(self) -> Path:
        return self.out / CACHE_DIR / "shards"


def plan_ingest(manifest, out_dir, *, image_size, num_proc, seed, split, labels, vocabulary, window,
                invert_monochrome1, keep_report_text, salt, progress) -> IngestPlan:  # fmt: skip
    """Check the options, read and check the manifest, de-identify its reports, and cut it into cache shards."""
    from mmrad.config.labels import load_vocabulary

    fractions = parse_fractions(split)
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    mode, vocab = _label_mode(labels, vocabulary)
    vocab_names = load_vocabulary(vocab).names
    table = read_manifest(manifest, vocab_names, labels_from_reports=mode == "labeler")
    label_names = vocab_names
    if mode == "manifest":
        label_names = [n for n in vocab_names if n in table.label_columns.values()]
        if not label_names:
            raise ManifestError(f"{manifest}: --labels manifest needs finding columns named after {vocab!r} findings")
    if not keep_report_text:
        for row in table.rows:
            row.report = deidentify_text(row.report)
    else:
        logger.warning("report text is stored as written: make sure it holds no patient identifiers")
    out = Path(out_dir)
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    if isinstance(window, str) and window not in ("auto", "none", "minmax"):
        window = parse_window(window)  # "center,width"
    opts = DecodeOptions(image_size, window if isinstance(window, str) else tuple(window), invert_monochrome1,
                         salt if salt is not None else default_salt())  # fmt: skip
    shards = [Shard([(r.row, r.path, r.masks) for r in table.rows[i : i + SHARD_ROWS]])
              for i in range(0, len(table.rows), SHARD_ROWS)]  # fmt: skip
    for s in shards:
        s.key = shard_key(s, opts)
    vocab_digest = digest([dataclasses.asdict(f) for f in load_vocabulary(vocab).findings.values()])
    settings = {"mode": mode, "vocabulary": vocab, "seed": seed, "split": fractions, "deid": not keep_report_text,
                "vocab_digest": vocab_digest}  # fmt: skip
    key = _corpus_key(table, shards, opts, settings)
    return IngestPlan(out, table, label_names, mode, vocab, opts, shards, key, fractions, seed,
                      not keep_report_text, num_proc, progress)  # fmt: skip


def decode_images(plan: IngestPlan, state) -> int | None:
    """Decode every image once into the shard cache (shards already there are reused); the number decoded. Under
    ``accelerate launch`` each process decodes its share and only the main process goes on (the others get None)."""
    out, cache = plan.out, plan.cache
    decoded = 0
    if state is not None:
        # each process decodes its share of the shards into the shared cache; the main process then builds the
        # corpus from the cache while the others are done
        with writing(out):
            mine = decode_shards(plan.shards[state.process_index :: state.num_processes], plan.opts, cache,
                                 plan.num_proc, plan.progress and state.is_main_process)  # fmt: skip
        logger.info("process %d of %d: %d shard(s) decoded", state.process_index, state.num_processes, mine)
        from accelerate.utils import gather_object

        decoded = sum(gather_object([mine]))  # a collective: every process has finished its shards
        if not state.is_main_process:
            state.destroy_process_group()
            return None
    with writing(out):  # a full disk while caching images: the message names the corpus folder
        decoded += decode_shards(plan.shards, plan.opts, cache, plan.num_proc, plan.progress)
    logger.info("images: %d shard(s) decoded, %d reused from %s", decoded, len(plan.shards) - decoded, cache)
    return decoded


@dataclass
class Labelled:
    """The decoded images matched to their rows, labelled and split."""

    images: object  # the decoded shards as one datasets.Dataset
    block_rows: list
    keep: list[int]  # positions in ``images`` of the rows kept
    rows: list[ManifestRow]
    labels: np.ndarray  # (N, K)
    sources: list[str]
    positions: dict[str, list[int]]  # split -> positions in ``images``
    fractions: tuple
    rejects: list[Reject]


def label_and_split(plan: IngestPlan) -> Labelled:
    """Match decoded images to rows (boxes checked), label every row, and split by patient (or by the manifest)."""
    images, block_rows, rejects = load_images(plan.shards, plan.cache, list(plan.table.rejects))
    keep, rows, box_rejects = kept_rows(images, plan.table.rows)
    labels, sources = label_rows(rows, plan.label_names, plan.mode, plan.vocabulary, plan.num_proc, plan.progress)
    assignment, fractions = assign_splits(rows, labels, plan.fractions, plan.seed)
    positions = {name: [keep[i] for i, s in enumerate(assignment) if s == k] for k, name in enumerate(SPLIT_NAMES)}
    for name, pos in positions.items():
        if not pos and fractions[SPLIT_NAMES.index(name)] > 0:
            logger.warning("the %s split is empty (too few patients for the requested fractions)", name)
    return Labelled(images, block_rows, keep, rows, labels, sources, positions, fractions, rejects + box_rejects)


def write_out(plan: IngestPlan, done: Labelled) -> CorpusInfo:
    """Write the splits, ``rejects.csv`` and the corpus info (last: it marks a finished corpus); drop stale shards."""
    from datasets import Dataset, DatasetDict

    rejects = sorted(done.rejects, key=lambda r: r.row)
    unnamed = {r.row for r in rejects if not r.path}  # rejected while decoding or checking boxes
    path_of = {r.row: r.image for r in plan.table.rows if r.row in unnamed}
    opts = plan.opts
    info = CorpusInfo(
        label_names=plan.label_names,
        labels=plan.mode if plan.mode != "labeler" else plan.vocabulary,
        vocabulary=plan.vocabulary,
        image_size=opts.image_size,
        seed=plan.seed,
        split=list(done.fractions),
        num_rows={name: len(pos) for name, pos in done.positions.items()},
        total=plan.table.total,
        rejected=len(rejects),
        reject_reasons=dict(Counter(reason_category(r.reason) for r in rejects).most_common()),
        label_sources=dict(Counter(done.sources).most_common()),
        deidentified=plan.deidentified,
        key=plan.key,
        reports=sum(1 for r in done.rows if r.report),
        window=opts.window if isinstance(opts.window, str) else ",".join(f"{v:g}" for v in opts.window),
        invert_monochrome1=opts.invert_monochrome1,
    )
    rejected = [(r.row, r.path or path_of.get(r.row, ""), r.reason) for r in rejects]
    full_features = corpus_features()
    meta_path = plan.out / CACHE_DIR / "rows.arrow"  # one metadata row per decoded image, until the splits exist
    try:
        if len(done.images):
            with writing(plan.out):
                write_metadata(meta_path, done.images, done.keep, done.rows, done.labels, done.sources, opts.salt,
                               plan.progress)  # fmt: skip
            full = join_metadata(done.images, done.block_rows, meta_path).select_columns(list(full_features))
        else:
            full = Dataset.from_dict({k: [] for k in full_features}, features=full_features)
        # writing the splits is when an ingest holds the most: the manifest's rows (their text, paths, boxes) are
        # no longer needed and go first
        plan.table.rows.clear()
        done.rows.clear()
        splits = DatasetDict({name: full.select(pos) for name, pos in done.positions.items()})
        write_corpus(plan.out, splits, info, rejected)
    finally:
        meta_path.unlink(missing_ok=True)  # after an error too: a full disk keeps no partial file
    _clean_cache(plan.cache, {s.key for s in plan.shards})
    logger.info("corpus %s: %d row(s) kept, %d rejected (%s)", plan.out, sum(info.num_rows.values()), len(rejects),
                plan.out / REJECTS_FILE)  # fmt: skip
    return info


def _clean_cache(cache: Path, keep: set[str]) -> None:
    if not cache.is_dir():
        return
    for entry in cache.iterdir():
        if entry.name not in keep:
            shutil.rmtree(entry, ignore_errors=True)
