"""Manifests: the table a user points ``mmrad ingest`` at, read and checked row by row.

A manifest is CSV, JSONL or Parquet with one row per image. Columns: ``image`` (path relative to the manifest's
folder, or absolute) and ``patient_id``; optional ``report`` (text) or ``report_path``, ``study_id``, ``view``,
``boxes`` (JSON list of ``{"label", "x", "y", "w", "h"}`` in the original image's pixels), ``masks`` (JSON object
``{finding: mask image path}``), ``split`` (``train`` / ``validation`` / ``test``: an official split, used instead
of mmrad's patient split) and one column per finding (``1`` / ``0`` / ``-1`` / empty). A folder tree where each
study folder holds images and a ``report.txt`` becomes a manifest through :func:`manifest_from_folder`.

:func:`read_manifest` never stops at a bad row: each row becomes a :class:`ManifestRow` or a :class:`Reject` with the
reason (missing patient id, bad label value, bad boxes, duplicate image, a row with neither report nor labels, ...).
Reports are optional: corpora with image labels and boxes only (ChestX-ray14, VinDr-CXR) and mixed ones ingest as
they are; a row without a report trains the classification and grounding losses only.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

from mmrad.errors import MMRadError

logger = logging.getLogger(__name__)

RESERVED_COLUMNS = ("image", "report", "report_path", "patient_id", "study_id", "view", "boxes", "masks", "split")
SPLIT_VALUES = {"train": "train", "validation": "validation", "val": "validation", "valid": "validation",
                "test": "test"}  # fmt: skip
IMAGE_SUFFIXES = (".dcm", ".dicom", ".dic", ".png", ".jpg", ".jpeg", ".tif", ".tiff")
_EMPTY = ("", "nan", "none", "null", "na", "n/a")


class ManifestError(MMRadError, ValueError):
    """The manifest as a whole cannot be used (unreadable, wrong format, required columns missing)."""


@dataclass
class Reject:
    """A manifest row that ingest skipped; ``path`` is the image as the manifest wrote it."""

    row: int  # 0-based index of the record in the manifest
    path: str
    reason: str


@dataclass
class ManifestRow:
    """One checked manifest row. Holds raw identifiers: it never leaves the ingest step."""

    row: int  # 0-based index of the record in the manifest
    image: str  # as written in the manifest (for rejects.csv)
    path: str  # resolved path of the image file
    report: str  # "" when the row has none
    patient_id: str
    study_id: str | None = None
    view: str | None = None
    labels: dict[str, float] = field(default_factory=dict)  # finding -> 1/0/-1; empty cells are left out
    boxes: list[dict] = field(default_factory=list)  # {"label", "x", "y", "w", "h"} in original pixels
    masks: dict[str, str] = field(default_factory=dict)  # finding -> resolved mask path
    split: str | None = None  # the manifest's own split (train / validation / test), if it has a split column


@dataclass
class Manifest:
    rows: list[ManifestRow]
    rejects: list[Reject]
    label_columns: dict[str, str]  # manifest column -> finding name
    total: int  # records read, good and bad
    ignored_columns: list[str] = field(default_factory=list)


def _norm(name: str) -> str:
    return " ".join(str(name).replace("_", " ").split()).lower()


def read_records(source: str | PathLike) -> tuple[list[dict], Path]:
    """Read a manifest file (CSV, JSONL, Parquet) or a study folder tree as raw records.

    Returns:
        ``(records, base)``: one dict per record (a record that cannot be parsed is ``{"__error__": reason}``), and
        the folder relative image paths are resolved against.
    """
    path = Path(source)
    if path.is_dir():
        return manifest_from_folder(path), path
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            records = _read_csv(path, "\t" if suffix == ".tsv" else ",")
        elif suffix in (".jsonl", ".ndjson"):
            records = _read_jsonl(path)
        elif suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            records = pq.read_table(path).to_pylist()
        else:
            raise ManifestError(f"{path}: unknown manifest format {suffix!r} (use .csv, .jsonl or .parquet)")
    except UnicodeDecodeError as err:
        raise ManifestError(f"{path}: the manifest is not UTF-8 text ({err.reason})") from err
    except OSError as err:
        raise ManifestError(f"{path}: cannot read the manifest ({err})") from err
    return records, path.parent


def _read_csv(path: Path, delimiter: str) -> list[dict]:
    # undecodable bytes become surrogates so that one bad row is rejected instead of the whole manifest
    with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        if not reader.fieldnames:
            raise ManifestError(f"{path}: empty manifest (no header row)")
        if any(_not_utf8(name) for name in reader.fieldnames):
            raise ManifestError(f"{path}: the manifest header is not UTF-8 text")
        records = []
        for record in reader:
            if None in record:  # more fields than the header
                records.append({"__error__": f"malformed CSV row ({len(record[None])} field(s) beyond the header)"})
            elif bad := [k for k, v in record.items() if isinstance(v, str) and _not_utf8(v)]:
                image = record.get("image") or ""
                image = image.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                records.append({"__error__": f"not valid UTF-8 text (column {bad[0]!r})", "image": image})
            else:
                records.append(record)
        return records


def _not_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _read_jsonl(path: Path) -> list[dict]:
    records = []
    with path.open("rb") as f:
        for raw in f:
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8-sig"))
            except UnicodeDecodeError:
                records.append({"__error__": "not valid UTF-8 text (JSON line)"})
                continue
            except json.JSONDecodeError as err:
                records.append({"__error__": f"malformed JSON line ({err.msg})"})
                continue
            records.append(record if isinstance(record, dict) else {"__error__": "JSON line is not an object"})
    return records


def manifest_from_folder(root: str | PathLike, out: str | PathLike | None = None) -> list[dict]:
    """Build manifest records from a folder tree: each folder holding a ``report.txt`` is one study.

    The layout is ``root/<patient>/<study>/{images, report.txt}`` (or ``root/<patient>/{images, report.txt}``, one
    study per patient); the patient id is the first folder under ``root``, the study id the study folder's path.
    Images are files with a known image suffix, or without a suffix (DICOM archives often have none).

    Args:
        root: the top folder.
        out: if given, also write the manifest there as CSV (paths relative to ``out``'s folder).

    Returns:
        Records with ``image`` and ``report_path`` relative to ``root``, ``patient_id``, ``study_id``.
    """
    root = Path(root)
    records = []
    without_images = 0
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        if "report.txt" not in files:
            continue
        rel = Path(folder).relative_to(root)
        if not rel.parts:
            logger.warning("%s: a report.txt at the top of the tree has no patient folder; skipped", root)
            continue
        images = [f for f in sorted(files) if f.lower().endswith(IMAGE_SUFFIXES) or "." not in f]
        if not images:
            without_images += 1  # counted, not named: the folder names are patient ids
        for name in images:
            records.append(
                {
                    "image": (rel / name).as_posix(),
                    "report_path": (rel / "report.txt").as_posix(),
                    "patient_id": rel.parts[0],
                    "study_id": rel.as_posix(),
                }
            )
    if without_images:
        logger.warning("%d study folder(s) under %s have a report.txt but no images", without_images, root)
    if out is not None:
        out = Path(out)
        prefix = Path(os.path.relpath(root, out.parent))
        with out.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["image", "report_path", "patient_id", "study_id"])
            writer.writeheader()
            for record in records:
                writer.writerow(
                    {**record, "image": (prefix / record["image"]).as_posix(),
                     "report_path": (prefix / record["report_path"]).as_posix()}
                )  # fmt: skip
    return records


def _cell(value) -> str:
    """A manifest cell as stripped text; None and NaN become ''."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def parse_label(value) -> float:
    """A finding cell as 1.0 / 0.0 / -1.0, or NaN when empty; anything else raises ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"bad label value {value!r}")
    text = _cell(value)
    if text.lower() in _EMPTY:
        return math.nan
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"bad label value {text!r} (use 1, 0, -1 or empty)") from None
    if number not in (1.0, 0.0, -1.0):
        raise ValueError(f"bad label value {text!r} (use 1, 0, -1 or empty)")
    return number


def parse_boxes(value) -> list[dict]:
    """The ``boxes`` cell: a JSON list (or a list) of ``{"label", "x", "y", "w", "h"}``; raises ValueError."""
    if isinstance(value, list | tuple):
        items = list(value)
    else:
        text = _cell(value)
        if not text:
            return []
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"bad boxes: not JSON ({err.msg})") from None
    if not isinstance(items, list):
        raise ValueError("bad boxes: expected a JSON list of {label, x, y, w, h}")
    boxes = []
    for item in items:
        if not isinstance(item, dict) or not {"label", "x", "y", "w", "h"} <= set(item):
            raise ValueError("bad boxes: each box needs label, x, y, w, h")
        try:
            x, y, w, h = (float(item[k]) for k in ("x", "y", "w", "h"))
        except (TypeError, ValueError):
            raise ValueError("bad boxes: x, y, w, h must be numbers") from None
        if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
            raise ValueError(f"bad boxes: box {item.get('label')!r} has a non-positive or non-finite size")
        boxes.append({"label": str(item["label"]), "x": x, "y": y, "w": w, "h": h})
    return boxes


def _parse_masks(value) -> dict[str, str]:
    if isinstance(value, dict):
        items = value
    else:
        text = _cell(value)
        if not text:
            return {}
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"bad masks: not JSON ({err.msg})") from None
    if not isinstance(items, dict) or not all(isinstance(v, str) and v for v in items.values()):
        raise ValueError("bad masks: expected a JSON object {finding: mask image path}")
    return {str(k): v for k, v in items.items()}


def _read_report(record: dict, base: Path) -> str:
    """The row's report text, "" when it has none; a named report file that cannot be read raises ValueError."""
    text = _cell(record.get("report"))
    if text:
        return text
    report_path = _cell(record.get("report_path"))
    if not report_path:
        return ""
    path = base / report_path
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"report file not found ({report_path})") from None
    except OSError as err:
        raise ValueError(f"cannot read report file ({report_path}: {err.strerror or err})") from None
    try:
        text = raw.decode("utf-8-sig").strip()
    except UnicodeDecodeError:
        raise ValueError(f"report file is not UTF-8 text ({report_path})") from None
    return text


