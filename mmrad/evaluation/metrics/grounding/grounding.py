"""Grounding metrics for heatmaps against ground-truth masks (boxes drawn as masks): pointing game, CNR, IoU@t.

CNR = |mean_in - mean_out| / sqrt(var_in + var_out) over the heatmap normalised to [0, 1] (BioViL, MS-CXR).
"""

import datasets
import evaluate
import numpy

from mmrad.evaluation.metrics.functional import grounding_metrics

_DESCRIPTION = "Pointing game, contrast-to-noise ratio and IoU at thresholds of heatmaps against masks."
_KWARGS = """
Args:
    predictions: heatmaps, each (H, W) (any scale; normalised per map).
    references: masks, each (H, W) with 1 inside the finding; pairs with an empty mask are skipped.
    thresholds: IoU thresholds on the normalised map (default 0.1 ... 0.5).
Returns:
    pointing_game, cnr, iou@t for each t, and n (pairs scored).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Grounding(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("float32"))),
                    "references": datasets.Sequence(datasets.Sequence(datasets.Value("uint8"))),
                }
            ),
        )

    def _compute(self, predictions, references, thresholds=(0.1, 0.2, 0.3, 0.4, 0.5)):
        maps = [numpy.asarray(p, dtype=numpy.float32) for p in predictions]
        masks = [numpy.asarray(r, dtype=numpy.uint8) for r in references]
        return grounding_metrics(maps, masks, thresholds)
