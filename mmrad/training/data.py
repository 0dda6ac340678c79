"""Training and evaluation data loaders over an ingested corpus.

Each epoch's order is a permutation seeded by ``(seed, epoch)`` and every row carries ``_augment_seed`` derived from
``(seed, epoch, index)``, so a run resumed mid-epoch sees exactly the batches, and the augmentations, of an
uninterrupted one, whatever the number of DataLoader workers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

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
        epoch = self.sampler.epoch if self.sampler is not None else 0
        row["_augment_seed"] = int(np.random.SeedSequence([self.seed, epoch, int(index)]).generate_state(1)[0])
        return row


def build_dataloaders(cfg, model, *, splits=None, info=None, eval_split: str = "validation"):
    """``(train_loader, eval_loader, train_sampler, label_names)`` for ``cfg.data.corpus`` and ``model``.

    The loaders are not yet prepared by Accelerate. ``eval_loader`` is None when the split is empty.
    """
    from mmrad.data.collate import MMRadCollator
    from mmrad.data.corpus import load_corpus
    from mmrad.errors import MMRadError

    if splits is None:
        if not cfg.data.corpus:
            raise MMRadError("no corpus: set data.corpus (or pass --corpus DIR)")
        splits, info = load_corpus(cfg.data.corpus)
    if "train" not in splits or len(splits["train"]) == 0:
        raise MMRadError(f"{cfg.data.corpus}: the train split is empty")
    common = dict(
        tokenizer=model.tokenizer,
        preprocess=model.config.preprocess,
        label_names=model.label_names,
        corpus_label_names=info.label_names,
        text_field=cfg.data.text_field,
        max_length=model.config.text.max_length,
    )
    sampler = EpochSampler(len(splits["train"]), cfg.train.seed)
    train_loader = DataLoader(
        SeededRows(splits["train"], cfg.train.seed, sampler),
        batch_size=cfg.data.batch_size,
        sampler=sampler,
        collate_fn=MMRadCollator(train=cfg.data.augment, **common),
        num_workers=cfg.data.num_workers,
        drop_last=len(splits["train"]) >= 2 * cfg.data.batch_size,  # a 1-row last batch gives no contrastive signal
        generator=torch.Generator().manual_seed(cfg.train.seed),  # workers' seeds must not draw from the global RNG
        persistent_workers=False,
    )
    eval_loader = None
    if eval_split in splits and len(splits[eval_split]) > 0:
        eval_loader = DataLoader(
            splits[eval_split],
            batch_size=cfg.data.eval_batch_size,
            shuffle=False,
            collate_fn=MMRadCollator(train=False, **common),
            num_workers=cfg.data.num_workers,
        )
    else:
        logger.warning("the corpus has no %s rows: no evaluation during training", eval_split)
    return train_loader, eval_loader, sampler
