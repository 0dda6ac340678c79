"""``mmrad evaluate``: a saved model on a corpus split -> ``metrics.json`` and ROC plots.

Blocks of ``metrics.json``:

- ``classification``: per finding and macro AUROC (bootstrap 95% CI), AUPRC and F1, NaN labels masked;
- ``retrieval``: image <-> report recall@1/5/10;
- ``grounding`` (when the corpus has finding masks or boxes): pointing game, CNR and IoU@t of the attention and
  cosine maps of each present finding against its mask;
- ``zero_shot`` (when a prompt bank is given): per-finding AUROC of the fusion and contrastive scorers with those
  prompts (e.g. the phantom's held-out phrasing family).

Every number goes through the evaluate modules shipped in :mod:`mmrad.evaluation.metrics`, loaded by path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmrad.evaluation.metrics import load_metric
from mmrad.evaluation.predict import Predictions, paired_embeddings, predict
from mmrad.files import atomic_file, ensure_writable_dir, write_json_atomic, writing

logger = logging.getLogger(__name__)


def roc_plots(pred: Predictions, names: list[str], folder: Path, title: str = "") -> list[Path]:
    """One ROC-curve PNG per finding with both classes present (uncertain labels left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, name in enumerate(names):
        valid = np.isin(pred.labels[:, k], (0.0, 1.0))
        y, s = pred.labels[valid, k], pred.probs[valid, k]
        if not len(y) or y.min() == y.max():  # no labelled rows, or one class only: no curve
            continue
        fpr, tpr, _ = roc_curve(y, s)
        fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
        ax.plot(fpr, tpr, lw=2, label=f"AUROC {roc_auc_score(y, s):.3f} (n={len(y)}, {int(y.sum())} positive)")
        ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"{title}{name}", xlim=(0, 1),
               ylim=(0, 1.01))  # fmt: skip
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        path = folder / f"roc_{slug(name)}.png"
        try:
            with atomic_file(path) as tmp:  # a failed write never leaves half a PNG
                fig.savefig(tmp, format="png")
        finally:
            plt.close(fig)
        paths.append(path)
    return paths


def slug(name: str) -> str:
    return "".join(c.lower() if c.isalnum() else "_" for c in name).strip("_")


def _grounding_extra(model, size: int, smooth: float = 0.5):
    """``predict`` hook: per sample, the attention and cosine maps of every finding query at the input's size,
    smoothed as :func:`mmrad.inference.grounding.ground` smooths the maps it returns (Gaussian, ``smooth`` patches)."""
    from mmrad.processing.maps import cosine_maps, gaussian_blur

    def extra(batch: dict, out) -> dict[str, torch.Tensor]:
        grid = out.grid
        attention = model.attention_maps(out.query_attentions, grid)  # (B, K, h, w)
        cosine = cosine_maps(out.patch_embeds.float(), out.query_embeds.float(), grid)  # (B, K, h, w)
        up = [
            F.interpolate(m.float(), size=(size, size), mode="bilinear", align_corners=False)
            for m in (attention, cosine)
        ]
        if smooth > 0:
            sigma = smooth * size / max(grid)
            up = [gaussian_blur(m.flatten(0, 1)[:, None], sigma).view_as(m) for m in up]
        return {
            "attention": up[0],
            "cosine": up[1],
            "masks": batch["masks"].float(),
            "mask_valid": batch["mask_valid"],
        }

    return extra


def _zero_shot_extra(classifier, qs, tag: str):
    """``predict`` hook: zero-shot probabilities of both scorers from the forward pass's features."""

    def extra(batch: dict, out) -> dict[str, torch.Tensor]:
        features = {"image": out.image_embeds, "patches": out.patch_embeds}
        scores = {}
        for scorer in ("fusion", "contrastive"):
            classifier.scorer = scorer
            scores[f"{tag}_{scorer}"] = classifier.score_features(features, qs)
        return scores

    return extra


