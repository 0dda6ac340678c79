"""Predictions over a data loader and the classification / retrieval metrics computed from them."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)


@dataclass
class Predictions:
    probs: np.ndarray  # (N, K) sigmoid of the finding logits
    labels: np.ndarray  # (N, K) 1 / 0 / -1 / NaN
    image_embeds: np.ndarray  # (N, P)
    text_embeds: np.ndarray | None  # (N, P)
    losses: dict[str, float]  # mean loss terms over the batches


@torch.inference_mode()
def predict(model, loader, accelerator=None, *, progress: bool = False) -> Predictions:
    """Run ``model`` over ``loader`` (gathering across processes when ``accelerator`` is given)."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    probs, labels, images, texts = [], [], [], []
    sums: dict[str, float] = {}
    batches = 0
    main = accelerator is None or accelerator.is_main_process
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    for batch in tqdm(loader, desc="evaluate", disable=not (progress and main), leave=False):
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        out = model(
            pixel_values=batch["pixel_values"],
            input_ids=batch.get("input_ids"),
            attention_mask=batch.get("attention_mask"),
            labels=batch.get("labels"),
        )
        fields = [torch.sigmoid(out.logits.float()), batch["labels"].float(), out.image_embeds.float()]
        if out.text_embeds is not None:
            fields.append(out.text_embeds.float())
        if accelerator is not None:
            fields = accelerator.gather_for_metrics(fields)
        probs.append(fields[0].cpu())
        labels.append(fields[1].cpu())
        images.append(fields[2].cpu())
        if len(fields) > 3:
            texts.append(fields[3].cpu())
        for name, value in (out.loss_terms or {}).items():
            sums[name] = sums.get(name, 0.0) + float(value)
        batches += 1
    model.train(was_training)
    return Predictions(
        probs=torch.cat(probs).numpy(),
        labels=torch.cat(labels).numpy(),
        image_embeds=torch.cat(images).numpy(),
        text_embeds=torch.cat(texts).numpy() if texts else None,
        losses={k: v / max(batches, 1) for k, v in sums.items()},
    )


def prediction_metrics(pred: Predictions, names: list[str], *, n_bootstrap: int = 0, seed: int = 0) -> dict:
    """``{"classification": ..., "retrieval": ...}`` computed from predictions."""
    from mmrad.metrics.functional import multilabel_metrics, retrieval_recall

    out = {"classification": multilabel_metrics(pred.probs, pred.labels, names, n_bootstrap=n_bootstrap, seed=seed)}
    if pred.text_embeds is not None and len(pred.text_embeds) > 1:
        out["retrieval"] = retrieval_recall(pred.image_embeds, pred.text_embeds)
    return out


def roc_plots(pred: Predictions, names: list[str], folder: Path, title: str = "") -> list[Path]:
    """One ROC-curve PNG per finding with both classes present (uncertain labels left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, name in enumerate(names):
        valid = np.isin(pred.labels[:, k], (0.0, 1.0))
        y, s = pred.labels[valid, k], pred.probs[valid, k]
        if y.min(initial=1) == y.max(initial=0):
            continue
        fpr, tpr, _ = roc_curve(y, s)
        fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
        ax.plot(fpr, tpr, lw=2, label=f"AUROC {roc_auc_score(y, s):.3f} (n={len(y)}, {int(y.sum())} positive)")
        ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"{title}{name}", xlim=(0, 1),
               ylim=(0, 1.01))  # fmt: skip
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        path = folder / f"roc_{_slug(name)}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def _slug(name: str) -> str:
    return "".join(c.lower() if c.isalnum() else "_" for c in name).strip("_")


def evaluate_corpus(
    model_dir: str | Path,
    corpus_dir: str | Path,
    *,
    split: str = "test",
    out: str | Path = "metrics.json",
    batch_size: int = 64,
    n_bootstrap: int = 1000,
    threshold: float = 0.5,
    progress: bool = True,
) -> dict:
    """Evaluate a saved model on a corpus split; write ``out`` (metrics.json) and ROC PNGs beside it.

    Metrics come from the evaluate modules shipped in :mod:`mmrad.metrics` (loaded by path).
    """
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from mmrad.data.collate import MMRadCollator
    from mmrad.data.corpus import load_corpus
    from mmrad.errors import MMRadError
    from mmrad.metrics import load_metric
    from mmrad.models.modeling import MMRadModel
    from mmrad.training.loop import resolve_mixed_precision

    model = MMRadModel.from_pretrained(model_dir)
    splits, info = load_corpus(corpus_dir)
    if split not in splits or len(splits[split]) == 0:
        raise MMRadError(f"{corpus_dir}: no rows in split {split!r} (have: {', '.join(splits)})")
    names = model.label_names
    loader = DataLoader(
        splits[split],
        batch_size=batch_size,
        collate_fn=MMRadCollator(
            model.tokenizer,
            model.config.preprocess,
            names,
            corpus_label_names=info.label_names,
            max_length=model.config.text.max_length,
        ),
    )
    accelerator = Accelerator(mixed_precision=resolve_mixed_precision("auto"))
    model, loader = accelerator.prepare(model, loader)
    pred = predict(model, loader, accelerator, progress=progress)

    classification = load_metric("multilabel_classification")
    classification.add_batch(predictions=pred.probs.tolist(), references=pred.labels.tolist())
    metrics = {
        "split": split,
        "n": int(len(pred.probs)),
        "classification": classification.compute(names=names, threshold=threshold, n_bootstrap=n_bootstrap),
    }
    if pred.text_embeds is not None and len(pred.text_embeds) > 1:
        retrieval = load_metric("retrieval")
        retrieval.add_batch(predictions=pred.image_embeds.tolist(), references=pred.text_embeds.tolist())
        metrics["retrieval"] = retrieval.compute()
    out = Path(out)
    if accelerator.is_main_process:
        out.parent.mkdir(parents=True, exist_ok=True)
        metrics["roc_plots"] = [p.name for p in roc_plots(pred, names, out.parent)]
        write_json_atomic(out, metrics)
    return metrics


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON to a temporary file and rename it, so a crash never leaves half a file (NaN -> null)."""
    import json
    import math
    import os

    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, np.generic):
            return clean(value.item())
        return value

    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(clean(data), indent=1))
    os.replace(tmp, path)
