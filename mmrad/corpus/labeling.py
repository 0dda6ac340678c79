"""Labels and splits of ingested rows: manifest cells where given, the report labeler for the rest, and the split
(the manifest's ``split`` column, else the patient-level split of :mod:`mmrad.corpus.splits`)."""

from __future__ import annotations

import logging

import numpy as np

from mmrad.corpus.manifest import ManifestRow
from mmrad.corpus.splits import SPLIT_NAMES, patient_split

logger = logging.getLogger(__name__)


def label_rows(rows: list[ManifestRow], label_names: list[str], mode: str, vocabulary: str, num_proc: int,
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


def assign_splits(rows: list[ManifestRow], labels: np.ndarray, fractions, seed: int) -> tuple[list[int], tuple]:
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