def grounding_block(pred: Predictions, names: list[str]) -> dict:
    """Grounding metrics of present findings (label 1 with a mask) for both map methods, overall and per finding."""
    valid = pred.extra["mask_valid"].astype(bool) & (pred.labels == 1)
    masks = pred.extra["masks"]
    block: dict = {"pairs": int(valid.sum())}
    pairs = list(zip(*np.nonzero(valid), strict=True))
    if not pairs:
        return block
    metric = load_metric("grounding")
    for method in ("attention", "cosine"):
        maps = pred.extra[method]
        overall = metric.compute(
            predictions=[maps[r, c] for r, c in pairs], references=[masks[r, c].astype(np.uint8) for r, c in pairs]
        )
        per_finding = {}
        for k, name in enumerate(names):
            rk = np.nonzero(valid[:, k])[0]
            if len(rk):
                per_finding[name] = metric.compute(
                    predictions=[maps[r, k] for r in rk], references=[masks[r, k].astype(np.uint8) for r in rk]
                )
        block[method] = {**overall, "per_finding": per_finding}
    return block


def evaluate_corpus(
    model_dir: str | Path,
    corpus_dir: str | Path,
    *,
    split: str = "test",
    out: str | Path = "metrics.json",
    batch_size: int = 64,
    n_bootstrap: int = 1000,
    threshold: float = 0.5,
    zero_shot_prompts=None,
    progress: bool = True,
) -> dict:
    """Evaluate a saved model on a corpus split; write ``out`` (metrics.json) and ROC PNGs beside it.

    Args:
        model_dir: a ``save_pretrained`` folder or Hub repo id.
        corpus_dir: an ingested corpus.
        split: the split to evaluate.
        out: the metrics file; ``roc_<finding>.png`` go beside it.
        batch_size: images per forward pass.
        n_bootstrap: resamples for the confidence intervals.
        threshold: F1 decision threshold.
        zero_shot_prompts: a prompt bank (name, path or :class:`~mmrad.config.prompts.PromptBank`), or a list of
            them, for the ``zero_shot`` block (the first) and ``zero_shot_more`` (the others); None leaves them out.
        progress: show a progress bar.
    """
    out = Path(out)
    run = prepare_evaluation(model_dir, corpus_dir, split, batch_size)  # a model or corpus that fails writes nothing
    ensure_writable_dir(out.parent)  # fail before the forward passes, not after
    banks = zero_shot_banks(run, zero_shot_prompts)
    pred = predict(run.model, run.loader, run.accelerator, progress=progress, extra=_hooks(run, banks))
    metrics = {
        "split": split,
        "n": int(len(pred.probs)),
        "classification": classification_block(pred, run.names, threshold, n_bootstrap),
    }
    images, texts = paired_embeddings(pred)  # the rows that have a report
    if texts is not None and len(texts) > 1:
        retrieval = load_metric("retrieval")
        retrieval.add_batch(predictions=images.tolist(), references=texts.tolist())
        metrics["retrieval"] = retrieval.compute()
    if run.annotations is not None:
        metrics["grounding"] = {
            "source": run.annotations,
            # > 0: the decoder's attention was trained toward masks or boxes (model.loss.grounding), so the maps are
            # supervised, not weakly supervised
            "attention_supervision": run.plain.config.loss.grounding,
            **grounding_block(pred, run.names),
        }
    for i, (tag, bank, zs_names) in enumerate(banks):
        block = zero_shot_block(pred, run.names, tag, bank, zs_names, threshold, n_bootstrap)
        if i == 0:
            metrics["zero_shot"] = block
        else:  # further banks (e.g. a stricter held-out family) sit beside the first
            metrics.setdefault("zero_shot_more", {})[bank.name] = block
    if run.accelerator.is_main_process:
        metrics["roc_plots"] = [p.name for p in roc_plots(pred, run.names, out.parent)]
        write_json_atomic(out, metrics)
    return metrics


@dataclass
class Evaluation:
    """A saved model, prepared with its loader over one corpus split."""

    model: torch.nn.Module  # prepared
    plain: torch.nn.Module  # unwrapped
    loader: object
    accelerator: object
    names: list[str]
    annotations: str | None  # "masks", "boxes" or None: what the grounding block scores against


