"""The text tower: one interface over Hugging Face encoders and open_clip text towers.

``TextTower`` wraps a Hugging Face encoder, or the text tower of an open_clip checkpoint (native transformer or
open_clip's ``HFTextEncoder``), and returns ``(pooled (B, Dp), tokens (B, L, Dt), mask (B, L))``.
:func:`build_text_tower` builds one offline, with its tokenizer (:func:`build_tokenizer`), from the text config;
pretrained weights are read only by :mod:`mmrad.models.pretrained`.

Every parameter of the tower takes part in its forward pass (unused poolers are removed), so DDP needs no
``find_unused_parameters``.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from open_clip.hf_model import ClsPooler, HFTextEncoder
from open_clip.model import _build_text_tower
from torch import nn

from mmrad.config.schema import ConfigError, TextConfig
from mmrad.models.sources import resolve_text_name
from mmrad.models.tokenizer import OpenCLIPTokenizer, load_tokenizer


class TextTower(nn.Module):
    """A text encoder returning pooled features, token states and the attention mask.

    Attributes:
        kind: ``"hf"`` (a transformers ``AutoModel``), ``"open_clip_hf"`` (open_clip's ``HFTextEncoder``) or
            ``"open_clip"`` (open_clip's native ``TextTransformer``).
        pooled_dim / token_dim: feature sizes of the pooled output and of each token state.
    """

    def __init__(self, encoder: nn.Module, kind: str, pooler: str = "cls"):
        super().__init__()
        self.encoder = encoder
        self.kind = kind
        self.pooler = pooler
        if kind == "hf":
            _drop_hf_pooler(encoder)
            self.pooled_dim = self.token_dim = encoder.config.hidden_size
        elif kind == "open_clip_hf":
            if not (isinstance(encoder.pooler, ClsPooler) and encoder.pooler.use_pooler_output):
                _drop_hf_pooler(encoder.transformer)  # only open_clip's "cls_pooler" reads the HF pooler output
            self.token_dim = encoder.transformer.config.hidden_size
            self.pooled_dim = encoder.output_dim if not isinstance(encoder.proj, nn.Identity) else self.token_dim
        elif kind == "open_clip":
            encoder.output_tokens = True
            self.token_dim = encoder.width
            self.pooled_dim = encoder.output_dim if encoder.text_projection is not None else encoder.width
        else:
            raise ValueError(f"unknown text tower kind {kind!r}")

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Args: input_ids (B, L), attention_mask (B, L) (1 = token). Returns: pooled (B, Dp), tokens (B, L, Dt),
        mask (B, L) as bool."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        mask = attention_mask.bool()
        if self.kind == "open_clip":
            pooled, tokens = self.encoder(input_ids)
            return pooled, tokens, mask
        if self.kind == "open_clip_hf":
            out = self.encoder.transformer(input_ids=input_ids, attention_mask=attention_mask)
            pooled = self.encoder.proj(self.encoder.pooler(out, attention_mask))
            return pooled, out.last_hidden_state, mask
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, D)
        if self.pooler == "mean":
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        else:
            pooled = hidden[:, 0]
        return pooled, hidden, mask

    @property
    def hf_config(self):
        """The transformers config of the encoder (None for native open_clip text towers)."""
        if self.kind == "hf":
            return self.encoder.config
        if self.kind == "open_clip_hf":
            return self.encoder.transformer.config
        return None

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if self.kind == "open_clip":
            self.encoder.set_grad_checkpointing(enable)
            return
        model = self.encoder if self.kind == "hf" else self.encoder.transformer
        kwargs = {"use_reentrant": False}  # reentrant checkpoints pass no gradient to adapters behind frozen inputs
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 (the gradient_* names warn)
            if enable:
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                model.activation_checkpointing_disable()
        elif enable:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_disable()


def _drop_hf_pooler(model: nn.Module) -> None:
    # BERT-style models carry an NSP pooler (dense + tanh) that mmrad never uses; an unused parameter would stall DDP
    if getattr(model, "pooler", None) is not None:
        model.pooler = None


def hf_config_from_dict(data: dict):
    """A transformers config from ``AutoConfig.to_dict()`` output (``model_type`` required)."""
    from transformers import AutoConfig

    data = dict(data)
    model_type = data.pop("model_type", None)
    if not model_type:
        raise ConfigError("model.text.hf_config needs a model_type (e.g. 'bert')")
    for key in ("transformers_version", "_name_or_path", "architectures"):
        data.pop(key, None)
    try:
        return AutoConfig.for_model(model_type, **data)
    except (ValueError, KeyError) as err:
        raise ConfigError(f"model.text.hf_config: {err}") from err


def is_local_dir(path: str | None) -> bool:
    """True when ``path`` names an existing local folder (not a Hub id)."""
    return path is not None and os.path.isdir(path)


def build_text_tower(text: TextConfig, model_cfg: dict | None) -> tuple[TextTower, Any]:
    """A randomly initialised text tower and its tokenizer, offline.

    Args:
        text: the text config. ``source="hf"`` builds ``AutoModel.from_config`` from ``hf_config`` (or from the local
            folder / cached Hub config of ``name_or_path``); ``source="open_clip"`` builds the text tower described by
            ``model_cfg["text_cfg"]`` (an open_clip HF text tower also needs ``hf_config``).
        model_cfg: the open_clip model config (only for ``source="open_clip"``).

    Returns:
        ``(tower, tokenizer)``; the tokenizer is loaded from local files only.
    """
    from transformers import AutoConfig, AutoModel

    if text.source == "hf":
        if text.hf_config is not None:
            hf_cfg = hf_config_from_dict(text.hf_config)
        else:
            try:
                hf_cfg = AutoConfig.from_pretrained(
                    resolve_text_name(text.name_or_path), local_files_only=True,
                    trust_remote_code=text.trust_remote_code,
                )  # fmt: skip
            except OSError as err:
                raise ConfigError(
                    f"model.text: no local config for {text.name_or_path!r}; MMRadModel(config) never downloads. "
                    "Use MMRadModel.from_towers(config), or set model.text.hf_config"
                ) from err
        encoder = AutoModel.from_config(hf_cfg, trust_remote_code=text.trust_remote_code)
        tower = TextTower(encoder, "hf", text.pooler)
    else:
        if model_cfg is None or "text_cfg" not in model_cfg:
            raise ConfigError("model.text.source='open_clip' needs an open_clip model config with a text_cfg")
        tower = _build_open_clip_text(model_cfg, text)
    return tower, build_tokenizer(text, model_cfg, local_files_only=True)


def _build_open_clip_text(model_cfg: dict, text: TextConfig) -> TextTower:
    text_cfg = dict(model_cfg["text_cfg"])
    if "hf_model_name" in text_cfg:
        if text.hf_config is None:
            raise ConfigError(
                "model.text.hf_config is needed to rebuild an open_clip HF text tower offline "
                "(MMRadModel.from_towers fills it in)"
            )
        encoder = HFTextEncoder(
            text_cfg["hf_model_name"],
            output_dim=model_cfg["embed_dim"],
            config=hf_config_from_dict(text.hf_config),
            pooler_type=text_cfg.get("hf_pooler_type"),
            proj_type=text_cfg.get("hf_proj_type"),
            pretrained=False,
        )
        return TextTower(encoder, "open_clip_hf")
    encoder = _build_text_tower(model_cfg["embed_dim"], text_cfg, quick_gelu=model_cfg.get("quick_gelu", False))
    return TextTower(encoder, "open_clip")


def build_tokenizer(text: TextConfig, model_cfg: dict | None, *, local_files_only: bool = True):
    """The tokenizer of a text config: ``text.tokenizer``, else ``text.name_or_path``; for open_clip text towers the
    checkpoint's HF tokenizer or open_clip's BPE tokenizer."""
    name = text.tokenizer
    if text.source == "open_clip" and name is None:
        text_cfg = (model_cfg or {}).get("text_cfg", {})
        if "hf_tokenizer_name" in text_cfg:
            name = text_cfg["hf_tokenizer_name"]
        else:
            return OpenCLIPTokenizer(context_length=text_cfg.get("context_length", 77))
    name = resolve_text_name(name or text.name_or_path)
    if name is None:
        raise ConfigError("model.text.tokenizer: set a tokenizer (e.g. 'mmrad:radiology_wordpiece') or name_or_path")
    try:
        return load_tokenizer(name, local_files_only=local_files_only and not is_local_dir(name))
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.text.tokenizer: cannot load {name!r}: {err}") from err
