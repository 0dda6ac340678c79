"""Vision and text towers with one interface for every architecture.

``VisionTower`` wraps an open_clip visual tower — native ViT, ModifiedResNet, or a timm trunk (BiomedCLIP's vision
tower is timm) — and always returns ``(pooled (B, Dp), tokens (B, N, Dt), grid (h, w))``: the tower's own pooled
output (its pretrained projection or attention pool included) and its last-layer spatial tokens (prefix tokens
removed). ``TextTower`` wraps a Hugging Face encoder, or the text tower of an open_clip checkpoint (native
transformer or open_clip's ``HFTextEncoder``), and returns ``(pooled (B, Dp), tokens (B, L, Dt), mask (B, L))``.

Towers are built offline from config dicts (:func:`build_vision_tower`, :func:`build_text_tower`); only
:func:`load_pretrained_towers` (called by ``MMRadModel.from_towers``) reads pretrained weights, from an open_clip tag,
checkpoint file, ``local-dir:`` folder or ``hf-hub:`` id and from a Hugging Face folder or Hub id.

Every parameter of a tower takes part in its forward pass (unused poolers are removed), so DDP needs no
``find_unused_parameters``.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.hf_model import ClsPooler, HFTextEncoder
from open_clip.model import _build_text_tower, _build_vision_tower
from open_clip.modified_resnet import ModifiedResNet
from open_clip.timm_model import TimmModel
from open_clip.transformer import VisionTransformer
from torch import nn
from torch.utils.checkpoint import checkpoint

from mmrad.config import ConfigError, TextConfig, VisionConfig
from mmrad.errors import UnsafeFileError
from mmrad.models.tokenizer import OpenCLIPTokenizer, load_tokenizer

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------
# Vision
# ----------------------------------------------------------------------------------------------------------------


class VisionTower(nn.Module):
    """An open_clip visual tower returning pooled features, spatial tokens and their grid.

    Args:
        visual: the open_clip visual module.
        token_layer: which block (ViT) or stage (ResNet, timm) gives the tokens, counted from the end: -1 is the
            last; earlier ones have smaller receptive fields (more local tokens, finer grids for CNNs). The pooled
            output always comes from the full tower.

    Attributes:
        kind: ``"vit"`` (open_clip VisionTransformer), ``"resnet"`` (ModifiedResNet) or ``"timm"``.
        pooled_dim / token_dim: feature sizes of the pooled output and of each token.
        image_size: the (square) input size the tower expects.
    """

    def __init__(self, visual: nn.Module, token_layer: int = -1):
        super().__init__()
        self.visual = visual
        self.token_layer = token_layer
        self.grad_checkpointing = False  # ResNets only: open_clip's ModifiedResNet has none, mmrad checkpoints stages
        if isinstance(visual, VisionTransformer):
            self.kind = "vit"
            if visual.attn_pool is not None or visual.pool_type == "none":
                raise ConfigError("model.vision: ViT towers with attentional or no pooling have no patch-token grid")
            if not isinstance(visual.patch_dropout, nn.Identity):
                raise ConfigError("model.vision: patch_dropout drops patch tokens and breaks the grid; set it to 0")
            visual.output_tokens = True
            self.pooled_dim = visual.output_dim if visual.proj is not None else visual.conv1.out_channels
            self.token_dim = visual.conv1.out_channels
            self.image_size = visual.image_size[0]
        elif isinstance(visual, ModifiedResNet):
            self.kind = "resnet"
            self.pooled_dim = visual.output_dim
            self.token_dim = visual.attnpool.k_proj.in_features
            self.image_size = visual.image_size
        elif isinstance(visual, TimmModel):
            self.kind = "timm"
            self.image_size = visual.image_size[0]
        else:
            raise ConfigError(f"model.vision: unsupported open_clip visual tower {type(visual).__name__}")
        if self.kind == "timm" or token_layer != -1:
            with torch.no_grad():  # feature sizes are cheapest to read from one tiny forward
                was_training = visual.training
                visual.eval()
                pooled, tokens, _ = self(torch.zeros(1, 3, self.image_size, self.image_size))
                visual.train(was_training)
            self.pooled_dim, self.token_dim = pooled.shape[-1], tokens.shape[-1]

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """Args: pixel_values (B, 3, H, W). Returns: pooled (B, Dp), tokens (B, N, Dt), grid (h, w) with h*w = N."""
        if self.token_layer != -1:
            return self._intermediate(pixel_values)
        if self.kind == "vit":
            pooled, tokens = self.visual(pixel_values)  # tokens after ln_post, no class token
            ph, pw = self.visual.patch_size
            grid = (pixel_values.shape[-2] // ph, pixel_values.shape[-1] // pw)
            return pooled, tokens, grid
        if self.kind == "resnet":
            if self.grad_checkpointing and torch.is_grad_enabled():
                return self._resnet_stages(pixel_values)
            out = self.visual.forward_intermediates(pixel_values, indices=1)
            fmap = out["image_intermediates"][-1]  # (B, C, h, w) after layer4
            return out["image_features"], fmap.flatten(2).transpose(1, 2), tuple(fmap.shape[-2:])
        return self._timm(pixel_values)

    def _intermediate(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        if self.kind == "resnet":
            return self._resnet_stages(pixel_values)
        # open_clip's forward_intermediates: an earlier block's features and the pooled output in one pass
        kwargs = {"normalize_intermediates": True} if self.kind == "vit" else {}
        out = self.visual.forward_intermediates(pixel_values, indices=[self.token_layer], output_fmt="NCHW", **kwargs)
        pooled, fmap = out["image_features"], out["image_intermediates"][0]  # fmap (B, C, h, w), no prefix
        return pooled, fmap.flatten(2).transpose(1, 2), tuple(fmap.shape[-2:])

    def _resnet_stages(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        # open_clip's ModifiedResNet.forward_intermediates stops early and has no gradient checkpointing: walk the
        # stages. Checkpointed stages recompute in backward, so BatchNorm running statistics move twice per step.
        visual, x = self.visual, pixel_values
        checkpointing = self.grad_checkpointing and torch.is_grad_enabled()
        stages = []
        for block in (visual.stem, visual.layer1, visual.layer2, visual.layer3, visual.layer4):
            x = checkpoint(block, x, use_reentrant=False) if checkpointing else block(x)
            stages.append(x)
        fmap = stages[self.token_layer]  # (B, C, h, w)
        return visual.attnpool(x), fmap.flatten(2).transpose(1, 2), tuple(fmap.shape[-2:])

    def _timm(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        trunk = self.visual.trunk
        feats = trunk.forward_features(pixel_values)
        pooled = self.visual.head(trunk.forward_head(feats))
        if pooled.ndim != 2:
            raise ConfigError("model.vision: the timm tower does not pool (set timm_pool to a pooling, or '')")
        if feats.ndim == 4:  # CNN: (B, C, h, w)
            return pooled, feats.flatten(2).transpose(1, 2), tuple(feats.shape[-2:])
        n_prefix = getattr(trunk, "num_prefix_tokens", 0)
        tokens = feats[:, n_prefix:]  # (B, N, D) without class/register tokens
        n = tokens.shape[1]
        patch = getattr(getattr(trunk, "patch_embed", None), "patch_size", None)
        if patch is not None:
            grid = (pixel_values.shape[-2] // patch[0], pixel_values.shape[-1] // patch[1])
        else:
            side = math.isqrt(n)
            grid = (side, n // side)
        if grid[0] * grid[1] != n:
            raise ConfigError(f"model.vision: cannot infer the token grid of {n} timm tokens (got {grid})")
        return pooled, tokens, grid

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if self.kind == "resnet":
            self.grad_checkpointing = enable
        else:
            self.visual.set_grad_checkpointing(enable)


def resolve_model_cfg(cfg: VisionConfig, *, allow_network: bool = False) -> dict:
    """The full open_clip model config dict (``embed_dim``, ``vision_cfg``, ``text_cfg``, ...) of ``cfg``.

    ``model_cfg`` wins; otherwise a built-in name (``"ViT-B-16"``) or ``local-dir:`` folder is read offline. An
    ``hf-hub:`` name needs ``allow_network`` (only :func:`load_pretrained_towers` sets it).
    """
    if cfg.model_cfg is not None:
        return copy.deepcopy(cfg.model_cfg)
    name = cfg.model_name
    if name.startswith("hf-hub:") and not allow_network:
        raise ConfigError(
            f"model.vision: {name!r} needs its config from the Hub; MMRadModel(config) never downloads. Use "
            "MMRadModel.from_towers(config), or set model.vision.model_cfg"
        )
    try:
        model_cfg = open_clip.get_model_config(name)
    except Exception as err:  # a missing local-dir config, or a Hub failure
        raise ConfigError(f"model.vision: cannot read the open_clip config of {name!r}: {err}") from err
    if model_cfg is None:
        raise ConfigError(f"model.vision: unknown open_clip model {name!r} (see open_clip.list_models())")
    return copy.deepcopy(model_cfg)


def build_vision_tower(model_cfg: dict, token_layer: int = -1) -> VisionTower:
    """A randomly initialised vision tower from an open_clip model config dict (offline)."""
    vision_cfg = dict(model_cfg["vision_cfg"])
    if "timm_model_name" in vision_cfg:
        vision_cfg["timm_model_pretrained"] = False  # weights only ever come from load_pretrained_towers
    visual = _build_vision_tower(model_cfg["embed_dim"], vision_cfg, quick_gelu=model_cfg.get("quick_gelu", False))
    _fit_timm_input_size(visual, vision_cfg)
    return VisionTower(visual, token_layer)


def _fit_timm_input_size(visual: nn.Module, vision_cfg: dict) -> None:
    # open_clip's TimmModel builds the trunk at the timm default size; move it to the configured one
    if isinstance(visual, TimmModel) and hasattr(visual.trunk, "set_input_size"):
        size = vision_cfg.get("image_size", 224)
        default = getattr(visual.trunk, "default_cfg", {}).get("input_size", (3, size, size))[-1]
        current = getattr(getattr(visual.trunk, "patch_embed", None), "img_size", (default,))[0]
        if current != size:
            visual.set_input_size(size)


# ----------------------------------------------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------------------------------------------


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


def _is_local(path: str | None) -> bool:
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
                    text.name_or_path, local_files_only=True, trust_remote_code=text.trust_remote_code
                )
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
    name = name or text.name_or_path
    if name is None:
        raise ConfigError("model.text.tokenizer: set a tokenizer (e.g. 'mmrad:radiology_wordpiece') or name_or_path")
    try:
        return load_tokenizer(name, local_files_only=local_files_only and not _is_local(name))
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.text.tokenizer: cannot load {name!r}: {err}") from err


# ----------------------------------------------------------------------------------------------------------------
# Pretrained weights (the only place that reads tower checkpoints)
# ----------------------------------------------------------------------------------------------------------------


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def check_tensor_file(path: str | Path) -> None:
    """Refuse a local pickle weights file unless it loads as plain tensors (``torch.load(weights_only=True)``).

    open_clip loads pickle checkpoints with ``weights_only=True`` but retries without it when that raises a
    ``TypeError``; checking here first means no pickle file a user names can ever be unpickled in full. safetensors
    files hold no code and pass unchecked.

    Raises:
        UnsafeFileError: the file holds objects other than tensors (code could run), or is not a torch file.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return
    try:
        try:
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # lazy: tensors are not read
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            torch.load(path, map_location="cpu", weights_only=True)  # a legacy (non-zip) torch file
    except Exception as err:
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise UnsafeFileError(
            f"{path}: refused: not a plain tensor file ({type(err).__name__}: {reason}). A pickle file can run code "
            "when loaded, so mmrad loads only tensors from it; convert weights you trust to safetensors"
        ) from None


