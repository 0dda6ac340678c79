"""Metric computations in plain numpy, shared by the evaluate modules of this package and by ``mmrad evaluate``.

- Multi-label classification: AUROC (Mann-Whitney with average ranks for ties), average precision (AUPRC as
  scikit-learn defines it), F1 at a threshold; per class with NaN labels masked, macro averages, and percentile
  bootstrap 95% confidence intervals.
- Retrieval: image->report and report->image recall@K.
- Grounding: pointing game, contrast-to-noise ratio (as BioViL defines it for MS-CXR), IoU at thresholds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata

UNCERTAIN_POLICIES = ("ignore", "positive", "negative")


# ---------------------------------------------------------------------------------------------- classification


def auroc(scores: np.ndarray, targets: np.ndarray) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    scores, targets = np.asarray(scores, dtype=np.float64), np.asarray(targets) > 0.5
    n_pos = int(targets.sum())
    n_neg = targets.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(scores)
    return float((ranks[targets].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Area under the precision-recall curve as the step sum of precision over recall increments."""
    scores, targets = np.asarray(scores, dtype=np.float64), np.asarray(targets) > 0.5
    n_pos = int(targets.sum())
    if n_pos == 0:
        return math.nan
    order = np.argsort(-scores, kind="mergesort")
    scores, targets = scores[order], targets[order]
    # one threshold per distinct score: the last index of each run of equal scores
    last = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    tp = np.cumsum(targets)[last]
    precision = tp / (last + 1)
    recall_step = np.diff(np.r_[0, tp]) / n_pos
    return float((precision * recall_step).sum())


def f1_score(scores: np.ndarray, targets: np.ndarray, threshold: float = 0.5) -> float:
    """F1 of ``scores >= threshold``; NaN when the targets hold no positive."""
    predicted = np.asarray(scores) >= threshold
    targets = np.asarray(targets) > 0.5
    if not targets.any():
        return math.nan
    tp = int((predicted & targets).sum())
    denominator = int(predicted.sum()) + int(targets.sum())
    return 2.0 * tp / denominator


def _binary_targets(labels: np.ndarray, uncertain: str) -> tuple[np.ndarray, np.ndarray]:
    """(targets, valid) from labels with 1/0/-1/NaN: NaN is never valid; -1 follows the policy."""
    if uncertain not in UNCERTAIN_POLICIES:
        raise ValueError(f"uncertain must be one of {UNCERTAIN_POLICIES}, got {uncertain!r}")
    labels = np.asarray(labels, dtype=np.float64)
    valid = ~np.isnan(labels)
    if uncertain == "ignore":
        valid &= labels != -1
    targets = np.where(labels == -1, 1.0 if uncertain == "positive" else 0.0, labels)
    bad = valid & ~np.isin(targets, (0.0, 1.0))
    if bad.any():
        raise ValueError(f"labels must be 1, 0, -1 or NaN; found {np.unique(labels[bad])[:5].tolist()}")
    return np.where(valid, targets, 0.0), valid


def multilabel_metrics(
    scores: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str] | None = None,
    *,
    threshold: float = 0.5,
    uncertain: str = "ignore",
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Per-class and macro AUROC / AUPRC / F1 with bootstrap confidence intervals.

    Args:
        scores: (N, K) probabilities (or any monotonic scores; F1 uses ``threshold``).
        labels: (N, K) with 1 / 0 / -1 (uncertain) / NaN (unknown, masked).
        names: K class names (default "0", "1", ...).
        threshold: decision threshold for F1.
        uncertain: what -1 counts as: "ignore" (masked), "positive" or "negative".
        n_bootstrap: resamples of the rows for the CIs (0 = no CIs).
        confidence: the CI level.
        seed: the bootstrap's random seed.

    Returns:
        ``{"macro_auroc", "macro_auroc_ci", "macro_auprc", "macro_f1", "n", "per_class": {name: {"auroc",
        "auroc_ci", "auprc", "auprc_ci", "f1", "n", "n_positive"}}}``; classes without both positives and negatives
        get NaN AUROC and are left out of the macro averages.
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets, valid = _binary_targets(labels, uncertain)
    if scores.shape != targets.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and labels {targets.shape} must both be (N, K)")
    n, k = scores.shape
    names = list(names) if names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} names for {k} classes")

    rng = np.random.default_rng(seed)
    resamples = rng.integers(0, n, size=(n_bootstrap, n)) if n_bootstrap > 0 and n > 0 else None
    boot_auroc = np.full((n_bootstrap, k), np.nan)
    per_class = {}
    for j, name in enumerate(names):
        s, t, v = scores[:, j], targets[:, j] > 0.5, valid[:, j]
        row = {
            "auroc": auroc(s[v], t[v]),
            "auprc": average_precision(s[v], t[v]),
            "f1": f1_score(s[v], t[v], threshold),
            "n": int(v.sum()),
            "n_positive": int(t[v].sum()),
            "auroc_ci": [math.nan, math.nan],
            "auprc_ci": [math.nan, math.nan],
        }
        if resamples is not None and not math.isnan(row["auroc"]):
            # masked entries get a score below every real one and count as neither class
            keep = v[resamples]
            boot = _auroc_rows_masked(np.where(keep, s[resamples], -np.inf), t[resamples] & keep, keep)
            boot_auroc[:, j] = boot
            row["auroc_ci"] = _percentile_ci(boot, confidence)
            aps = np.array([average_precision(s[r][v[r]], t[r][v[r]]) for r in resamples])
            row["auprc_ci"] = _percentile_ci(aps, confidence)
        per_class[name] = row

    aurocs = np.array([r["auroc"] for r in per_class.values()])
    with np.errstate(invalid="ignore"):
        macro_boot = np.nanmean(boot_auroc, axis=1) if resamples is not None and np.isfinite(aurocs).any() else None
    return {
        "macro_auroc": _nanmean(aurocs),
        "macro_auroc_ci": _percentile_ci(macro_boot, confidence) if macro_boot is not None else [math.nan] * 2,
        "macro_auprc": _nanmean([r["auprc"] for r in per_class.values()]),
        "macro_f1": _nanmean([r["f1"] for r in per_class.values()]),
        "threshold": threshold,
        "uncertain": uncertain,
        "n": n,
        "n_bootstrap": n_bootstrap,
        "per_class": per_class,
    }


