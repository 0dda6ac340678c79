"""Training and evaluation data loaders over an ingested corpus.

Each epoch's order is a permutation seeded by ``(seed, epoch)`` and every row carries ``_augment_seed`` derived from
``(seed, epoch, index)``, so a run resumed mid-epoch sees exactly the batches, and the augmentations, of an
uninterrupted one, whatever the number of DataLoader workers.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

logger = logging.getLogger(__name__)


class EpochSampler(Sampler[int]):
    """A random permutation per epoch, a pure function of ``(seed, epoch)``."""

    def __init__(self, size: int, seed: int, shuffle: bool = True):
        self.size, self.seed, self.shuffle, self.epoch = size, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.size))
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


class SeededRows(Dataset):
    """Rows of a ``datasets.Dataset`` with an ``_augment_seed`` that depends only on (seed, epoch, index)."""

    def __init__(self, rows, seed: int, sampler: EpochSampler | None = None):
        self.rows, self.seed, self.sampler = rows, seed, sampler

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        row = dict(self.rows[int(index)])
        row["_index"] = int(index)
        epoch = self.sampler.epoch if self.sampler is not None else 0
        row["_augment_seed"] = int(np.random.SeedSequence([self.seed, epoch, int(index)]).generate_state(1)[0])
        return row


@dataclass
class TrainData:
    train_loader: DataLoader
    eval_loader: DataLoader | None
    sampler: EpochSampler
    text_cache: ReportFeatures | None = None  # the frozen text tower's features of every training report
    summary: dict | None = None  # counts and label prevalences of the training corpus, for the model card


class ReportFeatures:
    """The text tower's output for every row of a split, computed once: a frozen text tower (a locked pretrained
    encoder) then costs nothing per step. Rows with the same text share one forward pass."""

    def __init__(self, model, rows, collator, batch_size: int = 64, progress: bool = True):
        from tqdm.auto import tqdm

        texts = [collator.text(r) for r in rows.select_columns([c for c in ("report", "findings", "impression")
                                                                 if c in rows.column_names])]  # fmt: skip
        unique = list(dict.fromkeys(texts))
        where = {t: i for i, t in enumerate(unique)}
        self.row_to_text = torch.tensor([where[t] for t in texts])
        self.with_tokens = model.config.loss.local > 0
        pooled, tokens, masks = [], [], []
        was_training = model.text.training
        model.text.eval()
        with torch.no_grad():
            for i in tqdm(range(0, len(unique), batch_size), desc="report features", disable=not progress,
                          leave=False):  # fmt: skip
                enc = model.tokenize(unique[i : i + batch_size])
                p, t, m = model.text_features(enc["input_ids"], enc["attention_mask"])
                m = m.bool() & ~torch.isin(enc["input_ids"], model.special_token_ids)  # the local loss's words
                pooled.append(p.cpu())
                if self.with_tokens:  # padded to one length for storage
                    pad = model.config.text.max_length - t.shape[1]
                    tokens.append(torch.nn.functional.pad(t.cpu(), (0, 0, 0, pad)))
                    masks.append(torch.nn.functional.pad(m.cpu(), (0, pad)))
        model.text.train(was_training)
        self.pooled = torch.cat(pooled)
        self.tokens = torch.cat(tokens) if tokens else None
        self.masks = torch.cat(masks) if masks else None
        logger.info("cached text features of %d reports (%d distinct)", len(texts), len(unique))

    def take(self, row_index: torch.Tensor, device) -> tuple:
        """``text_features`` for a batch of dataset rows, as :meth:`MMRadModel.forward` takes them (the mask already
        leaves out special tokens, so ``input_ids`` are not needed)."""
        idx = self.row_to_text[row_index.cpu()]
        pooled = self.pooled[idx].to(device)
        if self.tokens is None:  # the local loss is off: token states are not used
            return pooled, None, None
        return pooled, self.tokens[idx].to(device), self.masks[idx].to(device)


def grounding_mask_size(model, at_least: int = 64) -> int:
    """The side of the masks the grounding loss is given: the smallest multiple of the token grid that is at least
    ``at_least`` (or the input size), so that pooling them to the grid gives each cell's covered share exactly."""
    side = max(model.vision.grid())
    return min(side * math.ceil(at_least / side), model.config.preprocess.image_size)