def _check_local_weights(vision: VisionConfig) -> None:
    """Every local pickle file open_clip would load for ``vision`` holds tensors only."""
    if vision.pretrained is not None and Path(vision.pretrained).is_file():
        check_tensor_file(vision.pretrained)
    if vision.model_name is not None and vision.model_name.startswith("local-dir:"):
        folder = Path(vision.model_name.removeprefix("local-dir:"))
        for path in sorted(folder.glob("*")) if folder.is_dir() else []:
            if path.suffix in PICKLE_SUFFIXES:
                check_tensor_file(path)


def _open_clip_with_weights(vision: VisionConfig, model_cfg: dict) -> nn.Module | None:
    """The full open_clip model with its pretrained weights, or None when no weights are named."""
    _check_local_weights(vision)
    if vision.model_name is not None and (
        vision.model_name.startswith(("hf-hub:", "local-dir:")) or vision.pretrained is not None
    ):
        logger.info("loading open_clip %s (pretrained=%s)", vision.model_name, vision.pretrained)
        return open_clip.create_model(vision.model_name, pretrained=vision.pretrained, pretrained_text=False)
    if vision.pretrained is None:
        return None
    if not Path(vision.pretrained).is_file():
        raise ConfigError(f"model.vision.pretrained: {vision.pretrained!r} is not a file (a tag needs model_name)")
    cfg = copy.deepcopy(model_cfg)
    custom = cfg.pop("custom_text", False) or "hf_model_name" in cfg.get("text_cfg", {})
    if "hf_model_name" in cfg.get("text_cfg", {}):
        cfg["text_cfg"]["hf_model_pretrained"] = False
    if "timm_model_name" in cfg["vision_cfg"]:
        cfg["vision_cfg"]["timm_model_pretrained"] = False
    model = (open_clip.CustomTextCLIP if custom else open_clip.CLIP)(**cfg)
    logger.info("loading open_clip weights from %s", vision.pretrained)
    open_clip.load_checkpoint(model, vision.pretrained)
    return model


