"""Pretrained tower weights: the only place that reads tower checkpoints (``MMRadModel.from_towers``).

:func:`load_pretrained_towers` builds both towers from an open_clip tag, checkpoint file, ``local-dir:`` folder or
``hf-hub:`` id and from a Hugging Face folder or Hub id; local pickle files are refused unless they hold only tensors
(:func:`check_tensor_file`). :func:`adopt_preprocess` makes the config's preprocessing match the pretrained tower,
:func:`model_from_towers` builds the model around them, and :func:`is_tower_parameter` tells the pretrained towers'
parameters from the newly initialised ones.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.hf_model import HFTextEncoder
from open_clip.model import _build_text_tower
from torch import nn

from mmrad.config.schema import ConfigError, MMRadConfig, TextConfig, VisionConfig
from mmrad.errors import UnsafeFileError
from mmrad.models.sources import (
    VISION_SOURCES,
    is_open_clip_checkpoint,
    load_timm_checkpoint,
    read_state_dict,
    resolve_source,
    resolve_text_name,
)
from mmrad.models.text_tower import TextTower, build_text_tower, build_tokenizer, is_local_dir
from mmrad.models.vision_tower import VisionTower, build_vision_tower, fit_timm_input_size, resolve_model_cfg

logger = logging.getLogger(__name__)

TOWER_PREFIXES = ("vision.", "text.")


def is_tower_parameter(name: str) -> bool:
    """True for parameters of the pretrained towers (LoRA adapters inside them included); False for the new modules
    (projections, decoder, head, temperature)."""
    return name.startswith(TOWER_PREFIXES)


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


def _timm_trunk_weights(vision: VisionConfig, model_cfg: dict) -> tuple[dict, str, dict | None] | None:
    """``(state dict, its name, preprocessing)`` when ``vision.pretrained`` is a named source or a local checkpoint
    of a bare timm trunk for the config's timm tower; None for everything open_clip loads itself."""
    source = resolve_source(vision.pretrained, VISION_SOURCES)
    if source is not None:
        return read_state_dict(source.locate()), source.name, source.preprocess_cfg()
    is_timm = "timm_model_name" in model_cfg.get("vision_cfg", {})
    if not is_timm or vision.model_name is not None or not vision.pretrained or not Path(vision.pretrained).is_file():
        return None
    check_tensor_file(vision.pretrained)
    state = read_state_dict(vision.pretrained)
    return None if is_open_clip_checkpoint(state) else (state, str(vision.pretrained), None)


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
    trunk_weights = _timm_trunk_weights(vision, model_cfg)
    clip = None if trunk_weights is not None else _open_clip_with_weights(vision, model_cfg)
    preprocess = None
    if trunk_weights is not None:
        state, where, preprocess = trunk_weights
        vision_tower = build_vision_tower(model_cfg, vision.token_layer)
        logger.info("loading the timm vision tower %s from %s", model_cfg["vision_cfg"]["timm_model_name"], where)
        load_timm_checkpoint(vision_tower.visual.trunk, state, where=where)
    elif clip is not None:
        visual = clip.visual
        preprocess = copy.deepcopy(getattr(visual, "preprocess_cfg", None))
        fit_timm_input_size(visual, model_cfg["vision_cfg"])
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
        location = resolve_text_name(text.name_or_path)
        try:
            encoder = AutoModel.from_pretrained(
                location,
                trust_remote_code=text.trust_remote_code,
                local_files_only=is_local_dir(location),
            )  # pickle weights (pytorch_model.bin) are read with weights_only=True
        except pickle.UnpicklingError as err:
            raise UnsafeFileError(
                f"model.text.name_or_path {text.name_or_path}: refused: its weights file holds objects other than "
                "tensors, and a pickle file can run code when loaded; use a model with model.safetensors"
            ) from err
        tower = TextTower(encoder, "hf", text.pooler)
        tokenizer = build_tokenizer(
            text, None, local_files_only=is_local_dir(resolve_text_name(text.tokenizer or text.name_or_path))
        )
    else:
        logger.warning("model.text names no pretrained weights: the text tower is randomly initialised")
        tower, tokenizer = build_text_tower(text, model_cfg)
    hf_cfg = tower.hf_config.to_dict() if tower.hf_config is not None else None
    return vision_tower, tower, tokenizer, model_cfg, hf_cfg, preprocess


def check_towers(config: MMRadConfig, vision: VisionTower, text: TextTower, tokenizer) -> None:
    """The config fits the towers: the input size the vision tower takes, a tokenizer within the text tower's
    vocabulary."""
    if config.preprocess.image_size != vision.image_size:
        raise ConfigError(
            f"model.preprocess.image_size={config.preprocess.image_size} but the vision tower takes "
            f"{vision.image_size} px images"
        )
    hf = text.hf_config
    vocab = getattr(hf, "vocab_size", None) if hf is not None else None
    if vocab is not None and len(tokenizer) > vocab:
        raise ConfigError(
            f"model.text: the tokenizer has {len(tokenizer)} tokens but the text tower's vocab_size is {vocab}"
        )


def adopt_preprocess(config: MMRadConfig, preprocess: dict | None, image_size: int) -> None:
    """Make the config's preprocessing match the pretrained tower (size, mean, std), logging what changed."""
    pre = config.preprocess
    changes = {}
    if pre.image_size != image_size:
        changes["image_size"] = image_size
    if preprocess and pre.channels == 3:
        for key in ("mean", "std"):
            value = [float(v) for v in preprocess.get(key, getattr(pre, key))]
            if value != list(getattr(pre, key)):
                changes[key] = value
    if changes:
        logger.info("model.preprocess follows the pretrained vision tower: %s", changes)
        config.preprocess = dataclasses.replace(pre, **changes)


def model_from_towers(cls, config: MMRadConfig):
    """``cls`` (an :class:`~mmrad.models.modeling.MMRadModel`) built around the pretrained towers ``config`` names,
    its config completed with their model configs and preprocessing (:meth:`MMRadModel.from_towers`)."""
    vision, text, tokenizer, model_cfg, hf_cfg, preprocess = load_pretrained_towers(config.vision, config.text)
    config = copy.deepcopy(config)
    config.vision.model_cfg = model_cfg
    if hf_cfg is not None:
        config.text.hf_config = hf_cfg
    adopt_preprocess(config, preprocess, vision.image_size)
    model = cls(config, vision_tower=vision, text_tower=text, tokenizer=tokenizer)
    model.towers_from_sources = True
    new = [(n, p.numel()) for n, p in model.named_parameters() if not is_tower_parameter(n)]
    groups = sorted({n.split(".")[0] for n, _ in new})
    logger.info(
        "newly initialised (not in the pretrained towers): %s — %d parameters",
        ", ".join(groups),
        sum(k for _, k in new),
    )
    return model
