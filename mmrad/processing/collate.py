"""The collator: corpus rows -> the batch dict of the model (``pixel_values``, ``input_ids``, ``attention_mask``,
``has_report``, ``labels``, and for evaluation ``boxes`` / ``masks``).

Use it as a DataLoader's ``collate_fn`` over a corpus split (the images are decoded in the workers)::

    splits, info = load_corpus("corpus/")
    collate = MMRadCollator(tokenizer, cfg.model.preprocess, label_names, corpus_label_names=info.label_names,
                            train=True)
    train = collate.rows(splits["train"])  # only the columns the collator reads, images left encoded
    loader = DataLoader(train, batch_size=32, shuffle=True, collate_fn=collate, num_workers=2)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mmrad.config.schema import PreprocessConfig
from mmrad.processing.image_processor import ImageProcessor
from mmrad.processing.transforms import (
    AugmentConfig,
    encoded_images,
    fit_to_square,
    random_affine,
    to_float_array,
    transform_boxes,
    warp,
)

logger = logging.getLogger(__name__)

TEXT_FIELDS = ("report", "findings", "impression", "findings_impression")


class MMRadCollator:
    """Turn corpus rows into a model batch.

    Args:
        tokenizer: a Hugging Face tokenizer (called with padding/truncation, ``return_tensors="pt"``), or a callable
            returning an id tensor (open_clip tokenizers; the attention mask is then ``ids != 0``).
        preprocess: the model's input size, mean/std, channels and resize mode (pad, crop or squash).
        label_names: the findings the model predicts; ``labels`` columns follow this order.
        corpus_label_names: the corpus's label order (``CorpusInfo.label_names``); default: ``label_names``.
            Findings missing from the corpus are NaN.
        text_field: ``report``, ``findings``, ``impression`` or ``findings_impression``; an empty section falls
            back to the full report.
        train: apply augmentation (random affine and intensity jitter; never a left/right flip).
        max_length: tokens per text.
        return_boxes: add ``boxes``, a list per image of ``{"label", "x", "y", "w", "h"}`` in input pixels.
        return_masks: add ``masks`` (B, K, S, S) float 0/1 per finding of ``label_names`` and ``mask_valid`` (B, K).
        boxes_as_masks: add ``masks`` / ``mask_valid`` drawn from the rows' boxes (after the fit and any
            augmentation; :func:`boxes_to_masks`), for a corpus with boxes and no masks.
        mask_size: the side of ``masks`` (default: the input size, binary). Smaller, each mask pixel holds the share
            of its area that the finding covers: the training loader asks for a multiple of the token grid, enough
            for the grounding loss (which pools the masks to the grid) at a fraction of the memory and copying.
        augment: augmentation ranges (default :class:`AugmentConfig`).
        generator: a torch generator for reproducible augmentation (default: torch's global RNG, which DataLoader
            seeds per worker).
    """

    def __init__(
        self,
        tokenizer,
        preprocess: PreprocessConfig,
        label_names: Sequence[str],
        *,
        corpus_label_names: Sequence[str] | None = None,
        text_field: str = "findings_impression",
        train: bool = False,
        max_length: int = 128,
        return_boxes: bool = False,
        return_masks: bool = False,
        boxes_as_masks: bool = False,
        augment: AugmentConfig | None = None,
        generator: torch.Generator | None = None,
        mask_size: int | None = None,
    ):
        if text_field not in TEXT_FIELDS:
            raise ValueError(f"text_field must be one of {TEXT_FIELDS}, got {text_field!r}")
        if return_masks and boxes_as_masks:
            raise ValueError("return_masks and boxes_as_masks both fill 'masks': choose one")
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.processor = ImageProcessor(preprocess)  # the fit and normalisation every inference path uses too
        self.label_names = list(label_names)
        corpus_names = list(corpus_label_names) if corpus_label_names is not None else self.label_names
        missing = [n for n in self.label_names if n not in corpus_names]
        if missing:
            logger.warning("the corpus has no labels for %s: they are NaN (unknown) in every batch", missing)
        self._columns = np.array([corpus_names.index(n) if n in corpus_names else -1 for n in self.label_names])
        self.text_field = text_field
        self.train = train
        self.max_length = max_length
        self.return_boxes = return_boxes
        self.return_masks = return_masks
        self.boxes_as_masks = boxes_as_masks
        self.augment = augment or AugmentConfig()
        self.generator = generator
        self.mask_size = mask_size

    @property
    def columns(self) -> list[str]:
        """The corpus columns this collator reads: ``split.select_columns(collate.columns)`` keeps the loader from
        decoding the others (mask PNGs, for one)."""
        text = ["findings", "impression", "report"] if self.text_field == "findings_impression" else [self.text_field]
        if "report" not in text:
            text.append("report")  # the fallback for an empty section
        extra = ["boxes"] * (self.return_boxes or self.boxes_as_masks) + ["masks"] * self.return_masks
        return ["image", *text, "labels", *extra]

    def rows(self, split):
        """``split`` with only :attr:`columns`, and its images left as PNG bytes: the collator reads the cache's
        unfiltered PNGs with a copy (:mod:`mmrad.io.png`), faster than ``datasets`` decodes them through PIL."""
        return encoded_images(split.select_columns(self.columns))

    def text(self, row: dict) -> str:
        """The text of a row that the collator tokenises."""
        if self.text_field == "findings_impression":
            text = " ".join(t for t in (row.get("findings"), row.get("impression")) if t)
        else:
            text = row.get(self.text_field) or ""
        return text or row.get("report") or ""

    def _labels(self, rows: list[dict]) -> torch.Tensor:
        out = np.full((len(rows), len(self.label_names)), np.nan, dtype=np.float32)
        have = self._columns >= 0
        for i, row in enumerate(rows):
            values = np.asarray(row["labels"], dtype=np.float32)
            out[i, have] = values[self._columns[have]]
        return torch.from_numpy(out)

    def _tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        try:
            encoded = self.tokenizer(
                texts, padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt"
            )
        except TypeError:  # open_clip-style tokenizers: tokenizer(texts) -> (B, context_length) ids
            encoded = self.tokenizer(texts)
        if isinstance(encoded, torch.Tensor):
            return {"input_ids": encoded, "attention_mask": (encoded != 0).long()}
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def _generator(self, row: dict) -> torch.Generator | None:
        """A row's own generator when it carries ``_augment_seed`` (set by the training loader, so that a resumed
        run repeats the augmentations of an uninterrupted one), else the collator's."""
        seed = row.get("_augment_seed")
        return self.generator if seed is None else torch.Generator().manual_seed(int(seed))

    def _image(self, row: dict, generator: torch.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(1 or C, S, S) float32 in [0, 1] (grey stays one channel until normalisation) and the matrix from cached
        pixels to input pixels (boxes and masks are in cached pixels)."""
        cached = ImageProcessor.cached(row)
        return self.processor.prepare(cached, jitter=self.augment if self.train else None, generator=generator)

    def _masks(self, row: dict) -> tuple[np.ndarray, np.ndarray]:
        size = self.preprocess.image_size
        out = np.zeros((len(self.label_names), size, size), dtype=np.float32)
        valid = np.zeros(len(self.label_names), dtype=bool)
        for item in row.get("masks") or []:
            if item["label"] not in self.label_names:
                continue
            k = self.label_names.index(item["label"])
            mask = to_float_array(item["mask"])
            mask = mask if mask.ndim == 2 else mask.mean(-1)
            # the same fit as the image, thresholded so that the mask stays binary
            fitted, _ = fit_to_square(mask, size, self.preprocess.resize)
            out[k] = np.maximum(out[k], fitted[0] >= 0.5)
            valid[k] = True
        return out, valid

    def __call__(self, rows: list[dict]) -> dict:
        images, matrices, masks, valid = [], [], [], []
        generators = [self._generator(row) for row in rows]
        for row, generator in zip(rows, generators, strict=True):
            image, matrix = self._image(row, generator)
            images.append(image)
            matrices.append(matrix)
            if self.return_masks:
                m, v = self._masks(row)
                masks.append(m)
                valid.append(v)
        # numpy for the per-batch copies: torch's intra-op threads make small copies slow on busy CPUs
        if len({im.shape[0] for im in images}) > 1:  # grey and colour mixed: repeat the grey ones
            images = [np.broadcast_to(im, (self.preprocess.channels, *im.shape[1:])) for im in images]
        pixels = np.stack(images)  # (B, 1 or C, S, S) in [0, 1]
        size = self.preprocess.image_size
        # boxes are clipped to the fitted image before any augmentation moves them
        boxes = [transform_boxes(r.get("boxes") or [], m, size) for r, m in zip(rows, matrices, strict=True)]
        if self.train:
            augment = np.stack([random_affine(size, self.augment, g) for g in generators])
            pixels = warp(torch.from_numpy(pixels), augment).numpy()
            boxes = [transform_boxes(b, a, size) for b, a in zip(boxes, augment, strict=True)]
            if self.return_masks:
                masks = list(warp(torch.from_numpy(np.stack(masks)), augment, mode="nearest").numpy())
        if self.return_masks and self.mask_size not in (None, size):
            masks = list(F.adaptive_avg_pool2d(torch.from_numpy(np.stack(masks)), self.mask_size).numpy())
        batch = {"pixel_values": torch.from_numpy(self.processor.normalize(pixels))}
        texts = [self.text(r) for r in rows]
        batch.update(self._tokenize(texts))
        batch["has_report"] = torch.tensor([bool(t) for t in texts])  # rows without a report: no report losses
        batch["labels"] = self._labels(rows)
        if all("_index" in r for r in rows):  # the training loader's dataset positions (for cached text features)
            batch["row_index"] = torch.tensor([int(r["_index"]) for r in rows])
        if self.return_boxes:
            batch["boxes"] = boxes
        if self.return_masks:
            batch["masks"] = torch.from_numpy(np.stack(masks))
            batch["mask_valid"] = torch.from_numpy(np.stack(valid))
        if self.boxes_as_masks:
            batch["masks"], batch["mask_valid"] = boxes_to_masks(boxes, self.label_names, size, self.mask_size)
        return batch


def boxes_to_masks(
    boxes: list[list[dict]], names: list[str], size: int, mask_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes in input pixels (per image, ``{"label", "x", "y", "w", "h"}``) as (B, K, M, M) masks and (B, K)
    validity; labels match finding names ignoring case, spaces and underscores.

    At the input size (``mask_size`` None or ``size``) a pixel a box touches is 1; at a smaller ``mask_size`` each
    pixel holds the share of its area the finding's boxes cover (the largest where boxes overlap)."""
    key = {n.lower().replace("_", " ").replace(" ", ""): k for k, n in enumerate(names)}
    side = mask_size or size
    scale = side / size
    cells = torch.arange(side, dtype=torch.float32)
    masks = torch.zeros(len(boxes), len(names), side, side)
    valid = torch.zeros(len(boxes), len(names), dtype=torch.bool)
    for b, image_boxes in enumerate(boxes):
        for box in image_boxes:
            k = key.get(str(box["label"]).lower().replace("_", " ").replace(" ", ""))
            if k is None:
                continue
            x0, y0 = box["x"] * scale, box["y"] * scale
            x1, y1 = x0 + box["w"] * scale, y0 + box["h"] * scale
            cols = (torch.clamp(cells + 1, max=x1) - torch.clamp(cells, min=x0)).clamp(min=0, max=1)  # (M,) overlap
            rows = (torch.clamp(cells + 1, max=y1) - torch.clamp(cells, min=y0)).clamp(min=0, max=1)
            masks[b, k] = torch.maximum(masks[b, k], rows[:, None] * cols[None, :])
            valid[b, k] = True
    if side == size:
        masks = (masks > 0).float()
    return masks, valid