def loader_options(num_workers: int | None) -> dict:
    """DataLoader keywords for ``data.num_workers`` (None = the default: one worker per core the training step leaves
    free, at least 1 so that decoding and augmentation overlap the step, at most 4). Batches are pinned on CUDA
    machines. Workers are not persistent: each holds a copy of the sampler, whose epoch seeds the augmentations, so
    they restart every epoch to see ``set_epoch``."""
    if num_workers is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        num_workers = max(1, min(4, cores - 1))
    return {"num_workers": num_workers, "pin_memory": torch.cuda.is_available(), "persistent_workers": False}


def losses_read_reports(loss) -> bool:
    """Whether a step needs the reports: only the contrastive and local losses read them."""
    return loss.contrastive > 0 or loss.local > 0


def has_reports(rows, info=None) -> bool:
    """Whether any row of a corpus split has report text (``CorpusInfo.reports`` when the corpus recorded it)."""
    if info is not None and getattr(info, "reports", None) == 0:
        return False
    texts = rows.data.column("report") if "report" in rows.column_names else []
    return any(t.is_valid and t.as_py() for t in texts)


def turn_off_report_losses(model, corpus) -> None:
    """A corpus without report text (image labels and boxes only): the contrastive and local losses have nothing to
    read, so they are switched off in the model's config (which is saved with it) and its temperature is frozen."""
    import dataclasses

    loss = model.config.loss
    logger.info("%s has no report text: the report losses (contrastive %s, local %s) are off; the classification and "
                "grounding losses train", corpus, loss.contrastive, loss.local)  # fmt: skip
    model.config.loss = dataclasses.replace(loss, contrastive=0.0, local=0.0)
    model.logit_scale.requires_grad_(False)


def adopt_corpus_decoding(model, info, corpus) -> None:
    """Record the corpus's decoding choices (DICOM window, MONOCHROME1 inversion, image cache size) in the model's
    preprocessing, so that it decodes new images exactly as the images it learns from were decoded. A model that
    was trained before (``train.init_from``) with other choices is warned about loudly: it now learns from images
    decoded differently from those it was trained on."""
    import dataclasses

    pre = model.config.preprocess
    wanted = {"decode_size": info.image_size}
    if getattr(info, "window", None) is not None:
        wanted.update(window=info.window, invert_monochrome1=info.invert_monochrome1)
    else:
        logger.warning("%s does not record its DICOM window (ingested by an older mmrad): the model keeps window=%s; "
                       "re-ingest to record it", corpus, pre.window)  # fmt: skip
    changed = {k: (getattr(pre, k), v) for k, v in wanted.items() if getattr(pre, k) != v}
    trained = [k for k in ("window", "invert_monochrome1") if k in changed and model.name_or_path]
    if trained:
        logger.warning("PREPROCESSING CHANGES: %s was trained on images decoded with %s, but %s was decoded with %s; "
                       "the model now follows the corpus", model.name_or_path,
                       {k: changed[k][0] for k in trained}, corpus, {k: changed[k][1] for k in trained})  # fmt: skip
    if changed:
        logger.info("model.preprocess follows the corpus's decoding: %s", {k: v for k, (_, v) in changed.items()})
        model.config.preprocess = dataclasses.replace(pre, **{k: v for k, (_, v) in changed.items()})


def text_tower_frozen(model) -> bool:
    return not any(p.requires_grad for p in model.text.parameters())


