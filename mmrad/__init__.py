"""mmrad: multimodal radiology — image towers x clinical text, LoRA fine-tuning, grounding and zero-shot queries.

The names users need are here, imported lazily (``import mmrad`` costs nothing until one is used, so ``mmrad --help``
stays fast)::

    import mmrad

    mmrad.ingest("manifest.csv", "corpus/")                          # images + reports -> a cached, split corpus
    cfg = mmrad.load_config("tiny", ["data.corpus=corpus/"])          # a shipped config (mmrad.list_configs())
    model_dir = mmrad.train(cfg, "run/")                              # Accelerate: CPU, one or many GPUs
    metrics = mmrad.evaluate(model_dir, "corpus/", split="test")      # metrics.json + plots

    model = mmrad.MMRadModel.from_pretrained(model_dir)
    processor = mmrad.ImageProcessor.from_pretrained(model_dir)
    probs = model.classify(processor("chest.dcm")["pixel_values"])    # the model's findings
    heatmaps = mmrad.ground(model, "chest.dcm", ["left pleural effusion"])

The package is organised by job (``mmrad.io``, ``mmrad.reports``, ``mmrad.corpus``, ``mmrad.models``,
``mmrad.training``, ``mmrad.evaluation``, ``mmrad.inference``, ``mmrad.hub``); see the architecture page of the docs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    # configuration
    "MMRadConfig": "mmrad.config.schema",
    "ExperimentConfig": "mmrad.config.schema",
    "load_config": "mmrad.config.schema",
    "list_configs": "mmrad.config.registry",
    "list_pretrained": "mmrad.models.sources",
    # images and reports
    "read_dicom": "mmrad.io.dicom",
    "load_image": "mmrad.io.images",
    "ImageProcessor": "mmrad.processing.image_processor",
    "parse_report": "mmrad.reports.sections",
    "ReportLabeler": "mmrad.reports.labeler",
    # corpora, models, training, evaluation
    "ingest": "mmrad.corpus.ingest",
    "load_corpus": "mmrad.corpus.format",
    "MMRadModel": "mmrad.models.modeling",
    "train": "mmrad.training.loop",
    "evaluate": ("mmrad.evaluation.corpus", "evaluate_corpus"),
    # inference and sharing
    "ZeroShotClassifier": "mmrad.inference.zeroshot",
    "ground": "mmrad.inference.grounding",
    "push": "mmrad.hub.push",
}
__all__ = [  # the lazily imported names of _EXPORTS
    "__version__",
    "ExperimentConfig",
    "ImageProcessor",
    "MMRadConfig",
    "MMRadModel",
    "ReportLabeler",
    "ZeroShotClassifier",
    "evaluate",
    "ground",
    "ingest",
    "list_configs",
    "list_pretrained",
    "load_config",
    "load_corpus",
    "load_image",
    "parse_report",
    "push",
    "read_dicom",
    "train",
]

if TYPE_CHECKING:
    from mmrad.config.registry import list_configs
    from mmrad.config.schema import ExperimentConfig, MMRadConfig, load_config
    from mmrad.corpus.format import load_corpus
    from mmrad.corpus.ingest import ingest
    from mmrad.evaluation.corpus import evaluate_corpus as evaluate
    from mmrad.hub.push import push
    from mmrad.inference.grounding import ground
    from mmrad.inference.zeroshot import ZeroShotClassifier
    from mmrad.io.dicom import read_dicom
    from mmrad.io.images import load_image
    from mmrad.models.modeling import MMRadModel
    from mmrad.models.sources import list_pretrained
    from mmrad.processing.image_processor import ImageProcessor
    from mmrad.reports.labeler import ReportLabeler
    from mmrad.reports.sections import parse_report
    from mmrad.training.loop import train


def __getattr__(name: str):
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'mmrad' has no attribute {name!r}")
    module, attribute = target if isinstance(target, tuple) else (target, name)
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
