"""Image <-> report retrieval recall@K; row i of the image and text embeddings is a matching pair."""

import datasets
import evaluate

from mmrad.evaluation.metrics.functional import retrieval_recall

_DESCRIPTION = "Recall@K of image->report and report->image retrieval by cosine similarity."
_KWARGS = """
Args:
    predictions: (N, D) image embeddings.
    references: (N, D) report embeddings; row i matches image i.
    ks: the K values (default 1, 5, 10).
Returns:
    image_to_text_R@K and text_to_image_R@K for each K, and n.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Retrieval(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Sequence(datasets.Value("float32")),
                }
            ),
        )

    def _compute(self, predictions, references, ks=(1, 5, 10)):
        return retrieval_recall(predictions, references, ks)
