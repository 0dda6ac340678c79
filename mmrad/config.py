"""Typed configuration: YAML -> dataclasses -> ``config.json`` next to the weights.

The model config (:class:`MMRadConfig`, with its :class:`PreprocessConfig`) is the only part saved with a model and
holds everything needed to rebuild it offline. Data, training and LoRA settings live in separate dataclasses and are
combined into an :class:`ExperimentConfig` only by :func:`load_config`.

Every dataclass is built through :func:`from_dict`, which checks types against the field annotations, turns nested
dicts into sub-dataclasses, and rejects unknown keys with an error naming the full key path.
"""

from __future__ import annotations

import ast
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from mmrad.errors import MMRadError

T = TypeVar("T")

UNCERTAINTY_POLICIES = ("ignore", "ones", "zeros")


class ConfigError(MMRadError, ValueError):
    """A configuration value or key is invalid; the message names the key."""


# ----------------------------------------------------------------------------------------------------------------
# Model configuration (saved with the weights)
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class VisionConfig:
    model_name: str | None = None  # open_clip model name ("ViT-B-16") or "hf-hub:org/repo"; None = use model_cfg
    pretrained: str | None = None  # open_clip pretrained tag, local checkpoint path, or None for random init
    model_cfg: dict | None = (
        None  # full open_clip model config dict ({"embed_dim", "vision_cfg", ...}) for offline builds
    )
    token_layer: int = -1  # the block/stage whose output gives the patch tokens: -1 the last, -2 the one before

    def __post_init__(self):
        if self.model_name is None and self.model_cfg is None:
            raise ConfigError("model.vision: set model_name or model_cfg")
        if self.token_layer >= 0:
            raise ConfigError(f"model.vision.token_layer counts from the end (-1, -2, ...), got {self.token_layer}")


@dataclass
class TextConfig:
    source: Literal["hf", "open_clip"] = "hf"  # a Hugging Face encoder, or the text tower of the open_clip checkpoint
    name_or_path: str | None = None  # HF model id or local folder (source="hf")
    hf_config: dict | None = None  # AutoConfig.to_dict() with model_type, for offline builds
    tokenizer: str | None = None  # tokenizer id or folder; defaults to name_or_path
    pooler: Literal["cls", "mean"] = "cls"  # how token states become one report vector
    max_length: int = 128  # tokens per text (longer texts are truncated)
    trust_remote_code: bool = False  # never on unless the user asks for it

    def __post_init__(self):
        if self.source == "hf" and self.name_or_path is None and self.hf_config is None:
            raise ConfigError("model.text: set name_or_path or hf_config")
        if self.max_length < 1:
            raise ConfigError(f"model.text.max_length must be >= 1, got {self.max_length}")


@dataclass
class FusionConfig:
    num_layers: int = 2  # query-decoder layers
    num_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    attention_layers: int = 1  # grounding maps average the cross-attention of the last k layers
    self_attention: bool = True  # queries attend to each other; off = each query is scored on its own
    # a query's logit: "head" (linear head on the decoded query), "evidence" (log-mean-exp over patches of the
    # last layer's cross-attention logits, as in attention-MIL: sharper maps, better zero-shot), or their sum "both"
    presence: Literal["head", "evidence", "both"] = "head"

    def __post_init__(self):
        if self.num_layers < 1 or self.num_heads < 1:
            raise ConfigError("model.fusion: num_layers and num_heads must be >= 1")
        if not 1 <= self.attention_layers <= self.num_layers:
            raise ConfigError(
                f"model.fusion.attention_layers must be in [1, {self.num_layers}], got {self.attention_layers}"
            )


@dataclass
class LabelsConfig:
    vocabulary: str = "chexpert"  # "chexpert", "nih14" or a YAML file (names and mention phrases)
    names: list[str] = field(default_factory=list)  # finding names; empty = all of the vocabulary
    descriptions: dict[str, str] = field(default_factory=dict)  # finding -> query text; default = the name
    uncertainty: str | dict[str, str] = "ignore"  # "ignore" | "ones" | "zeros", or per finding

    def __post_init__(self):
        policies = self.uncertainty.values() if isinstance(self.uncertainty, dict) else [self.uncertainty]
        for policy in policies:
            if policy not in UNCERTAINTY_POLICIES:
                raise ConfigError(f"model.labels.uncertainty: {policy!r} is not one of {UNCERTAINTY_POLICIES}")


@dataclass
class PreprocessConfig:
    image_size: int = 224  # the vision tower's input size (square)
    mean: list[float] = field(default_factory=lambda: [0.48145466, 0.4578275, 0.40821073])
    std: list[float] = field(default_factory=lambda: [0.26862954, 0.26130258, 0.27577711])
    channels: int = 3  # grey images are repeated to this many channels
    window: str = "auto"  # DICOM VOI policy: "auto" (VOI LUT / window when present), "none", "minmax"
    invert_monochrome1: bool = True  # MONOCHROME1 is inverted so bone is bright
    resize: Literal["pad", "crop", "squash"] = "pad"  # how a non-square image meets the square input

    def __post_init__(self):
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ConfigError(f"model.preprocess: mean/std need {self.channels} values")
        if self.window not in ("auto", "none", "minmax"):
            raise ConfigError(f"model.preprocess.window: {self.window!r} is not one of auto, none, minmax")
        if self.image_size < 8:
            raise ConfigError(f"model.preprocess.image_size must be >= 8, got {self.image_size}")


@dataclass
class LossConfig:
    contrastive: float = 1.0  # image<->report InfoNCE weight
    classification: float = 1.0  # multi-label BCE on finding queries
    local: float = 0.0  # GLoRIA-style word<->patch alignment (0 = off)
    local_temperature: float = 0.1