def _open_clip_text_module(clip: nn.Module, model_cfg: dict) -> nn.Module:
    """The text tower of an open_clip model as one module (native CLIP keeps its text parts at the top level)."""
    if hasattr(clip, "text"):
        return clip.text
    text = _build_text_tower(model_cfg["embed_dim"], model_cfg["text_cfg"], quick_gelu=model_cfg.get("quick_gelu"))
    state = {k: v for k, v in clip.state_dict().items() if not k.startswith(("visual.", "logit_scale", "logit_bias"))}
    text.load_state_dict(state, strict=True)
    return text


def load_pretrained_towers(
    vision: VisionConfig, text: TextConfig
) -> tuple[VisionTower, TextTower, Any, dict, dict | None, dict | None]:
    """Build both towers with pretrained weights (may use the network when a Hub id is named).

    Returns:
        ``(vision_tower, text_tower, tokenizer, model_cfg, hf_config_dict, preprocess_cfg)``: ``model_cfg`` and
        ``hf_config_dict`` are what the saved config needs to rebuild the towers offline; ``preprocess_cfg`` is
        open_clip's preprocessing of the checkpoint (mean/std/size) when known.
    """
    from transformers import AutoModel

    model_cfg = resolve_model_cfg(vision, allow_network=True)
    clip = _open_clip_with_weights(vision, model_cfg)
    preprocess = None
    if clip is not None:
        visual = clip.visual
        preprocess = copy.deepcopy(getattr(visual, "preprocess_cfg", None))
        _fit_timm_input_size(visual, model_cfg["vision_cfg"])
        vision_tower = VisionTower(visual, vision.token_layer)
    else:
        logger.warning("model.vision names no pretrained weights: the vision tower is randomly initialised")
        vision_tower = build_vision_tower(model_cfg, vision.token_layer)

    if text.source == "open_clip":
        if clip is None:
            logger.warning("no open_clip weights: the open_clip text tower is randomly initialised")
            tower, tokenizer = build_text_tower(text, model_cfg)
        else:
            module = _open_clip_text_module(clip, model_cfg)
            tower = TextTower(module, "open_clip_hf" if isinstance(module, HFTextEncoder) else "open_clip")
            tokenizer = build_tokenizer(text, model_cfg, local_files_only=False)
    elif text.name_or_path is not None:
        import pickle

        logger.info("loading text encoder %s", text.name_or_path)
        try:
            encoder = AutoModel.from_pretrained(
                text.name_or_path,
                trust_remote_code=text.trust_remote_code,
                local_files_only=_is_local(text.name_or_path),
            )  # pickle weights (pytorch_model.bin) are read with weights_only=True
        except pickle.UnpicklingError as err:
            raise UnsafeFileError(
                f"model.text.name_or_path {text.name_or_path}: refused: its weights file holds objects other than "
                "tensors, and a pickle file can run code when loaded; use a model with model.safetensors"
            ) from err
        tower = TextTower(encoder, "hf", text.pooler)
        tokenizer = build_tokenizer(text, None, local_files_only=_is_local(text.tokenizer or text.name_or_path))
    else:
        logger.warning("model.text names no pretrained weights: the text tower is randomly initialised")
        tower, tokenizer = build_text_tower(text, model_cfg)
    hf_cfg = tower.hf_config.to_dict() if tower.hf_config is not None else None
    return vision_tower, tower, tokenizer, model_cfg, hf_cfg, preprocess