def _parse_split(value) -> str:
    text = _cell(value).lower()
    if text not in SPLIT_VALUES:
        raise ValueError(f"bad split value {_cell(value)!r} (use train, validation or test)")
    return SPLIT_VALUES[text]


def match_label_columns(columns: list[str], names: list[str]) -> dict[str, str]:
    """Manifest columns that name a finding (ignoring case, spaces and underscores) -> the finding name."""
    by_key = {_norm(n): n for n in names}
    return {c: by_key[_norm(c)] for c in columns if c not in RESERVED_COLUMNS and _norm(c) in by_key}


def read_manifest(source: str | PathLike, finding_names: list[str], *, labels_from_reports: bool = False) -> Manifest:
    """Read a manifest and check every row.

    Args:
        source: a manifest file, or a study folder tree (see :func:`manifest_from_folder`).
        finding_names: the findings whose columns are label columns (matched ignoring case and underscores);
            other non-reserved columns are ignored with a log message.
        labels_from_reports: labels come from the report labeler only, so every row needs a report; otherwise a row
            needs a report or at least one finding label.

    Returns:
        A :class:`Manifest` with the good rows and the rejects, in manifest order.

    Raises:
        ManifestError: the manifest cannot be read or lacks ``image`` or ``patient_id`` (or, with
            ``labels_from_reports``, both report columns).
    """
    records, base = read_records(source)
    columns = list(dict.fromkeys(k for r in records for k in r if k != "__error__"))
    missing = [c for c in ("image", "patient_id") if c not in columns]
    if labels_from_reports and "report" not in columns and "report_path" not in columns:
        missing.append("report (or report_path), which the report labeler reads")
    if records and missing:
        raise ManifestError(f"{source}: manifest lacks required column(s): {', '.join(missing)}")
    label_columns = match_label_columns(columns, finding_names)
    ignored = [c for c in columns if c not in RESERVED_COLUMNS and c not in label_columns]
    if ignored:
        logger.info("manifest columns that are neither known fields nor findings are ignored: %s", ", ".join(ignored))

    rows: list[ManifestRow] = []
    rejects: list[Reject] = []
    seen: dict[str, int] = {}
    for i, record in enumerate(records):
        try:
            row = _check_row(i, record, base, label_columns, "split" in columns, labels_from_reports)
            if row.path in seen:  # checked last: a row's own problem is the more useful reason
                raise ValueError(f"duplicate image (same file as row {seen[row.path]})")
        except ValueError as err:
            rejects.append(Reject(i, _cell(record.get("image")), str(err)))
            continue
        seen[row.path] = i
        rows.append(row)
    without = sum(1 for r in rows if not r.report)
    if without:
        logger.info("%d of %d row(s) have no report: they train the classification and grounding losses only",
                    without, len(rows))  # fmt: skip
    return Manifest(rows, rejects, label_columns, total=len(records), ignored_columns=ignored)