def _auroc_rows_masked(scores: np.ndarray, targets: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Row-wise AUROC where ``keep`` False entries are excluded (they carry -inf scores and no target)."""
    n_pos = targets.sum(axis=1)
    n_neg = keep.sum(axis=1) - n_pos
    n_out = (~keep).sum(axis=1)
    ranks = rankdata(scores, axis=1) - n_out[:, None]  # the excluded -inf entries occupy the lowest ranks
    with np.errstate(invalid="ignore", divide="ignore"):
        out = ((ranks * targets).sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    out[(n_pos == 0) | (n_neg == 0)] = np.nan
    return out


def _percentile_ci(values: np.ndarray | None, confidence: float) -> list[float]:
    if values is None:
        return [math.nan, math.nan]
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return [math.nan, math.nan]
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
    return [float(lo), float(hi)]


def _nanmean(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else math.nan


# ---------------------------------------------------------------------------------------------- retrieval


def retrieval_recall(image_embeds: np.ndarray, text_embeds: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Recall@K of image->report and report->image retrieval, where row i of each is a matching pair.

    Embeddings are L2-normalised here, so raw features may be passed.
    """
    img = _normalise(np.asarray(image_embeds, dtype=np.float64))
    txt = _normalise(np.asarray(text_embeds, dtype=np.float64))
    if img.shape != txt.shape:
        raise ValueError(f"image {img.shape} and text {txt.shape} embeddings must have the same shape")
    sim = img @ txt.T
    diag = np.diag(sim)
    # rank = number of candidates strictly more similar than the true match
    i2t = (sim > diag[:, None]).sum(axis=1)
    t2i = (sim > diag[None, :]).sum(axis=0)
    out = {"n": int(sim.shape[0])}
    for k in ks:
        out[f"image_to_text_R@{k}"] = float((i2t < k).mean()) if len(diag) else math.nan
        out[f"text_to_image_R@{k}"] = float((t2i < k).mean()) if len(diag) else math.nan
    return out


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# ---------------------------------------------------------------------------------------------- grounding


def _check_map(heatmap: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    heatmap = np.asarray(heatmap, dtype=np.float64)
    mask = np.asarray(mask) > 0.5
    if heatmap.shape != mask.shape or heatmap.ndim != 2:
        raise ValueError(f"heatmap {heatmap.shape} and mask {mask.shape} must be the same 2-D shape")
    return heatmap, mask


def pointing_game(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """1.0 when the heatmap's maximum lies inside the mask (any of several tied maxima), else 0.0."""
    heatmap, mask = _check_map(heatmap, mask)
    if not mask.any():
        return math.nan
    return float(mask[heatmap == heatmap.max()].any())


def contrast_to_noise(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """CNR = |mean_in - mean_out| / sqrt(var_in + var_out) over the map normalised to [0, 1]."""
    heatmap, mask = _check_map(heatmap, mask)
    if not mask.any() or mask.all():
        return math.nan
    span = heatmap.max() - heatmap.min()
    heatmap = (heatmap - heatmap.min()) / span if span > 0 else np.zeros_like(heatmap)
    inside, outside = heatmap[mask], heatmap[~mask]
    denominator = math.sqrt(inside.var() + outside.var())
    if denominator == 0:
        return 0.0 if inside.mean() == outside.mean() else math.inf
    return float(abs(inside.mean() - outside.mean()) / denominator)


def iou_at_thresholds(
    heatmap: np.ndarray, mask: np.ndarray, thresholds: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5)
) -> dict[str, float]:
    """IoU between the mask and the map (min-max normalised to [0, 1]) thresholded at each value."""
    heatmap, mask = _check_map(heatmap, mask)
    span = heatmap.max() - heatmap.min()
    norm = (heatmap - heatmap.min()) / span if span > 0 else np.zeros_like(heatmap)
    out = {}
    for t in thresholds:
        region = norm >= t if span > 0 else np.zeros_like(mask)
        union = (region | mask).sum()
        out[f"iou@{t:g}"] = float((region & mask).sum() / union) if union else math.nan
    return out


def grounding_metrics(
    heatmaps: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    thresholds: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5),
) -> dict:
    """Mean pointing game, CNR and IoU@t over (heatmap, mask) pairs; pairs with an empty mask are skipped."""
    hits, cnrs, ious = [], [], {f"iou@{t:g}": [] for t in thresholds}
    for heatmap, mask in zip(heatmaps, masks, strict=True):
        if not (np.asarray(mask) > 0.5).any():
            continue
        hits.append(pointing_game(heatmap, mask))
        cnrs.append(contrast_to_noise(heatmap, mask))
        for key, value in iou_at_thresholds(heatmap, mask, thresholds).items():
            ious[key].append(value)
    return {
        "pointing_game": _nanmean(hits),
        "cnr": _nanmean(cnrs),
        **{key: _nanmean(v) for key, v in ious.items()},
        "n": len(hits),
    }
