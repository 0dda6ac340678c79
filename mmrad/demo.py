"""``mmrad demo``: the whole workflow on the embedded default, offline, on the CPU.

1. make a phantom corpus (images with known lesions, reports, masks) and ingest it like a user's corpus;
2. stage 1 — pre-train small towers contrastively on the train split (the stand-in for a pretrained pair such as
   BiomedCLIP) -> ``base/model``;
3. stage 2 — start from that checkpoint, add LoRA adapters to both towers and fine-tune them with the query decoder
   on the findings, the decoder's attention trained toward the train split's finding masks (``model.loss.grounding``)
   -> ``model/`` (a ``from_pretrained`` folder);
4. evaluate on the test split -> ``metrics.json`` and ROC plots, and a summary table; the metrics go into the model
   folder and its card (``model/README.md``) is written from them;
5. ground the reports of a few test studies in their images -> ``examples/`` (overlay PNGs and ``index.json``).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from mmrad.config.schema import ExperimentConfig, load_config
from mmrad.models.card import write_card

logger = logging.getLogger(__name__)

DEMO_CONFIG = "demo"  # the shipped config (mmrad/config/presets/demo.yaml)


@dataclass
class DemoSettings:
    studies: int = 700  # phantom studies
    source_size: int = 128  # phantom image size (longest side)
    pretrain_steps: int = 250
    finetune_steps: int = 300
    seed: int = 0

    @classmethod
    def quick(cls) -> DemoSettings:
        return cls(studies=160, source_size=96, pretrain_steps=30, finetune_steps=30)


@dataclass
class DemoResult:
    out_dir: Path
    model_dir: Path
    metrics: dict
    seconds: dict[str, float] = field(default_factory=dict)


def demo_config(stage: str, corpus: Path, settings: DemoSettings, base: Path | None = None) -> ExperimentConfig:
    """The experiment of one demo stage ("pretrain" or "finetune")."""
    common = [f"data.corpus={corpus}", f"train.seed={settings.seed}"]
    if stage == "pretrain":  # the vision tower learns against the locked text tower
        overrides = [
            "model.loss.classification=0.0",
            "train.freeze_text=True",
            f"train.max_steps={settings.pretrain_steps}",
            f"train.eval_every={settings.pretrain_steps}",
            f"train.save_every={settings.pretrain_steps}",
        ]
    elif stage == "finetune":
        overrides = [
            f"train.init_from={base}",
            "lora.enabled=True",
            "model.loss.contrastive=0.0",  # the findings' labels only: the reports are not read in this stage
            "model.loss.grounding=1.0",  # and the phantom's finding masks steer the decoder's attention
            f"train.max_steps={settings.finetune_steps}",
            f"train.eval_every={max(1, settings.finetune_steps // 3)}",
            f"train.save_every={settings.finetune_steps}",
        ]
    else:
        raise ValueError(f"unknown demo stage {stage!r}")
    return load_config(DEMO_CONFIG, common + overrides)


def run_demo(out_dir: str | Path, *, quick: bool = False, settings: DemoSettings | None = None) -> DemoResult:
    """Run the demo into ``out_dir`` (which is replaced) and return what it made."""
    import yaml

    from mmrad.corpus.ingest import ingest
    from mmrad.evaluation.corpus import evaluate_corpus
    from mmrad.phantom.corpus import PHANTOM_SYNONYM_PROMPTS, PHANTOM_ZERO_SHOT_PROMPTS, make_phantom_corpus
    from mmrad.training.loop import train

    settings = settings or (DemoSettings.quick() if quick else DemoSettings())
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    seconds: dict[str, float] = {}

    start = time.perf_counter()
    make_phantom_corpus(out / "phantom", n=settings.studies, image_size=settings.source_size, seed=settings.seed)
    prompts = [out / "phantom" / "zero_shot_prompts.yaml", out / "phantom" / "zero_shot_synonyms.yaml"]
    for path, family in zip(prompts, (PHANTOM_ZERO_SHOT_PROMPTS, PHANTOM_SYNONYM_PROMPTS), strict=True):
        path.write_text(yaml.safe_dump(family, sort_keys=False))  # held-out phrasings, never in the reports
    image_size = load_config(DEMO_CONFIG).model.preprocess.image_size
    ingest(out / "phantom" / "manifest.csv", out / "corpus", image_size=image_size, seed=settings.seed)
    seconds["data"] = time.perf_counter() - start

    start = time.perf_counter()
    base = train(demo_config("pretrain", out / "corpus", settings), out / "base")
    seconds["pretrain"] = time.perf_counter() - start

    start = time.perf_counter()
    finetuned = train(demo_config("finetune", out / "corpus", settings, base), out / "finetune")
    model_dir = out / "model"
    shutil.copytree(finetuned, model_dir)
    seconds["finetune"] = time.perf_counter() - start

    start = time.perf_counter()
    metrics = evaluate_corpus(model_dir, out / "corpus", split="test", out=out / "metrics.json", n_bootstrap=1000,
                              zero_shot_prompts=prompts)  # fmt: skip
    shutil.copy2(out / "metrics.json", model_dir / "metrics.json")
    write_card(model_dir)  # the card's tables come from the metrics just measured
    write_examples(model_dir, out / "corpus", out / "examples")
    seconds["evaluate"] = time.perf_counter() - start
    return DemoResult(out, model_dir, metrics, seconds)


def write_examples(model_dir: Path, corpus: Path, out: Path, n: int = 4) -> Path:
    """Overlays of each evidence sentence of the first ``n`` test reports with a finding the model knows, with the
    true mask's outline in white; listed in ``out/index.json`` with whether the map's peak falls in the mask."""
    import datasets
    import numpy as np

    from mmrad.files import write_json_atomic
    from mmrad.inference.grounding import ground_report, overlay
    from mmrad.models.modeling import MMRadModel
    from mmrad.processing.transforms import to_float_array

    model = MMRadModel.from_pretrained(model_dir)
    test = datasets.load_from_disk(str(corpus))["test"]
    out.mkdir(parents=True, exist_ok=True)
    index, studies = [], 0
    for row in test:
        if studies >= n:
            break
        masks = {m["label"]: np.asarray(m["mask"]) > 0 for m in row["masks"] or [] if m["label"] in model.label_names}
        if not masks:
            continue
        image = to_float_array(row["image"])
        studies += 1
        for heatmap in ground_report(model, image, row["report"]):
            mask = masks.get(heatmap.finding)
            if mask is None:
                continue
            peak = np.unravel_index(int(np.argmax(heatmap.map)), heatmap.map.shape)
            name = f"{len(index):02d}_{heatmap.finding.lower().replace(' ', '_')}.png"
            overlay(image, heatmap, outline=mask).save(out / name)
            index.append({"overlay": name, "finding": heatmap.finding, "sentence": heatmap.phrase,
                          "score": heatmap.score, "peak_in_mask": bool(mask[peak])})  # fmt: skip
    write_json_atomic(out / "index.json", {"entries": index})
    return out / "index.json"
