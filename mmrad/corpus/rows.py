"""The rows of an ingested corpus, built from the decoded image shards and the manifest's rows in chunks.

:func:`load_images` opens the decoded shards as one memory-mapped dataset; :func:`kept_rows` matches each decoded
image to its manifest row and checks its boxes; :func:`write_metadata` writes one metadata row per decoded image
(report, sections, labels, hashed keys, view, boxes) to an Arrow file, ``CHUNK_ROWS`` rows at a time; and
:func:`join_metadata` joins the two column-wise. Nothing here holds every row's text or pixels: the images and the
metadata stay on disk, memory-mapped, until :func:`mmrad.corpus.format.write_corpus` copies them into the splits.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mmrad.corpus.cache import Shard, shard_features
from mmrad.corpus.format import corpus_features
from mmrad.corpus.manifest import ManifestRow, Reject
from mmrad.privacy.deid import hash_identifier

BOX_TOLERANCE = 1.0  # pixels a box may exceed the image by (rounding in the source annotations)
CHUNK_ROWS = 1024  # decoded images whose metadata is built and written at a time
_SIZES = ["height", "width", "orig_height", "orig_width"]
_META_COLUMNS = ["report", "findings", "impression", "sentences", "labels", "label_source", "boxes", "patient_key",
                 "study_key", "view"]  # fmt: skip


def scale_boxes(row: ManifestRow, orig: tuple[int, int], size: tuple[int, int]) -> list[dict]:
    (h0, w0), (h, w) = orig, size
    sx, sy = w / w0, h / h0
    boxes = []
    for b in row.boxes:
        if (
            b["x"] < -BOX_TOLERANCE
            or b["y"] < -BOX_TOLERANCE
            or b["x"] + b["w"] > w0 + BOX_TOLERANCE
            or (b["y"] + b["h"] > h0 + BOX_TOLERANCE)
        ):
            raise ValueError(f"bad boxes: box {b['label']!r} lies outside the {w0}x{h0} image")
        x0, y0 = max(b["x"], 0.0), max(b["y"], 0.0)
        x1, y1 = min(b["x"] + b["w"], w0), min(b["y"] + b["h"], h0)
        boxes.append({"label": b["label"], "x": x0 * sx, "y": y0 * sy, "w": (x1 - x0) * sx, "h": (y1 - y0) * sy})
    return boxes


def _parse_reports(texts: list[str]) -> list[tuple[str, str, list[str]]]:
    from mmrad.reports.sections import parse_report

    out = []
    for text in texts:
        report = parse_report(text)
        out.append((report.findings or "", report.impression or "", [s.text for s in report.sentences]))
    return out


def load_images(shards: list[Shard], cache: Path, rejects: list[Reject]):
    """The decoded shards as one memory-mapped dataset (in manifest order), the rows of each non-empty shard, and
    ``rejects`` plus theirs."""
    from datasets import Dataset, concatenate_datasets, load_from_disk

    parts = []
    for s in shards:
        part = load_from_disk(str(cache / s.key))
        if len(part):  # empty tables break datasets' column-wise concatenation
            parts.append(part)
        rejects += [Reject(r, "", reason) for r, reason in json.loads((cache / s.key / "rejects.json").read_text())]
    features = shard_features()
    images = concatenate_datasets(parts) if parts else Dataset.from_dict({k: [] for k in features}, features=features)
    return images, [len(p) for p in parts], rejects


def join_metadata(images, block_rows: list[int], meta_path: Path):
    """The images joined column-wise to their metadata rows (the DICOM columns the metadata replaces dropped)."""
    from datasets import Dataset, concatenate_datasets

    meta = Dataset.from_file(str(meta_path))
    # cut the metadata once into blocks as long as the image shards: joined as one memory-mapped table, datasets
    # would cut it shard by shard, each remainder recording one more slice to replay on every copy of the dataset
    # (quadratic in the number of shards: 6 s of 9 to write 20,000 rows)
    starts = np.cumsum([0, *block_rows[:-1]])
    meta = concatenate_datasets([meta.select(range(a, a + n)) for a, n in zip(starts, block_rows, strict=True)])
    return concatenate_datasets([images, meta], axis=1).remove_columns(["dicom_view", "dicom_study_key"])


def kept_rows(images, manifest_rows: list[ManifestRow]) -> tuple[list[int], list[ManifestRow], list[Reject]]:
    """The decoded images whose boxes fit them: their positions in ``images`` and their manifest rows; and a reject
    for each of the others. Reads the size columns only, ``CHUNK_ROWS`` at a time."""
    keep, rows, rejects = [], [], []
    # decoded images follow the manifest's order (shards are its slices, each decoded in order): walk both in step
    # instead of holding a dict of every row
    manifest = iter(manifest_rows)
    pos = 0
    for batch in images.select_columns(["manifest_row", *_SIZES]).iter(batch_size=CHUNK_ROWS):
        for j, r in enumerate(batch["manifest_row"]):
            row = next(manifest)
            while row.row != r:
                row = next(manifest)
            try:
                scale_boxes(row, (batch["orig_height"][j], batch["orig_width"][j]),
                            (batch["height"][j], batch["width"][j]))  # fmt: skip
                keep.append(pos)
                rows.append(row)
            except ValueError as err:
                rejects.append(Reject(r, "", str(err)))
            pos += 1
    return keep, rows, rejects


def write_metadata(path: Path, images, keep: list[int], rows: list[ManifestRow], labels: np.ndarray,
                   sources: list[str], salt: str, progress: bool) -> None:  # fmt: skip
    """Write one metadata row per decoded image to ``path`` (Arrow), ``CHUNK_ROWS`` rows at a time: the report and
    its sections, labels, hashed keys, view and scaled boxes. Images rejected by :func:`kept_rows` get placeholders
    (they are never selected)."""
    from datasets.arrow_writer import ArrowWriter
    from tqdm.auto import tqdm

    features = _subset(corpus_features(), _META_COLUMNS)
    kept = zip(keep, rows, labels, sources, strict=True)
    upcoming = next(kept, None)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = [*_SIZES, "dicom_view", "dicom_study_key"]
    with ArrowWriter(features=features, path=str(path)) as writer, \
            tqdm(total=len(images), desc="writing rows", unit="row", disable=not progress) as bar:  # fmt: skip
        start = 0
        for batch in images.select_columns(columns).iter(batch_size=CHUNK_ROWS):
            n = len(batch["height"])
            chunk = []
            while upcoming is not None and upcoming[0] < start + n:
                chunk.append(upcoming)
                upcoming = next(kept, None)
            meta = {k: [None] * n for k in _META_COLUMNS}
            meta["boxes"] = [[] for _ in range(n)]
            sections = _parse_reports([row.report for _, row, _, _ in chunk])
            for (pos, row, values, source), parsed in zip(chunk, sections, strict=True):
                j = pos - start
                meta["report"][j] = row.report
                meta["findings"][j], meta["impression"][j], meta["sentences"][j] = parsed
                meta["labels"][j] = values.tolist()
                meta["label_source"][j] = source
                meta["patient_key"][j] = hash_identifier(row.patient_id, salt)
                meta["study_key"][j] = (
                    hash_identifier(row.study_id, salt)
                    if row.study_id
                    else batch["dicom_study_key"][j] or hash_identifier(f"{row.patient_id}/{row.image}", salt)
                )
                meta["view"][j] = row.view or batch["dicom_view"][j] or ""
                meta["boxes"][j] = scale_boxes(row, (batch["orig_height"][j], batch["orig_width"][j]),
                                               (batch["height"][j], batch["width"][j]))  # fmt: skip
            writer.write_batch(meta)
            start += n
            bar.update(n)
        writer.finalize()


def _subset(features, columns):
    from datasets import Features

    return Features({k: features[k] for k in columns})
