"""Metrics shipped with mmrad as Hugging Face ``evaluate`` modules, loaded by path (Hub metrics cannot be fetched
offline). The computations live in :mod:`mmrad.evaluation.metrics.functional`; the modules wrap them for the evaluate
API.

    from mmrad.evaluation.metrics import load_metric
    metric = load_metric("multilabel_classification")
    metric.add_batch(predictions=probs, references=labels)
    metric.compute(names=[...], threshold=0.5)
"""

from __future__ import annotations

from pathlib import Path

METRICS_DIR = Path(__file__).parent
SHIPPED_METRICS = ("multilabel_classification", "retrieval", "grounding")


def metric_path(name: str) -> Path:
    if name not in SHIPPED_METRICS:
        raise ValueError(f"unknown metric {name!r}; mmrad ships {', '.join(SHIPPED_METRICS)}")
    return METRICS_DIR / name / f"{name}.py"


def load_metric(name: str, **kwargs):
    """``evaluate.load`` of a metric module shipped in this package (imports evaluate, which takes seconds)."""
    import evaluate

    return evaluate.load(str(metric_path(name)), **kwargs)
