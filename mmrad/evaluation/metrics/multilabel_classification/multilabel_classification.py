"""Multi-label classification metrics: per-class and macro AUROC / AUPRC / F1 with bootstrap 95% CIs.

Labels are 1 (present), 0 (absent), -1 (uncertain) or NaN (unknown: masked). Shipped with mmrad and loaded by path.
"""

import datasets
import evaluate

from mmrad.evaluation.metrics.functional import multilabel_metrics

_DESCRIPTION = """Per-class and macro AUROC, AUPRC (average precision) and F1 at a threshold for multi-label
classification with NaN-masked unknown labels and a policy for uncertain (-1) labels; percentile bootstrap CIs."""

_KWARGS = """
Args:
    predictions: (N, K) scores or probabilities.
    references: (N, K) labels 1 / 0 / -1 / NaN.
    names: K class names.
    threshold: F1 decision threshold (default 0.5).
    uncertain: "ignore" (default), "positive" or "negative".
    n_bootstrap: bootstrap resamples for the CIs (default 1000; 0 = none).
    seed: bootstrap seed.
Returns:
    macro_auroc, macro_auroc_ci, macro_auprc, macro_f1, per_class {name: {auroc, auroc_ci, auprc, auprc_ci, f1, ...}}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class MultilabelClassification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Sequence(datasets.Value("float64")),
                }
            ),
        )

    def _compute(self, predictions, references, names=None, threshold=0.5, uncertain="ignore", n_bootstrap=1000,
                 seed=0):  # fmt: skip
        return multilabel_metrics(
            predictions, references, names, threshold=threshold, uncertain=uncertain, n_bootstrap=n_bootstrap,
            seed=seed,
        )  # fmt: skip
