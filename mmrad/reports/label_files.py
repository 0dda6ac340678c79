"""Label the reports of a CSV or JSONL file and write one column per finding (``mmrad label``).

Each row's report is the text of its ``text_columns`` joined by blank lines (empty cells are skipped). The output
CSV has the id column (or ``row``, the 0-based row number), then one column per finding of the vocabulary with
``1`` / ``0`` / ``-1`` / empty (not mentioned), and with ``evidence=True`` an ``evidence`` column holding JSON:
``{finding: [{"value", "mention", "cue", "sentence", "mention_start", "mention_end", "start", "end"}, ...]}`` with
offsets into the joined report text.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mmrad.errors import MMRadError
from mmrad.reports.labeler import LabelResult, ReportLabeler

logger = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")


class LabelFileError(MMRadError, ValueError):
    """An input file that cannot be labeled; the message names the file and the reason."""


@dataclass
class LabelFileSummary:
    rows: int
    out: Path
    seconds: float
    label_names: list[str]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # finding -> {"1": n, "0": n, "-1": n, "": n}


def label_file(
    path: str | Path,
    out: str | Path,
    *,
    text_columns: list[str],
    id_column: str | None = None,
    vocabulary: str | Path = "chexpert",
    speculation: str | None = None,
    evidence: bool = False,
    num_workers: int = 1,
    progress: bool = False,
) -> LabelFileSummary:
    """Label every row of a CSV or JSONL file and write the labels as CSV.

    Args:
        path: the input file; ``.jsonl``/``.ndjson``/``.json`` are read as one JSON object per line, others as CSV.
        out: the output CSV file (its folder is created).
        text_columns: the columns whose text makes the report, in order (e.g. ``["findings", "impression"]``).
        id_column: a column copied to the output to identify the rows; None writes the row number.
        vocabulary: ``"chexpert"``, ``"nih14"`` or a vocabulary YAML file.
        speculation: ``"uncertain"``, ``"absent"`` or None (the vocabulary's convention); see
            :class:`~mmrad.reports.labeler.ReportLabeler`.
        evidence: also write an ``evidence`` column (JSON).
        num_workers: processes labeling in parallel.
        progress: show a progress bar on stderr.

    Returns:
        A :class:`LabelFileSummary` with the number of rows and the count of each value per finding.

    Raises:
        LabelFileError: the file is missing or unreadable, or lacks a column.
    """
    path, out = Path(path), Path(out)
    if not text_columns:
        raise LabelFileError("no text columns given (e.g. --text-columns findings,impression)")
    labeler = ReportLabeler(vocabulary, speculation=speculation)
    t0 = time.perf_counter()
    ids, texts = _read(path, text_columns, id_column)
    logger.info("labeling %d reports from %s with the %s vocabulary", len(texts), path, labeler.vocabulary.name)
    results = labeler.label_many(texts, num_workers=num_workers, progress=progress, evidence=evidence)
    names = labeler.label_names
    counts = {name: {"1": 0, "0": 0, "-1": 0, "": 0} for name in names}
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(out, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow([id_column or "row", *names, *(["evidence"] if evidence else [])])
            for row_id, result in zip(ids, results, strict=True):
                cells = [_cell(result.labels[name]) for name in names]
                for name, cell in zip(names, cells, strict=True):
                    counts[name][cell] += 1
                extra = [_evidence_json(result)] if evidence else []
                writer.writerow([row_id, *cells, *extra])
    except OSError as err:
        raise LabelFileError(f"{out}: cannot write ({err.strerror or err})") from err
    return LabelFileSummary(len(texts), out, time.perf_counter() - t0, names, counts)


def _read(path: Path, text_columns: list[str], id_column: str | None) -> tuple[list[str], list[str]]:
    try:
        if path.suffix.lower() in JSONL_SUFFIXES:
            rows = list(_jsonl_rows(path))
            columns = list(dict.fromkeys(key for row in rows for key in row))
        else:
            columns, rows = _csv_rows(path)
    except FileNotFoundError as err:
        raise LabelFileError(f"{path}: no such file") from err
    except IsADirectoryError as err:
        raise LabelFileError(f"{path}: is a folder, not a CSV or JSONL file") from err
    except UnicodeDecodeError as err:
        raise LabelFileError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    except csv.Error as err:
        raise LabelFileError(f"{path}: not a readable CSV file ({err})") from err
    except OSError as err:
        raise LabelFileError(f"{path}: cannot read ({err.strerror or err})") from err
    missing = [c for c in [*text_columns, *([id_column] if id_column else [])] if c not in columns]
    if missing and (rows or columns):
        raise LabelFileError(f"{path}: no column {', '.join(map(repr, missing))} (columns: {', '.join(columns)})")
    if not rows:
        logger.warning("%s has no rows", path)
    texts = []
    for i, row in enumerate(rows):
        parts = [_text(row.get(c), path, i, c) for c in text_columns]
        texts.append("\n\n".join(p for p in parts if p.strip()))
    ids = [_text(row.get(id_column), path, i, id_column) for i, row in enumerate(rows)] if id_column else None
    return ids or [str(i) for i in range(len(rows))], texts


def _csv_rows(path: Path) -> tuple[list[str], list[dict]]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # reports can be longer than csv's 128 kB default
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            raise LabelFileError(f"{path}: empty file (a CSV needs a header row)")
        return list(reader.fieldnames), list(reader)


def _jsonl_rows(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise LabelFileError(f"{path}: line {number} is not JSON ({err.msg})") from err
            if not isinstance(row, dict):
                raise LabelFileError(f"{path}: line {number} is a {type(row).__name__}, not a JSON object")
            yield row


def _text(value, path: Path, row: int, column: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise LabelFileError(f"{path}: row {row}, column {column!r} holds a {type(value).__name__}, not text")


def _cell(value: float) -> str:
    return "" if math.isnan(value) else str(int(value))


def _evidence_json(result: LabelResult) -> str:
    data = {
        name: [
            {
                "value": int(e.value),
                "mention": e.mention,
                "cue": e.cue,
                "sentence": e.sentence,
                "mention_start": e.mention_start,
                "mention_end": e.mention_end,
                "start": e.start,
                "end": e.end,
            }
            for e in evs
        ]
        for name, evs in result.evidence.items()
        if evs
    }
    return json.dumps(data, ensure_ascii=False)
