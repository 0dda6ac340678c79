"""The vision tower: one interface over every open_clip visual tower.

``VisionTower`` wraps an open_clip visual tower — native ViT, ModifiedResNet, or a timm trunk (BiomedCLIP's vision
tower is timm) — and always returns ``(pooled (B, Dp), tokens (B, N, Dt), grid (h, w))``: the tower's own pooled
output (its pretrained projection or attention pool included) and its last-layer spatial tokens (prefix tokens
removed). :func:`build_vision_tower` builds one offline from an open_clip model config dict
(:func:`resolve_model_cfg`); pretrained weights are read only by :mod:`mmrad.models.pretrained`.

Every parameter of the tower takes part in its forward pass, so DDP needs no ``find_unused_parameters``.
"""

from __future__ import annotations

import copy
import math

import open_clip
import torch
from open_clip.model import _build_vision_tower
from open_clip.modified_resnet import ModifiedResNet
from open_clip.timm_model import TimmModel
from open_clip.transformer import VisionTransformer
from torch import nn
from torch.utils.checkpoint import checkpoint

from mmrad.config.schema import ConfigError, VisionConfig
from mmrad.models.sources import VISION_SOURCES, resolve_source


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
        channels_last: convolutional towers (ResNet, timm CNNs) keep their weights and inputs channels-last, which
            oneDNN and cuDNN run much faster (measured 1.4x for the demo's ResNet, over 2x for EfficientNet-Lite2 on
            a 2-core CPU); :meth:`set_channels_last` turns it off.
    """

    def __init__(self, visual: nn.Module, token_layer: int = -1):
        super().__init__()
        self.visual = visual
        self.token_layer = token_layer
        self.grad_checkpointing = False  # ResNets only: open_clip's ModifiedResNet has none, mmrad checkpoints stages
        self.channels_last = False
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
        convolutional = self.kind == "resnet"
        if self.kind == "timm" or token_layer != -1:
            with torch.no_grad():  # feature sizes are cheapest to read from one tiny forward
                was_training = visual.training
                visual.eval()
                probe = torch.zeros(1, 3, self.image_size, self.image_size)
                pooled, tokens, _ = self(probe)
                if self.kind == "timm":  # a CNN trunk's features are a (B, C, h, w) map, a ViT's are tokens
                    convolutional = visual.trunk.forward_features(probe).ndim == 4
                visual.train(was_training)
            self.pooled_dim, self.token_dim = pooled.shape[-1], tokens.shape[-1]
        self.set_channels_last(convolutional)

    def grid(self) -> tuple[int, int]:
        """The token grid (h, w) at the tower's input size (read from one tiny forward, then remembered)."""
        if getattr(self, "_grid", None) is None:
            with torch.no_grad():
                was_training = self.training
                self.eval()
                param = next(self.parameters())
                size = (1, 3, self.image_size, self.image_size)
                self._grid = tuple(self(torch.zeros(size, device=param.device, dtype=param.dtype))[2])
                self.train(was_training)
        return self._grid

    def set_channels_last(self, enable: bool = True) -> None:
        """Keep the tower's 4-D weights (and convert its inputs) channels-last, or back to the default layout."""
        self.channels_last = enable
        self.visual.to(memory_format=torch.channels_last if enable else torch.contiguous_format)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """Args: pixel_values (B, 3, H, W). Returns: pooled (B, Dp), tokens (B, N, Dt), grid (h, w) with h*w = N."""
        if self.channels_last:
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
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

    ``model_cfg`` wins (checked against a named pretrained source's architecture); otherwise a built-in name
    (``"ViT-B-16"``) or ``local-dir:`` folder is read offline, or a named source (:mod:`mmrad.models.sources`) gives
    its timm tower at its native size. An ``hf-hub:`` name needs ``allow_network`` (only
    :func:`mmrad.models.pretrained.load_pretrained_towers` sets it).
    """
    source = resolve_source(cfg.pretrained, VISION_SOURCES)
    if cfg.model_cfg is not None:
        model_cfg = copy.deepcopy(cfg.model_cfg)
        timm_name = model_cfg.get("vision_cfg", {}).get("timm_model_name")
        if source is not None and timm_name != source.timm_model:
            raise ConfigError(
                f"model.vision.pretrained {source.name!r} holds {source.timm_model} weights, but model_cfg builds "
                f"{timm_name or 'a non-timm tower'}"
            )
        return model_cfg
    if cfg.model_name is None:
        if source is None:
            raise ConfigError(
                f"model.vision.pretrained {cfg.pretrained!r} is not a named source ({', '.join(VISION_SOURCES)}): "
                "set model_name or model_cfg to say which architecture it holds"
            )
        return source.model_cfg()
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
    fit_timm_input_size(visual, vision_cfg)
    return VisionTower(visual, token_layer)


def fit_timm_input_size(visual: nn.Module, vision_cfg: dict) -> None:
    """open_clip's TimmModel builds the trunk at the timm default size; move it to the configured one."""
    if isinstance(visual, TimmModel) and hasattr(visual.trunk, "set_input_size"):
        size = vision_cfg.get("image_size", 224)
        default = getattr(visual.trunk, "default_cfg", {}).get("input_size", (3, size, size))[-1]
        current = getattr(getattr(visual.trunk, "patch_embed", None), "img_size", (default,))[0]
        if current != size:
            visual.set_input_size(size)
