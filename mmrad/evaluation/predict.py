"""Predictions over a data loader and the classification / retrieval metrics computed from them."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

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
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # what ``predict(extra=...)`` collected
    has_report: np.ndarray | None = None  # (N,) bool: rows whose text_embeds come from a report


@torch.inference_mode()
def predict(model, loader, accelerator=None, *, progress: bool = False, extra=None) -> Predictions:
    """Run ``model`` over ``loader`` (gathering across processes when ``accelerator`` is given).

    ``extra(batch, output) -> dict[str, Tensor]`` adds per-sample tensors (first dimension B) that are gathered and
    concatenated into ``Predictions.extra``.
    """
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    probs, labels, images, texts, reports = [], [], [], [], []
    extras: dict[str, list[torch.Tensor]] = {}
    sums: dict[str, float] = {}
    batches = 0
    main = accelerator is None or accelerator.is_main_process
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    for batch in tqdm(loader, desc="evaluate", disable=not (progress and main), leave=False):
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        has_report = batch.get("has_report")
        if has_report is None:
            has_report = torch.ones(len(batch["pixel_values"]), dtype=torch.bool, device=device)
        out = model(
            pixel_values=batch["pixel_values"],
            input_ids=batch.get("input_ids"),
            attention_mask=batch.get("attention_mask"),
            labels=batch.get("labels"),
            report_mask=has_report,
        )
        fields = [torch.sigmoid(out.logits.float()), batch["labels"].float(), out.image_embeds.float(), has_report]
        if out.text_embeds is not None:
            fields.append(out.text_embeds.float())
        more = extra(batch, out) if extra is not None else {}
        if accelerator is not None:
            fields = accelerator.gather_for_metrics(fields)
            more = {k: accelerator.gather_for_metrics(v) for k, v in more.items()}
        for key, value in more.items():
            extras.setdefault(key, []).append(value.cpu())
        probs.append(fields[0].cpu())
        labels.append(fields[1].cpu())
        images.append(fields[2].cpu())
        reports.append(fields[3].cpu())
        if len(fields) > 4:
            texts.append(fields[4].cpu())
        for name, value in (out.loss_terms or {}).items():
            sums[name] = sums.get(name, 0.0) + float(value)
        batches += 1
    model.train(was_training)
    return Predictions(
        probs=torch.cat(probs).numpy(),
        labels=torch.cat(labels).numpy(),
        image_embeds=torch.cat(images).numpy(),
        text_embeds=torch.cat(texts).numpy() if texts else None,
        has_report=torch.cat(reports).numpy().astype(bool),
        losses={k: v / max(batches, 1) for k, v in sums.items()},
        extra={k: torch.cat(v).numpy() for k, v in extras.items()},
    )


def prediction_metrics(pred: Predictions, names: list[str], *, n_bootstrap: int = 0, seed: int = 0) -> dict:
    """``{"classification": ..., "retrieval": ...}`` computed from predictions."""
    from mmrad.evaluation.metrics.functional import multilabel_metrics, retrieval_recall

    out = {"classification": multilabel_metrics(pred.probs, pred.labels, names, n_bootstrap=n_bootstrap, seed=seed)}
    images, texts = paired_embeddings(pred)
    if texts is not None and len(texts) > 1:
        out["retrieval"] = retrieval_recall(images, texts)
    return out


def paired_embeddings(pred: Predictions) -> tuple[np.ndarray, np.ndarray | None]:
    """Image and report embeddings of the rows that have a report (for retrieval metrics)."""
    if pred.text_embeds is None:
        return pred.image_embeds, None
    keep = pred.has_report if pred.has_report is not None else slice(None)
    return pred.image_embeds[keep], pred.text_embeds[keep]