def build_dataloaders(cfg, model, *, splits=None, info=None, eval_split: str = "validation") -> TrainData:
    """The training and evaluation loaders for ``cfg.data.corpus`` and ``model`` (not yet prepared by Accelerate);
    the evaluation loader is None when the split is empty. With a frozen text tower and a loss that reads the
    reports, their features are computed once here."""
    from mmrad.corpus.format import annotation_kind, load_corpus
    from mmrad.errors import MMRadError
    from mmrad.processing.collate import MMRadCollator

    if splits is None:
        if not cfg.data.corpus:
            raise MMRadError("no corpus: set data.corpus (or pass --corpus DIR)")
        splits, info = load_corpus(cfg.data.corpus)
    if "train" not in splits or len(splits["train"]) == 0:
        raise MMRadError(f"{cfg.data.corpus}: the train split is empty")
    if losses_read_reports(model.config.loss) and not has_reports(splits["train"], info):
        turn_off_report_losses(model, cfg.data.corpus)
    adopt_corpus_decoding(model, info, cfg.data.corpus)
    common = dict(
        tokenizer=model.tokenizer,
        preprocess=model.config.preprocess,
        label_names=model.label_names,
        corpus_label_names=info.label_names,
        text_field=cfg.data.text_field,
        max_length=model.config.text.max_length,
    )
    sampler = EpochSampler(len(splits["train"]), cfg.train.seed)
    annotations = None
    if model.config.loss.grounding > 0:
        annotations = annotation_kind(splits["train"])
        if annotations is None:
            raise MMRadError(
                f"{cfg.data.corpus}: model.loss.grounding > 0 needs finding masks or boxes, and no train row has any"
            )
    train_collator = MMRadCollator(
        train=cfg.data.augment, return_masks=annotations == "masks", boxes_as_masks=annotations == "boxes",
        mask_size=grounding_mask_size(model) if annotations else None, **common,
    )  # fmt: skip
    train_rows = splits["train"]
    train_loader = DataLoader(
        SeededRows(train_collator.rows(train_rows), cfg.train.seed, sampler),
        batch_size=cfg.data.batch_size,
        sampler=sampler,
        collate_fn=train_collator,
        drop_last=len(splits["train"]) >= 2 * cfg.data.batch_size,  # a 1-row last batch gives no contrastive signal
        generator=torch.Generator().manual_seed(cfg.train.seed),  # workers' seeds must not draw from the global RNG
        **loader_options(cfg.data.num_workers),
    )
    eval_loader = None
    if eval_split in splits and len(splits[eval_split]) > 0:
        eval_collator = MMRadCollator(train=False, **common)
        eval_loader = DataLoader(
            eval_collator.rows(splits[eval_split]),
            batch_size=cfg.data.eval_batch_size,
            shuffle=False,
            collate_fn=eval_collator,
            **loader_options(cfg.data.num_workers),
        )
    else:
        logger.warning("the corpus has no %s rows: no evaluation during training", eval_split)
    frozen = losses_read_reports(model.config.loss) and text_tower_frozen(model)
    cache = ReportFeatures(model, train_rows, train_collator) if frozen else None
    return TrainData(train_loader, eval_loader, sampler, cache, data_summary(info, train_rows, model.label_names))


def data_summary(info, train_rows, names: list[str]) -> dict:
    """What the model card says about the training data: split sizes, label sources, de-identification, decoding,
    and per finding the train split's positive / negative / uncertain / not-mentioned counts. No identifiers."""
    from mmrad.corpus.format import corpus_label_matrix

    labels = corpus_label_matrix(train_rows)
    prevalence = {}
    for name in names:
        column = labels[:, info.label_names.index(name)] if name in info.label_names and labels.size else None
        if column is None:
            prevalence[name] = {"positive": 0, "negative": 0, "uncertain": 0, "unknown": len(train_rows)}
            continue
        counts = {
            "positive": column == 1,
            "negative": column == 0,
            "uncertain": column == -1,
            "unknown": np.isnan(column),
        }
        prevalence[name] = {k: int(v.sum()) for k, v in counts.items()}
    keys = ("num_rows", "label_sources", "deidentified", "reports", "image_size", "window", "invert_monochrome1")
    return {"corpus": {**{k: getattr(info, k, None) for k in keys}, "prevalence": prevalence}}