def prepare_evaluation(model_dir, corpus_dir, split: str, batch_size: int) -> Evaluation:
    """Load the model and the split; the collator returns masks (or boxes as masks) when the split has them."""
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from mmrad.corpus.format import annotation_kind, load_corpus
    from mmrad.errors import MMRadError
    from mmrad.models.modeling import MMRadModel
    from mmrad.processes import resolve_mixed_precision
    from mmrad.processing.collate import MMRadCollator

    model = MMRadModel.from_pretrained(model_dir).eval()
    splits, info = load_corpus(corpus_dir)
    if split not in splits or len(splits[split]) == 0:
        raise MMRadError(f"{corpus_dir}: no rows in split {split!r} (have: {', '.join(splits)})")
    rows = splits[split]
    annotations = annotation_kind(rows)
    collate = MMRadCollator(model.tokenizer, model.config.preprocess, model.label_names,
                            corpus_label_names=info.label_names, max_length=model.config.text.max_length,
                            return_masks=annotations == "masks", boxes_as_masks=annotations == "boxes")  # fmt: skip
    loader = DataLoader(collate.rows(rows), batch_size=batch_size, collate_fn=collate)
    accelerator = Accelerator(mixed_precision=resolve_mixed_precision("auto"))
    prepared, loader = accelerator.prepare(model, loader)
    plain = accelerator.unwrap_model(prepared)
    return Evaluation(prepared, plain, loader, accelerator, list(plain.label_names), annotations)


def zero_shot_banks(run: Evaluation, prompts) -> list[tuple[str, object, list[str]]]:
    """``(tag, bank, findings)`` for each prompt bank given (none when ``prompts`` is None)."""
    if prompts is None:
        return []
    from mmrad.config.prompts import PromptBank, load_prompt_bank
    from mmrad.errors import MMRadError

    banks = []
    for i, item in enumerate(prompts if isinstance(prompts, list | tuple) else [prompts]):
        bank = item if isinstance(item, PromptBank) else load_prompt_bank(item)
        names = [n for n in bank.names if n in run.names]
        if not names:
            raise MMRadError(f"prompt bank {bank.name!r} has none of the model's findings {run.names}")
        banks.append((f"zero_shot{i}", bank, names))
    return banks


def _hooks(run: Evaluation, banks):
    """The ``predict`` hook collecting grounding maps and zero-shot scores, or None when there is nothing to add."""
    from mmrad.inference.zeroshot import ZeroShotClassifier

    hooks = []
    if run.annotations is not None:
        hooks.append(_grounding_extra(run.plain, run.plain.config.preprocess.image_size))
    for tag, bank, names in banks:
        classifier = ZeroShotClassifier(run.plain, "fusion", bank)
        hooks.append(_zero_shot_extra(classifier, classifier.query_set(names), tag))
    if not hooks:
        return None
    return lambda batch, output: {k: v for hook in hooks for k, v in hook(batch, output).items()}


def classification_block(pred: Predictions, names: list[str], threshold: float, n_bootstrap: int) -> dict:
    metric = load_metric("multilabel_classification")
    metric.add_batch(predictions=pred.probs.tolist(), references=pred.labels.tolist())
    return metric.compute(names=names, threshold=threshold, n_bootstrap=n_bootstrap)


def zero_shot_block(pred: Predictions, names, tag, bank, zs_names, threshold, n_bootstrap) -> dict:
    """Per-finding AUROC of both zero-shot scorers with one prompt bank."""
    columns = [names.index(n) for n in zs_names]
    block = {"prompts": bank.name, "findings": zs_names}
    for scorer in ("fusion", "contrastive"):
        metric = load_metric("multilabel_classification")
        metric.add_batch(predictions=pred.extra[f"{tag}_{scorer}"].tolist(),
                         references=pred.labels[:, columns].tolist())  # fmt: skip
        block[scorer] = metric.compute(names=zs_names, threshold=threshold, n_bootstrap=n_bootstrap)
    return block
