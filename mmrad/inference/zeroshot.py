"""Zero-shot, text-queried classification: "is there a left pleural effusion?" for any phrase.

Two scorers:

- ``fusion``: each query (an ensemble of its positive phrasings: embeddings averaged, then normalised) goes through
  the cross-attention decoder; the sigmoid of its presence logit is the probability.
- ``contrastive`` (after CheXzero): the cosine of the global image embedding with the positive and the negative
  prompt ensembles; a softmax over the pair gives the probability (``mode="pairwise"``), or a softmax across the
  queries' positive ensembles (``mode="classes"``, for mutually exclusive classes).

Prompts come from a prompt bank (:mod:`mmrad.config.prompts`): a query that names a finding of the bank uses the
bank's phrasings; any other text is wrapped in the bank's templates ("there is {}", "no {}"). A query that is itself a
negation ("no acute disease") is never templated into "no no acute disease": its negative is the query without the
negation.

Text embeddings are cached (``cache_dir`` keeps them across runs) and image features can be cached on disk
(``cache_images``), so a new query set over the same images costs no image forward pass: see
:mod:`mmrad.inference.feature_cache`.

:func:`run_zero_shot` splits its inputs across the processes of an ``accelerate launch`` (or ``torchrun``) run and
gathers the results in input order on every rank.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmrad.config.prompts import FindingPrompts, PromptBank, load_prompt_bank
from mmrad.errors import MMRadError
from mmrad.files import atomic_file, writing
from mmrad.inference.feature_cache import ImageFeatureCache, TextEmbeddingCache

logger = logging.getLogger(__name__)

SCORERS = ("fusion", "contrastive")
_NEGATION = re.compile(r"^\s*(?:no|not|without|absence of|negative for)\s+(?:evidence of\s+)?", re.IGNORECASE)


def default_bank(model) -> str | Path:
    """The prompt bank saved with the model (``prompt_bank.yaml`` in its folder), else the shipped CheXpert bank."""
    folder = Path(model.name_or_path) if getattr(model, "name_or_path", None) else None
    if folder is not None and (folder / "prompt_bank.yaml").is_file():
        return folder / "prompt_bank.yaml"
    return "chexpert"


def query_prompts(query: str, bank: PromptBank) -> FindingPrompts:
    """Positive and negative phrasings of a query: the bank's when the query names one of its findings, else the
    query in the templates; a negated query keeps its wording and is negated by dropping the negation."""
    for name in bank.names:
        if query.strip().lower() == name.lower():
            return bank.prompts(name)
    text = query.strip()
    if not text:
        raise MMRadError("an empty zero-shot query")
    negated = _NEGATION.match(text)
    if negated:  # "no acute disease": positive as written, negative without the negation
        return FindingPrompts([text], [text[negated.end() :]])
    pos, neg = bank.templates["positive"], bank.templates["negative"]
    return FindingPrompts([t.format(text) for t in pos], [t.format(text) for t in neg])


def _ensemble(embeds: torch.Tensor) -> torch.Tensor:
    """Average normalised prompt embeddings (n, P) -> (P,), normalised again."""
    return F.normalize(embeds.mean(dim=0), dim=-1)


@dataclass
class QuerySet:
    queries: list[str]
    prompts: list[FindingPrompts]


class ZeroShotClassifier:
    """Score free-text queries against images with a trained model.

    Args:
        model: an :class:`~mmrad.models.modeling.MMRadModel` (eval mode is set here).
        scorer: ``"fusion"`` or ``"contrastive"``.
        prompts: a prompt bank or its name/path (default: the model folder's ``prompt_bank.yaml``, else the shipped
            CheXpert bank).
        mode: for the contrastive scorer, ``"pairwise"`` (positive vs negative per query) or ``"classes"``.
        cache_dir: keep text embeddings on disk across runs.
    """

    def __init__(self, model, scorer: str = "fusion", prompts=None, mode: str = "pairwise", cache_dir=None):
        if scorer not in SCORERS:
            raise MMRadError(f"scorer must be one of {SCORERS}, got {scorer!r}")
        if mode not in ("pairwise", "classes"):
            raise MMRadError(f"mode must be 'pairwise' or 'classes', got {mode!r}")
        self.model = model.eval()
        self.scorer, self.mode = scorer, mode
        self.bank = prompts if isinstance(prompts, PromptBank) else load_prompt_bank(prompts or default_bank(model))
        self.text_cache = TextEmbeddingCache(model, cache_dir)

    def query_set(self, queries: list[str]) -> QuerySet:
        return QuerySet(list(queries), [query_prompts(q, self.bank) for q in queries])

    @torch.inference_mode()
    def query_embeddings(self, qs: QuerySet) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q, P) positive and (Q, P) negative ensemble embeddings."""
        texts = [t for p in qs.prompts for t in p.positive + p.negative]
        table = dict(zip(texts, self.text_cache(texts), strict=True))
        pos = torch.stack([_ensemble(torch.stack([table[t] for t in p.positive])) for p in qs.prompts])
        neg = torch.stack([_ensemble(torch.stack([table[t] for t in p.negative])) for p in qs.prompts])
        return pos, neg

    @property
    def feature_kinds(self) -> tuple[str, ...]:
        """The image features the scorer reads: the projected patch tokens (fusion; with the global embedding when
        the model's logits have a global term) or the global embedding (contrastive)."""
        if self.scorer != "fusion":
            return ("image",)
        return ("patches", "image") if self.model.config.fusion.global_term else ("patches",)

    @torch.inference_mode()
    def image_features(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the scorer needs of a batch of images: ``{"image": (B, P)}`` (contrastive, L2-normalised) or
        ``{"patches": (B, N, P)}`` (fusion, projected patch tokens)."""
        pixel_values = pixel_values.to(self.model.device)
        if self.scorer == "fusion":
            image, patches, _ = self.model.encode_vision(pixel_values)
            return {"patches": patches, "image": image}  # the image embedding for a global term (cheap to keep)
        return {"image": self.model.encode_image(pixel_values)}  # no patch projection: the scorer never reads it

    @torch.inference_mode()
    def score_features(
        self, features: dict[str, torch.Tensor], qs: QuerySet | tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """(B, Q) probabilities from :meth:`image_features` output, for a query set or its
        :meth:`query_embeddings` (computed once per run rather than per batch)."""
        pos, neg = qs if isinstance(qs, tuple) else self.query_embeddings(qs)
        if self.scorer == "fusion":
            logits, _ = self.model.decode(features["patches"], pos, features.get("image"))
            return torch.sigmoid(logits.float())
        scale = self.model.logit_scale.exp().clamp(max=100.0)
        image = features["image"]
        if self.mode == "classes":
            return torch.softmax(scale * image @ pos.t(), dim=-1)
        pair = torch.stack([image @ pos.t(), image @ neg.t()], dim=-1) * scale  # (B, Q, 2)
        return torch.softmax(pair.float(), dim=-1)[..., 0]

    def score(self, pixel_values: torch.Tensor, queries: list[str]) -> torch.Tensor:
        """(B, Q) probabilities of ``queries`` for a batch of model inputs."""
        return self.score_features(self.image_features(pixel_values), self.query_set(queries))


@dataclass
class ZeroShotResult:
    ids: list[str]
    queries: list[str]
    probs: np.ndarray  # (N, Q); NaN for images that could not be read
    errors: dict[str, str]  # id -> why it could not be read


def run_zero_shot(
    model,
    inputs: list[str | Path],
    queries: list[str],
    *,
    scorer: str = "fusion",
    prompts=None,
    mode: str = "pairwise",
    batch_size: int = 32,
    split: str = "test",
    num_workers: int = 0,
    cache_dir: str | Path | None = None,
    cache_images: str | Path | None = None,
    progress: bool = True,
) -> ZeroShotResult:
    """Score ``queries`` on every image of ``inputs`` (files, folders, or an ingested corpus folder).

    Under ``accelerate launch`` / ``torchrun`` each process scores a contiguous share of the images and every process
    returns the whole result, rows in input order (the same as one process gives).

    Args:
        cache_dir: keep query embeddings on disk across runs.
        cache_images: keep image features on disk across runs (see
            :class:`~mmrad.inference.feature_cache.ImageFeatureCache`): images already there skip decoding and the
            image tower.
    """
    from tqdm.auto import tqdm

    from mmrad.inference.inputs import collect_inputs, gather_shares, my_share
    from mmrad.processes import process_state

    if not queries:
        raise MMRadError("give at least one query")
    state = process_state()  # a no-op when already set up
    if state.num_processes > 1:
        model.to(state.device)
    items, corpus_split = collect_inputs(inputs, split=split)
    classifier = ZeroShotClassifier(model, scorer, prompts, mode, cache_dir)
    query_embeds = classifier.query_embeddings(classifier.query_set(queries))  # once per run, not per batch
    mine = my_share(state, len(items))
    work = _Share(classifier, query_embeds, [items[i] for i in mine], corpus_split,
                  ImageFeatureCache(model, cache_images) if cache_images else None, len(queries))  # fmt: skip
    show = progress and state.is_main_process and len(mine) >= 2 * batch_size
    with tqdm(total=len(mine), desc="zero-shot", unit="img", disable=not show) as bar:
        todo = _score_cached(work, batch_size, bar)
        _score_images(work, todo, batch_size, num_workers, bar)
    probs, errors = gather_shares(state, items, mine, work.probs, work.errors)
    return ZeroShotResult([i.id for i in items], list(queries), probs, errors)


class _Share:
    """One process's share of a zero-shot run: its items, their scores so far and the errors."""

    def __init__(self, classifier, query_embeds, items, corpus_split, image_cache, num_queries: int):
        self.classifier, self.query_embeds, self.items, self.corpus_split = (
            classifier,
            query_embeds,
            items,
            corpus_split,
        )
        self.image_cache = image_cache
        self.identities = ImageFeatureCache.identities(items, corpus_split) if image_cache else []
        self.probs = np.full((len(items), num_queries), np.nan, dtype=np.float32)
        self.errors: dict[str, str] = {}


def _score_cached(work: _Share, batch_size: int, bar) -> list[int]:
    """Score the items whose image features are in the image cache; returns the positions still to do."""
    todo = list(range(len(work.items)))
    if work.image_cache is None:
        return todo
    kinds = work.classifier.feature_kinds
    cached = {j: work.image_cache.load(work.identities[j], kinds) for j in todo}
    hits = [j for j in todo if cached[j] is not None]
    device = work.classifier.model.device
    for start in range(0, len(hits), batch_size):
        chunk = hits[start : start + batch_size]
        features = {k: torch.stack([cached[j][k] for j in chunk]).to(device) for k in kinds}
        work.probs[chunk] = work.classifier.score_features(features, work.query_embeds).cpu().numpy()
        bar.update(len(chunk))
    return [j for j in todo if cached[j] is None]


def _score_images(work: _Share, todo: list[int], batch_size: int, num_workers: int, bar) -> None:
    """Run the image tower on the items at positions ``todo`` (an unreadable one is an error, never dropped)."""
    from torch.utils.data import DataLoader

    from mmrad.inference.inputs import InferenceImages, collate_inference

    model, kinds = work.classifier.model, work.classifier.feature_kinds
    dataset = InferenceImages([work.items[j] for j in todo], model.config.preprocess, work.corpus_split)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_inference, num_workers=num_workers)
    for batch in loader:
        for index, error in batch["errors"].items():
            work.errors[work.items[todo[index]].id] = error
            logger.warning("%s: skipped (%s)", work.items[todo[index]].id, error)
        if batch["pixel_values"] is not None:
            features = work.classifier.image_features(batch["pixel_values"])
            rows = [todo[i] for i in batch["index"]]
            work.probs[rows] = work.classifier.score_features(features, work.query_embeds).cpu().numpy()
            if work.image_cache is not None:
                for b, j in enumerate(rows):
                    work.image_cache.save(work.identities[j], {k: features[k][b] for k in kinds})
        bar.update(len(batch["index"]) + len(batch["errors"]))


def write_results_csv(result: ZeroShotResult, path: str | Path) -> Path:
    """One row per image (``image``, one probability column per query, ``error``), written atomically."""
    import csv

    path = Path(path)
    with writing(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", *result.queries, "error"])
        for i, image_id in enumerate(result.ids):
            values = ["" if np.isnan(p) else f"{p:.4f}" for p in result.probs[i]]
            writer.writerow([image_id, *values, result.errors.get(image_id, "")])
    return path
