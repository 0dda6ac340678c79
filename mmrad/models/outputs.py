"""What ``MMRadModel`` returns: :class:`MMRadOutput`, and which finding each logit column is
(:func:`resolve_labels`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput

from mmrad.config.schema import LabelsConfig


@dataclass
class MMRadOutput(ModelOutput):
    """Output of :meth:`MMRadModel.forward`; every field is optional.

    Args:
        loss: weighted sum of ``loss_terms`` (present when a loss could be computed).
        loss_terms: each unweighted loss, e.g. ``{"contrastive", "classification", "local"}``.
        logits: (B, Q) presence logit per query (Q = number of findings unless custom queries were given).
        image_embeds: (B, P) L2-normalised global image embeddings.
        text_embeds: (B, P) L2-normalised report embeddings (when ``input_ids`` were given).
        patch_embeds: (B, N, P) projected patch tokens (the decoder's memory; normalise for cosine maps).
        query_embeds: (Q, P) the query embeddings used.
        query_attentions: per decoder layer, (B, Q, N) cross-attention weights averaged over heads.
        grid: (h, w) of the patch tokens, h * w = N.
        logit_scale: scalar 1 / temperature of the contrastive loss.
        word_embeds, word_mask: (B, L, P) projected report tokens and (B, L) the words that count (no padding or
            special tokens), when the local loss is on.
    """

    loss: torch.Tensor | None = None
    loss_terms: dict[str, torch.Tensor] | None = None
    logits: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    patch_embeds: torch.Tensor | None = None
    query_embeds: torch.Tensor | None = None
    query_attentions: tuple[torch.Tensor, ...] | None = None
    grid: tuple[int, int] | None = None
    logit_scale: torch.Tensor | None = None
    word_embeds: torch.Tensor | None = None
    word_mask: torch.Tensor | None = None


def resolve_labels(cfg: LabelsConfig) -> tuple[list[str], list[str], list[str]]:
    """``(names, descriptions, policies)``. A config whose names all have descriptions (as saved models have) needs
    no vocabulary file, so a saved model loads on a machine without the user's vocabulary YAML."""
    from mmrad.config.labels import label_descriptions, label_names, uncertainty_policies

    if cfg.names and all(n in cfg.descriptions for n in cfg.names):
        names, descriptions = list(cfg.names), [cfg.descriptions[n] for n in cfg.names]
    else:
        names, descriptions = label_names(cfg), label_descriptions(cfg)
    return names, descriptions, uncertainty_policies(cfg, names)
