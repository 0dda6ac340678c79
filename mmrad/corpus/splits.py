"""Patient-level splits: no patient in two splits, deterministic for a seed, stratified by finding where possible.

Patients are assigned whole, by iterative stratification (after Sechidis et al., "On the stratification of
multi-label data", 2011) at the patient level: the finding with the fewest unassigned positive patients goes first,
each of its patients joins the split that still needs the most of that finding (ties: the split that needs the most
rows, then the lower split index); patients without positive findings fill the remaining row quotas.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

SPLIT_NAMES = ("train", "validation", "test")


def parse_fractions(text: str | Sequence[float]) -> tuple[float, float, float]:
    """``"0.8,0.1,0.1"`` (or a sequence) as three non-negative fractions summing to 1; raises ValueError."""
    try:
        values = [float(v) for v in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        raise ValueError(f"split {text!r}: expected three numbers such as 0.8,0.1,0.1") from None
    if len(values) != 3:
        raise ValueError(f"split {text!r}: expected three fractions (train, validation, test)")
    if any(v < 0 or not math.isfinite(v) for v in values) or not math.isclose(sum(values), 1.0, abs_tol=1e-6):
        raise ValueError(f"split {text!r}: fractions must be >= 0 and sum to 1")
    return values[0], values[1], values[2]


def patient_split(
    patients: Sequence[str],
    labels: np.ndarray | None,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> list[int]:
    """Assign each row to a split index so that all rows of a patient share one split.

    Args:
        patients: one patient identifier per row (any hashable; only equality is used).
        labels: (N, K) float labels (1 positive; 0, -1 and NaN are not) to stratify by, or None.
        fractions: target share of rows per split.
        seed: the same seed, patients and labels give the same assignment.

    Returns:
        One split index (0 train, 1 validation, 2 test) per row.
    """
    n = len(patients)
    fractions = np.asarray(fractions, dtype=np.float64)
    # patients in order of first appearance, then shuffled by the seed (independent of any key hashing)
    index: dict[str, int] = {}
    row_patient = np.array([index.setdefault(p, len(index)) for p in patients], dtype=np.int64)
    num_patients = len(index)
    rows_per_patient = np.bincount(row_patient, minlength=num_patients).astype(np.float64)
    if labels is not None and len(labels) and np.asarray(labels).ndim == 2:
        positive = np.nan_to_num(np.asarray(labels, dtype=np.float64), nan=0.0) == 1.0
        patient_pos = np.zeros((num_patients, positive.shape[1]), dtype=bool)
        np.logical_or.at(patient_pos, row_patient, positive)
    else:
        patient_pos = np.zeros((num_patients, 0), dtype=bool)

    rng = np.random.default_rng(seed)
    order = rng.permutation(num_patients)
    open_splits = fractions > 0
    row_need = fractions * n
    label_need = fractions[:, None] * patient_pos.sum(axis=0)[None, :].astype(np.float64)  # (S, K)
    assigned = np.full(num_patients, -1, dtype=np.int64)

    def place(p: int, by: np.ndarray) -> None:
        # lexicographic choice: most needed by `by`, then most rows needed, then the lowest split index
        keys = [(by[s], row_need[s], -s) for s in range(len(fractions)) if open_splits[s]]
        s = -max(keys)[2]
        assigned[p] = s
        row_need[s] -= rows_per_patient[p]
        label_need[s] -= patient_pos[p]

    remaining = patient_pos.copy()
    while remaining.any():
        counts = remaining.sum(axis=0)
        k = int(np.argmin(np.where(counts > 0, counts, np.iinfo(np.int64).max)))
        for p in order:
            if remaining[p, k] and assigned[p] < 0:
                place(p, label_need[:, k])
                remaining[p] = False
    for p in order:
        if assigned[p] < 0:
            place(p, row_need)
    return assigned[row_patient].tolist()
