"""``MMRadModel``: an open_clip vision tower and a text encoder joined by a cross-attention query decoder.

One path for three jobs (see DESIGN.md, "The model"):

* classification — the queries are the encoded descriptions of the configured findings, one logit each;
* zero-shot — any text is a query (:meth:`MMRadModel.score_queries`), or cosine of global embeddings;
* grounding — each query's cross-attention over the patch tokens is its map; :meth:`MMRadModel.encode_patches`
  gives the projected patch embeddings for the parameter-free cosine map (after BioViL).

``MMRadModel(config)`` builds everything offline from the config and never downloads; only
:meth:`MMRadModel.from_towers` loads pretrained tower weights. Saving and loading live in
:mod:`mmrad.models.serialization`. The output and ``forward`` follow transformers' ``CLIPModel``; the offline-init vs
pretrained split follows ``VisionTextDualEncoderModel``.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mmrad.config.schema import ConfigError, MMRadConfig
from mmrad.models.fusion import QueryDecoder, attention_maps
from mmrad.models.losses import model_loss
from mmrad.models.outputs import MMRadOutput, resolve_labels
from mmrad.models.pretrained import check_towers, model_from_towers
from mmrad.models.text_tower import TextTower, build_text_tower
from mmrad.models.vision_tower import VisionTower, build_vision_tower, resolve_model_cfg

logger = logging.getLogger(__name__)


class MMRadModel(nn.Module):
    """Vision tower x text tower x query decoder.

    Args:
        config: the model config. Towers are built from ``vision.model_cfg`` / a built-in open_clip name and from
            ``text.hf_config`` / a local folder, randomly initialised; nothing is downloaded.
        vision_tower, text_tower, tokenizer: prebuilt towers (used by :meth:`from_towers`).

    Attributes:
        config: the complete config (tower config dicts filled in, so it rebuilds offline).
        tokenizer: the text tower's tokenizer, called like a Hugging Face tokenizer.
        label_names: the findings, in logit order.
        lora_settings: the LoRA settings applied by :func:`mmrad.models.lora.apply_lora`, else None.
    """

    def __init__(
        self,
        config: MMRadConfig,
        *,
        vision_tower: VisionTower | None = None,
        text_tower: TextTower | None = None,
        tokenizer=None,
    ):
        super().__init__()
        config = copy.deepcopy(config)
        model_cfg = resolve_model_cfg(config.vision)
        config.vision.model_cfg = model_cfg
        if vision_tower is None:
            vision_tower = build_vision_tower(model_cfg, config.vision.token_layer)
        self.vision = vision_tower
        if text_tower is None:
            text_tower, tokenizer = build_text_tower(config.text, model_cfg)
        self.text = text_tower
        self.tokenizer = tokenizer
        if self.text.hf_config is not None:
            config.text.hf_config = self.text.hf_config.to_dict()
        check_towers(config, self.vision, self.text, self.tokenizer)

        dim = config.projection_dim
        self.image_proj = nn.Linear(self.vision.pooled_dim, dim, bias=False)
        self.patch_proj = nn.Linear(self.vision.token_dim, dim, bias=False)
        self.text_proj = nn.Linear(self.text.pooled_dim, dim, bias=False)
        # word embeddings for the local loss share text_proj when token and pooled states live in one space
        separate_words = config.loss.local > 0 and self.text.token_dim != self.text.pooled_dim
        self.word_proj = nn.Linear(self.text.token_dim, dim, bias=False) if separate_words else None
        self.logit_scale = nn.Parameter(
            torch.tensor(math.log(1.0 / config.init_temperature)), requires_grad=config.loss.contrastive > 0
        )
        fusion = config.fusion
        self.decoder = QueryDecoder(
            dim,
            fusion.num_layers,
            fusion.num_heads,
            fusion.mlp_ratio,
            fusion.dropout,
            fusion.self_attention,
            fusion.position,
        )
        self.head = nn.Linear(dim, 1)
        # fusion.global_term: the scale of the global image-query cosine in each logit (learned, as log)
        self.global_scale = nn.Parameter(torch.tensor(math.log(10.0))) if fusion.global_term else None

        self.label_names, self.label_descriptions, self.uncertainty_policies = resolve_labels(config.labels)
        config.labels.names = list(self.label_names)  # frozen, so the saved config needs no vocabulary file
        config.labels.descriptions = dict(zip(self.label_names, self.label_descriptions, strict=True))
        self.config = config
        enc = self.tokenize(self.label_descriptions, device=torch.device("cpu"))
        self.register_buffer("label_input_ids", enc["input_ids"], persistent=False)
        self.register_buffer("label_attention_mask", enc["attention_mask"], persistent=False)
        special = sorted(set(getattr(self.tokenizer, "all_special_ids", [])))
        self.register_buffer("special_token_ids", torch.tensor(special, dtype=torch.long), persistent=False)

        self.lora_settings = None
        self.activation_recompute = None  # the active ActivationRecompute (set_activation_recompute), or None
        self.name_or_path: str | None = None  # the folder or repo this model was loaded from
        self.towers_from_sources = False  # True when from_towers loaded named pretrained weights
        self._query_cache: tuple[tuple, torch.Tensor] | None = None  # (text tower fingerprint, description features)

    # ------------------------------------------------------------------------------------------------------------
    # Construction with pretrained towers, saving and loading
    # ------------------------------------------------------------------------------------------------------------

    @classmethod
    def from_towers(cls, config: MMRadConfig) -> MMRadModel:
        """Build the model with pretrained tower weights: ``vision.model_name`` + ``pretrained`` (open_clip tag,
        checkpoint file, ``local-dir:`` or ``hf-hub:``), ``vision.model_cfg`` + a checkpoint file, and
        ``text.name_or_path`` (a local folder or Hub id) or the open_clip checkpoint's text tower. This is the only
        constructor that may use the network. The projections, decoder and head are new (logged). See
        :func:`mmrad.models.pretrained.model_from_towers`."""
        return model_from_towers(cls, config)

    def save_pretrained(self, save_directory: str | Path, *, adapter_only: bool = False, base_model=None) -> Path:
        """Write ``config.json``, ``model.safetensors`` (or ``adapter_model.safetensors``) and the tokenizer.
        See :func:`mmrad.models.serialization.save_model`."""
        from mmrad.models.serialization import save_model

        return save_model(self, save_directory, adapter_only=adapter_only, base_model=base_model)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, *, revision: str | None = None, trust_remote_code: bool = False
    ) -> MMRadModel:
        """Load a folder (or Hub repo) written by :meth:`save_pretrained`; strict: a missing or unexpected weight is
        an error; a folder asking for ``trust_remote_code`` loads only when it is passed here too. See
        :func:`mmrad.models.serialization.load_model`."""
        from mmrad.models.serialization import load_model

        return load_model(cls, name_or_path, revision=revision, trust_remote_code=trust_remote_code)

    # ------------------------------------------------------------------------------------------------------------
    # Encoders
    # ------------------------------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    def tokenize(self, texts: Sequence[str], device: torch.device | None = None) -> dict[str, torch.Tensor]:
        """Tokenize with the text tower's tokenizer (padded, truncated to ``text.max_length``)."""
        if isinstance(texts, str):
            texts = [texts]
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.config.text.max_length, return_tensors="pt"
        )
        device = device or self.device
        return {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device)}

    def encode_vision(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """One pass of the vision tower: (B, P) global embeddings (L2-normalised), (B, N, P) projected patch tokens
        (the decoder's memory) and the grid (h, w)."""
        pooled, tokens, grid = self.vision(pixel_values)
        return F.normalize(self.image_proj(pooled), dim=-1), self.patch_proj(tokens), grid

    def encode_image(self, pixel_values: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, 3, H, W) -> (B, P) global image embeddings in the joint space."""
        pooled, _, _ = self.vision(pixel_values)
        embeds = self.image_proj(pooled)
        return F.normalize(embeds, dim=-1) if normalize else embeds

    def encode_patches(
        self, pixel_values: torch.Tensor, normalize: bool = True
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, 3, H, W) -> patch embeddings (B, N, P) in the joint space and their grid (h, w): cosine with
        :meth:`encode_text` output gives the BioViL-style similarity map."""
        _, tokens, grid = self.vision(pixel_values)
        embeds = self.patch_proj(tokens)
        return (F.normalize(embeds, dim=-1) if normalize else embeds), grid

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, normalize: bool = True
    ) -> torch.Tensor:
        """(B, L) token ids -> (B, P) text embeddings in the joint space (also the decoder's query embeddings)."""
        pooled, _, _ = self.text(input_ids, attention_mask)
        embeds = self.text_proj(pooled)
        return F.normalize(embeds, dim=-1) if normalize else embeds

    def embed_texts(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Tokenize and encode texts: (Q, P), L2-normalised."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        chunks = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
        parts = [self.encode_text(**self.tokenize(chunk)) for chunk in chunks]
        return torch.cat(parts) if parts else torch.empty(0, self.config.projection_dim, device=self.device)

    def _text_tower_frozen(self) -> bool:
        return not (torch.is_grad_enabled() and any(p.requires_grad for p in self.text.parameters()))

    def _label_features(self) -> torch.Tensor:
        """(K, Dp) text tower output for the finding descriptions; cached while the tower cannot change it (no grad,
        or a frozen tower) until its weights change."""
        if not self._text_tower_frozen():
            return self.text(self.label_input_ids, self.label_attention_mask)[0]
        # in-place updates (optimizer steps, load_state_dict) bump a tensor's version; moves change its pointer
        key = tuple((p.data_ptr(), p._version, p.dtype) for p in self.text.parameters())
        if self._query_cache is None or self._query_cache[0] != key:
            was_training = self.text.training
            self.text.eval()  # a frozen tower is a feature extractor: no dropout in its cached output
            with torch.no_grad():
                pooled = self.text(self.label_input_ids, self.label_attention_mask)[0]
            self.text.train(was_training)
            self._query_cache = (key, pooled)
        return self._query_cache[1]

    def clear_query_cache(self) -> None:
        """Forget the cached text tower output of the finding descriptions (:meth:`label_queries`); call it after
        changing the text tower other than through an optimiser step or ``load_state_dict`` (e.g. merging adapters)."""
        self._query_cache = None

    def label_queries(self) -> torch.Tensor:
        """(K, P) query embeddings of the finding descriptions (L2-normalised, like :meth:`encode_text`). The text
        tower's part is recomputed while it trains and cached otherwise; the projection always runs."""
        return F.normalize(self.text_proj(self._label_features()), dim=-1)

    def text_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The text tower's raw output ``(pooled (B, Dp), tokens (B, L, Dt), mask (B, L))``. With a frozen text
        tower a training loop can compute these once per report and pass them to :meth:`forward` as
        ``text_features`` (the projections still train)."""
        return self.text(input_ids, attention_mask)

    # ------------------------------------------------------------------------------------------------------------
    # Decoder, scoring
    # ------------------------------------------------------------------------------------------------------------

    def decode(
        self, patch_embeds: torch.Tensor, query_embeds: torch.Tensor, image_embeds: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list]:
        """Run the query decoder.

        Args:
            patch_embeds: (B, N, P) projected patch tokens (``encode_patches(..., normalize=False)``).
            query_embeds: (Q, P) or (B, Q, P) query embeddings (``encode_text`` output).
            image_embeds: (B, P) global image embeddings (:meth:`encode_vision`); needed with ``fusion.global_term``.

        Returns:
            logits (B, Q) (per ``fusion.presence``, plus the global term) and the per-layer cross-attention weights,
            each (B, Q, N).
        """
        states, attentions, evidence = self.decoder(query_embeds, patch_embeds)
        logits = self.head(states).squeeze(-1)
        if self.global_scale is not None:
            if image_embeds is None:
                raise ValueError("this model's logits (fusion.global_term) need the global image embeddings")
            similarity = torch.einsum("bp,...qp->bq", image_embeds, query_embeds)  # (B, Q) cosines
            logits = logits + self.global_scale.exp().clamp(max=100.0) * similarity
        presence = self.config.fusion.presence
        if presence == "evidence":
            # the head's weight and the last layer's output path stay in the graph with zero gradient (DDP)
            logits = evidence + self.head.bias + 0.0 * logits
        elif presence == "both":
            logits = logits + evidence
        return logits, attentions

    def attention_maps(self, attentions: Sequence[torch.Tensor], grid: tuple[int, int], last_k: int | None = None):
        """(B, Q, h, w) grounding maps: the mean over the last ``last_k`` layers (default
        ``fusion.attention_layers``) of the head-averaged cross-attention."""
        return attention_maps(list(attentions), grid, last_k or self.config.fusion.attention_layers)

    def classify(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, K) probabilities of the configured findings (order: ``label_names``)."""
        image, memory, _ = self.encode_vision(pixel_values)
        logits, _ = self.decode(memory, self.label_queries(), image)
        return torch.sigmoid(logits)

    def score_queries(
        self, pixel_values: torch.Tensor, texts: Sequence[str] | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Score free-text queries against images.

        Args:
            pixel_values: (B, 3, H, W).
            texts: Q strings, or a (Q, P) tensor of precomputed :meth:`embed_texts` embeddings.

        Returns:
            logits (B, Q) (sigmoid gives presence probabilities) and attention maps (B, Q, h, w).
        """
        queries = texts if isinstance(texts, torch.Tensor) else self.embed_texts(texts)
        image, memory, grid = self.encode_vision(pixel_values)
        logits, attentions = self.decode(memory, queries, image)
        return logits, self.attention_maps(attentions, grid)

    # ------------------------------------------------------------------------------------------------------------
    # Forward and losses
    # ------------------------------------------------------------------------------------------------------------

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        query_input_ids: torch.Tensor | None = None,
        query_attention_mask: torch.Tensor | None = None,
        return_loss: bool = True,
        text_features: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
        masks: torch.Tensor | None = None,
        mask_valid: torch.Tensor | None = None,
        report_mask: torch.Tensor | None = None,
    ) -> MMRadOutput:
        """Encode images (and reports), decode the queries, and compute the configured losses.

        Args:
            pixel_values: (B, 3, H, W) normalised images.
            input_ids, attention_mask: (B, L) the paired reports (for the contrastive and local losses).
            labels: (B, K) float 1 / 0 / -1 / NaN per finding (for the classification loss).
            query_input_ids, query_attention_mask: (Q, Lq) custom queries instead of the finding descriptions;
                ``labels`` then has Q columns.
            return_loss: compute ``loss`` and ``loss_terms``.
            text_features: precomputed :meth:`text_features` of the reports, instead of running the text tower on
                ``input_ids`` (which are then only needed for the local loss's special-token mask).
            masks, mask_valid: (B, K, S, S) finding masks at the input's pixels and (B, K) which exist (for the
                grounding loss with the finding queries; the collator's ``return_masks``).
            report_mask: (B,) bool, the rows that have a report (the collator's ``has_report``): the contrastive and
                local losses use only those. None = every row has one.

        Returns:
            :class:`MMRadOutput`.
        """
        out = self.encode_and_decode(pixel_values, input_ids, attention_mask, text_features, query_input_ids,
                                     query_attention_mask)  # fmt: skip
        if return_loss:
            custom = query_input_ids is not None
            out.loss_terms, out.loss = model_loss(self, out, labels=labels, masks=masks, mask_valid=mask_valid,
                                                  report_mask=report_mask, custom_queries=custom)  # fmt: skip
        return out

    def encode_and_decode(self, pixel_values, input_ids=None, attention_mask=None, text_features=None,
                          query_input_ids=None, query_attention_mask=None) -> MMRadOutput:  # fmt: skip
        """:meth:`forward` without the losses: images (and reports) encoded, queries decoded."""
        image_embeds, memory, grid = self.encode_vision(pixel_values)
        text_embeds = words = word_mask = None
        if text_features is None and input_ids is not None:
            text_features = self.text(input_ids, attention_mask)
        if text_features is not None:
            pooled, tokens, mask = text_features
            text_embeds = F.normalize(self.text_proj(pooled), dim=-1)
            if self.config.loss.local > 0:
                if self.word_proj is None and self.text.token_dim != self.text.pooled_dim:
                    raise ConfigError("model.loss.local > 0 needs a word projection: set it before building the model")
                words = (self.word_proj if self.word_proj is not None else self.text_proj)(tokens)
                word_mask = mask if input_ids is None else mask & ~torch.isin(input_ids, self.special_token_ids)
        if query_input_ids is not None:
            queries = self.encode_text(query_input_ids, query_attention_mask)
        else:
            queries = self.label_queries()
        logits, attentions = self.decode(memory, queries, image_embeds)
        return MMRadOutput(logits=logits, image_embeds=image_embeds, text_embeds=text_embeds, patch_embeds=memory,
                           query_embeds=queries, query_attentions=tuple(attentions), grid=grid,
                           logit_scale=self.logit_scale.exp().clamp(max=100.0), word_embeds=words,
                           word_mask=word_mask)  # fmt: skip

    def query_policies(self, num_queries: int) -> list[str]:
        """The uncertainty policy of each query: the findings' own, or the config's single policy for custom
        queries."""
        if num_queries == len(self.uncertainty_policies):
            return self.uncertainty_policies
        policy = self.config.labels.uncertainty
        return [policy if isinstance(policy, str) else "ignore"] * num_queries

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Trade compute for memory in both towers."""
        self.vision.set_grad_checkpointing(enable)
        self.text.set_grad_checkpointing(enable)

    def set_activation_recompute(self, enable: bool = True) -> None:
        """During :meth:`forward`, keep each tower MLP's activation input instead of its output for the backward
        pass, which recomputes the output (:mod:`mmrad.models.recompute`); gradients are unchanged."""
        from mmrad.models.recompute import set_activation_recompute

        set_activation_recompute(self, enable)
