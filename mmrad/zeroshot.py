"""Zero-shot, text-queried classification: "is there a left pleural effusion?" for any phrase.

Two scorers:

- ``fusion``: each query (an ensemble of its positive phrasings: embeddings averaged, then normalised) goes through
  the cross-attention decoder; the sigmoid of its presence logit is the probability.
- ``contrastive`` (after CheXzero): the cosine of the global image embedding with the positive and the negative
  prompt ensembles; a softmax over the pair gives the probability (``mode="pairwise"``), or a softmax across the
  queries' positive ensembles (``mode="classes"``, for mutually exclusive classes).

Prompts come from a prompt bank (:mod:`mmrad.prompts`): a query that names a finding of the bank uses the bank's
phrasings; any other text is wrapped in the bank's templates ("there is {}", "no {}"). A query that is itself a
negation ("no acute disease") is never templated into "no no acute disease": its negative is the query without the
negation.

Text embeddings are cached, keyed by a hash of the text side's weights and the text: a new query set over the same
images costs only the new texts' forward passes, a repeated one none (``cache_dir`` keeps them across runs).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmrad.errors import MMRadError
from mmrad.prompts import FindingPrompts, PromptBank, load_prompt_bank

logger = logging.getLogger(__name__)

SCORERS = ("fusion", "contrastive")
_NEGATION = re.compile(r"^\s*(?:no|not|without|absence of|negative for)\s+(?:evidence of\s+)?", re.IGNORECASE)


def weights_key(modules) -> str:
    """A stable hash of the weights of ``modules`` (an nn.Module or a list of them): the cache key of their outputs."""
    digest = hashlib.sha256()
    for module in modules if isinstance(modules, list | tuple) else [modules]:
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


class TextEmbeddingCache:
    """Query embeddings of one model, cached by (text-side weights, text) in memory and optionally on disk."""

    def __init__(self, model, cache_dir: str | Path | None = None):
        self.model = model
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._memory: dict[tuple[str, str], torch.Tensor] = {}
        self._key: str | None = None
        self._fingerprint = None
        self.computed = 0  # texts that went through the text tower (for tests and benchmarks)

    def key(self) -> str:
        # in-place updates (optimizer steps, load_state_dict) bump a tensor's version; moves change its pointer
        params = [*self.model.text.parameters(), *self.model.text_proj.parameters()]
        fingerprint = tuple((p.data_ptr(), p._version, p.dtype) for p in params)
        if fingerprint != self._fingerprint:  # weights changed (or first use): hash them again
            self._key = weights_key([self.model.text, self.model.text_proj])
            self._fingerprint = fingerprint
        return self._key

    def _path(self, key: str, text: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / key / f"{hashlib.sha256(text.encode('utf-8')).hexdigest()[:24]}.npy"

    @torch.inference_mode()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        """(Q, P) L2-normalised embeddings of ``texts``."""
        key = self.key()
        missing = []
        for text in dict.fromkeys(texts):
            if (key, text) in self._memory:
                continue
            path = self._path(key, text)
            if path is not None and path.is_file():
                self._memory[(key, text)] = torch.from_numpy(np.load(path))
            else:
                missing.append(text)
        if missing:
            embeds = self.model.embed_texts(missing).float().cpu()
            self.computed += len(missing)
            for text, embed in zip(missing, embeds, strict=True):
                self._memory[(key, text)] = embed
                path = self._path(key, text)
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_suffix(".tmp.npy")
                    np.save(tmp, embed.numpy())
                    tmp.replace(path)
        return torch.stack([self._memory[(key, t)] for t in texts]).to(self.model.device)


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

    def query_embeddings(self, qs: QuerySet) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q, P) positive and (Q, P) negative ensemble embeddings."""
        texts = [t for p in qs.prompts for t in p.positive + p.negative]
        table = dict(zip(texts, self.text_cache(texts), strict=True))
        pos = torch.stack([_ensemble(torch.stack([table[t] for t in p.positive])) for p in qs.prompts])
        neg = torch.stack([_ensemble(torch.stack([table[t] for t in p.negative])) for p in qs.prompts])
        return pos, neg

    @torch.inference_mode()
    def image_features(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the scorers need of a batch of images: the global embedding and the projected patch tokens."""
        image, patches, grid = self.model._image(pixel_values.to(self.model.device))
        return {"image": image, "patches": patches}

    @torch.inference_mode()
    def score_features(self, features: dict[str, torch.Tensor], qs: QuerySet) -> torch.Tensor:
        """(B, Q) probabilities from :meth:`image_features` output."""
        pos, neg = self.query_embeddings(qs)
        if self.scorer == "fusion":
            logits, _ = self.model.decode(features["patches"], pos)
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
    progress: bool = True,
) -> ZeroShotResult:
    """Score ``queries`` on every image of ``inputs`` (files, folders, or an ingested corpus folder)."""
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from mmrad.data.inputs import InferenceImages, collate_inference, collect_inputs

    if not queries:
        raise MMRadError("give at least one query")
    items, corpus_split = collect_inputs(inputs, split=split)
    classifier = ZeroShotClassifier(model, scorer, prompts, mode, cache_dir)
    qs = classifier.query_set(queries)
    dataset = InferenceImages(items, model.config.preprocess, corpus_split)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_inference, num_workers=num_workers)
    probs = np.full((len(items), len(queries)), np.nan, dtype=np.float32)
    errors: dict[str, str] = {}
    with tqdm(
        total=len(items), desc="zero-shot", unit="img", disable=not progress or len(items) < 2 * batch_size
    ) as bar:
        for batch in loader:
            for index, error in batch["errors"].items():
                errors[items[index].id] = error
                logger.warning("%s: skipped (%s)", items[index].id, error)
            if batch["pixel_values"] is not None:
                scores = classifier.score_features(classifier.image_features(batch["pixel_values"]), qs)
                probs[batch["index"]] = scores.cpu().numpy()
            bar.update(len(batch["index"]) + len(batch["errors"]))
    return ZeroShotResult([i.id for i in items], list(queries), probs, errors)


def write_results_csv(result: ZeroShotResult, path: str | Path) -> Path:
    """One row per image (``image``, one probability column per query, ``error``), written atomically."""
    import csv
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", *result.queries, "error"])
        for i, image_id in enumerate(result.ids):
            values = ["" if np.isnan(p) else f"{p:.4f}" for p in result.probs[i]]
            writer.writerow([image_id, *values, result.errors.get(image_id, "")])
    os.replace(tmp, path)
    return path