@dataclass
class MMRadConfig:
    vision: VisionConfig
    text: TextConfig
    fusion: FusionConfig = field(default_factory=FusionConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    projection_dim: int = 256  # joint image/text embedding size
    init_temperature: float = 0.07  # initial InfoNCE temperature (learned)

    def __post_init__(self):
        _coerce_nested(self)
        if self.projection_dim < 1:
            raise ConfigError(f"model.projection_dim must be >= 1, got {self.projection_dim}")
        if not 0 < self.init_temperature < 1:
            raise ConfigError(f"model.init_temperature must be in (0, 1), got {self.init_temperature}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> MMRadConfig:
        return from_dict(cls, data, "model")


# ----------------------------------------------------------------------------------------------------------------
# Experiment configuration (not saved with the weights)
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    corpus: str | None = None  # an ingested corpus folder (mmrad ingest)
    text_field: Literal["report", "findings", "impression", "findings_impression"] = "findings_impression"
    batch_size: int = 32
    eval_batch_size: int = 64
    num_workers: int | None = None  # loader processes; None = one per core the step leaves free, 1 to 4
    augment: bool = True  # random crops/intensity; never left/right flips (laterality is clinical information)

    def __post_init__(self):
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ConfigError("data: batch sizes must be >= 1")
        if self.num_workers is not None and self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers}")


@dataclass
class TrainConfig:
    lr: float = 1.0e-4  # new modules (fusion, projections, heads)
    tower_lr: float = 2.0e-5  # tower or LoRA parameters
    weight_decay: float = 0.01
    warmup_steps: int = 50
    max_steps: int = 1000
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"  # auto = bf16 on capable GPUs, fp32 on CPU
    eval_every: int = 100
    save_every: int = 100
    keep_last: int = 2  # checkpoints kept under out/checkpoints
    patience: int = 0  # evaluations without improvement before stopping (0 = never stop early)
    seed: int = 0
    log_with: str | None = "tensorboard"
    freeze_vision: bool = False  # without LoRA: train the vision tower in full unless frozen
    freeze_text: bool = False
    gradient_checkpointing: bool = False
    init_from: str | None = None  # a saved model folder whose weights start this run (e.g. a pre-training stage)

    def __post_init__(self):
        for name in ("lr", "tower_lr"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name} must be > 0, got {getattr(self, name)}")
        for name in ("max_steps", "gradient_accumulation_steps", "eval_every", "save_every", "keep_last"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class LoraSettings:
    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    vision_targets: list[str] | None = None  # None = the defaults for the tower's architecture
    text_targets: list[str] | None = None
    towers: list[str] = field(default_factory=lambda: ["vision", "text"])

    def __post_init__(self):
        if self.r < 1:
            raise ConfigError(f"lora.r must be >= 1, got {self.r}")
        for tower in self.towers:
            if tower not in ("vision", "text"):
                raise ConfigError(f"lora.towers: {tower!r} is not 'vision' or 'text'")


@dataclass
class ExperimentConfig:
    model: MMRadConfig
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)

    def __post_init__(self):
        _coerce_nested(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------------------------
# Building dataclasses from plain data, with type checks
# ----------------------------------------------------------------------------------------------------------------


def from_dict(cls: type[T], data: Any, path: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, checking keys and types; errors name the key path."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        keys = ", ".join(_join(path, k) for k in unknown)
        raise ConfigError(f"unknown config key(s): {keys} (known: {', '.join(fields)})")
    kwargs = {name: _check(hints[name], value, _join(path, name)) for name, value in data.items()}
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"missing config key(s): {', '.join(_join(path, n) for n in missing)}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{path or cls.__name__}: {err}") from err


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _check(tp: Any, value: Any, path: str) -> Any:
    """Return ``value`` converted to type ``tp`` or raise ConfigError naming ``path``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _check(arg, value, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{path}: {value!r} does not match {_name(tp)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        item = args[0] if args else Any
        return [_check(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__} {value!r}")
        if not args:
            return dict(value)
        return {_check(args[0], k, f"{path}.{k}"): _check(args[1], v, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: expected a string, got {type(value).__name__} {value!r}")
    raise ConfigError(f"{path}: unsupported type {_name(tp)}")


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce_nested(obj: Any) -> None:
    """Turn nested dicts of a directly constructed dataclass into sub-dataclasses (with the same checks)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        tp, value = hints[f.name], getattr(obj, f.name)
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            setattr(obj, f.name, from_dict(tp, value, f.name))


# ----------------------------------------------------------------------------------------------------------------
# YAML and overrides
# ----------------------------------------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value``: the value through ``ast.literal_eval``, falling back to the raw string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form key.path=value")
    try:
        value = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError):
        value = raw.strip()
    if isinstance(value, tuple):
        value = list(value)
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``key.path=value`` overrides to a nested dict (in place) and return it."""
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for i, key in enumerate(keys[:-1]):
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(keys[: i + 1])} is not a section")
            node = child
        node[keys[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: config file not found") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load an experiment config from YAML, apply ``--set`` style overrides, and check it.

    Args:
        path: a YAML file with sections ``model``, ``data``, ``train`` and ``lora``.
        overrides: ``["train.lr=3.0e-4", "model.fusion.num_layers=2"]``.

    Returns:
        The checked :class:`ExperimentConfig`.

    Raises:
        ConfigError: unknown keys, wrong types or bad values, naming the key.
    """
    data = apply_overrides(read_yaml(path), overrides or [])
    try:
        return from_dict(ExperimentConfig, data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err