def _check_row(i: int, record: dict, base: Path, label_columns: dict[str, str], has_split: bool,
               labels_from_reports: bool) -> ManifestRow:  # fmt: skip
    """One manifest record as a :class:`ManifestRow`; a ValueError names what is wrong with it."""
    if "__error__" in record:
        raise ValueError(record["__error__"])
    image = _cell(record.get("image"))
    if not image:
        raise ValueError("missing image path")
    patient_id = _cell(record.get("patient_id"))
    if not patient_id:
        raise ValueError("missing patient_id")
    report = _read_report(record, base)
    labels = {}
    for column, name in label_columns.items():
        try:
            value = parse_label(record.get(column))
        except ValueError as err:
            raise ValueError(f"{err} in column {column!r}") from None
        if not math.isnan(value):
            labels[name] = value
    split = _parse_split(record.get("split")) if has_split else None
    if not report and (labels_from_reports or not labels):
        raise ValueError("empty report" if labels_from_reports else "no report and no finding labels")
    return ManifestRow(
        row=i,
        image=image,
        path=os.path.abspath(base / image),
        report=report,
        patient_id=patient_id,
        study_id=_cell(record.get("study_id")) or None,
        view=_cell(record.get("view")) or None,
        labels=labels,
        boxes=parse_boxes(record.get("boxes")),
        masks={k: os.path.abspath(base / v) for k, v in _parse_masks(record.get("masks")).items()},
        split=split,
    )
