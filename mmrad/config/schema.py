"""Typed configuration: YAML -> dataclasses -> ``config.json`` next to the weights.

The model config (:class:`MMRadConfig`, with its :class:`PreprocessConfig`) is the only part saved with a model and
holds everything needed to rebuild it offline. Data, training and LoRA settings live in separate dataclasses and are
combined into an :class:`ExperimentConfig` only by :func:`load_config`.

Every dataclass is built through :func:`mmrad.config.yamlio.from_dict`, which checks types against the field
annotations, turns nested dicts into sub-dataclasses, and rejects unknown keys with an error naming the full key path.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mmrad.config.yamlio import ConfigError, apply_overrides, coerce_nested, from_dict, read_yaml

__all__ = [  # ConfigError lives in mmrad.config.yamlio and is re-exported here, next to the settings it guards
    "UNCERTAINTY_POLICIES", "ConfigError", "DataConfig", "ExperimentConfig", "FusionConfig", "LabelsConfig",
    "LoraSettings", "LossConfig", "MMRadConfig", "PreprocessConfig", "TextConfig", "TrainConfig", "VisionConfig",
    "load_config",
]  # fmt: skip

UNCERTAINTY_POLICIES = ("ignore", "ones", "zeros")


# ----------------------------------------------------------------------------------------------------------------
# Model configuration (saved with the weights)
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class VisionConfig:
    model_name: str | None = None  # open_clip model name ("ViT-B-16") or "hf-hub:org/repo"; None = use model_cfg
    # open_clip pretrained tag, local checkpoint path, a named offline source (mmrad.models.sources, e.g.
    # "efficientnet-lite2-imagenet"), or None for random init
    pretrained: str | None = None
    model_cfg: dict | None = (
        None  # full open_clip model config dict ({"embed_dim", "vision_cfg", ...}) for offline builds
    )
    token_layer: int = -1  # the block/stage whose output gives the patch tokens: -1 the last, -2 the one before

    def __post_init__(self):
        # a named pretrained source (mmrad.models.sources) also gives the architecture: checked when it is resolved
        if self.model_name is None and self.model_cfg is None and self.pretrained is None:
            raise ConfigError("model.vision: set model_name, model_cfg or a named pretrained source")
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
    num_heads: int = 4  # attention heads of each decoder layer (self- and cross-attention)
    mlp_ratio: float = 4.0  # hidden size of each layer's MLP, as a multiple of the query width
    dropout: float = 0.0  # dropout on the decoder's attention weights and MLP (training only)
    attention_layers: int = 1  # grounding maps average the cross-attention of the last k layers
    self_attention: bool = True  # queries attend to each other; off = each query is scored on its own
    # a query's logit: "head" (linear head on the decoded query), "evidence" (log-mean-exp over patches of the
    # last layer's cross-attention logits, as in attention-MIL: sharper maps, better zero-shot), or their sum "both"
    presence: Literal["head", "evidence", "both"] = "head"
    # "sincos": each patch's 2-D position is added to the cross-attention keys, so queries can learn where findings
    # usually lie (convolutional towers' tokens carry little position); "none" leaves the keys as the tokens
    position: Literal["none", "sincos"] = "none"
    # add a learned scale x cos(global image embedding, query embedding) to each query's logit: a text-conditioned
    # linear classifier over the pooled image features beside the attention; on small real corpora attention over
    # the patches alone overfits (mmrad's NIH benchmark), the pooled features generalise
    global_term: bool = False

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
    mean: list[float] = field(default_factory=lambda: [0.48145466, 0.4578275, 0.40821073])  # per channel (CLIP's)
    std: list[float] = field(default_factory=lambda: [0.26862954, 0.26130258, 0.27577711])  # per channel (CLIP's)
    channels: int = 3  # grey images are repeated to this many channels
    # DICOM VOI policy: "auto" (VOI LUT / window when present), "none", "minmax", or "center,width" (e.g. "40,400")
    window: str = "auto"
    invert_monochrome1: bool = True  # MONOCHROME1 is inverted so bone is bright
    resize: Literal["pad", "crop", "squash"] = "pad"  # how a non-square image meets the square input
    # the longest side images are decoded to before the fit: the image cache size of the corpus the model was
    # trained on (set by training), so that inference sees exactly what training saw; None = straight to the fit
    decode_size: int | None = None

    def __post_init__(self):
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ConfigError(f"model.preprocess: mean/std need {self.channels} values")
        if self.window not in ("auto", "none", "minmax"):
            try:
                _center, width = (float(v) for v in str(self.window).split(","))
            except ValueError:
                width = None
            if width is None or width <= 0:
                raise ConfigError(
                    f"model.preprocess.window: {self.window!r} is not auto, none, minmax or 'center,width' (width > 0)"
                )
        if self.decode_size is not None and self.decode_size < 8:
            raise ConfigError(f"model.preprocess.decode_size must be >= 8 (or null), got {self.decode_size}")
        if self.image_size < 8:
            raise ConfigError(f"model.preprocess.image_size must be >= 8, got {self.image_size}")


@dataclass
class LossConfig:
    contrastive: float = 1.0  # image<->report InfoNCE weight
    classification: float = 1.0  # multi-label BCE on finding queries
    local: float = 0.0  # GLoRIA-style word<->patch alignment (0 = off)
    local_temperature: float = 0.1  # temperature of the word<->patch similarities of the local loss
    # attention supervision: KL divergence from each present finding's mask (or box), pooled to the patch grid, to
    # that finding query's cross-attention over the patches (0 = off; needs a corpus with masks or boxes)
    grounding: float = 0.0

    def __post_init__(self):
        for name in ("contrastive", "classification", "local", "grounding"):
            if getattr(self, name) < 0:
                raise ConfigError(f"model.loss.{name} must be >= 0, got {getattr(self, name)}")
        if self.local_temperature <= 0:
            raise ConfigError(f"model.loss.local_temperature must be > 0, got {self.local_temperature}")


@dataclass
class MMRadConfig:
    vision: VisionConfig  # the image tower (an open_clip visual tower)
    text: TextConfig  # the text tower (a Hugging Face encoder or an open_clip text tower)
    fusion: FusionConfig = field(default_factory=FusionConfig)  # the cross-attention query decoder
    labels: LabelsConfig = field(default_factory=LabelsConfig)  # the findings the model predicts
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)  # image decoding and input
    loss: LossConfig = field(default_factory=LossConfig)  # the weight of each loss term
    projection_dim: int = 256  # joint image/text embedding size
    init_temperature: float = 0.07  # initial InfoNCE temperature (learned)

    def __post_init__(self):
        coerce_nested(self)
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
    # the report text the model reads (an empty section falls back to the whole report)
    text_field: Literal["report", "findings", "impression", "findings_impression"] = "findings_impression"
    batch_size: int = 32  # training images per step and process (before gradient accumulation)
    eval_batch_size: int = 64  # images per batch in validation
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
    weight_decay: float = 0.01  # AdamW weight decay
    warmup_steps: int = 50  # linear warm-up, then cosine decay to max_steps
    max_steps: int = 1000  # optimiser steps of the run
    epochs: int | None = None  # when set, max_steps = epochs x the optimiser steps of one pass over the train split
    gradient_accumulation_steps: int = 1  # batches per optimiser step
    max_grad_norm: float = 1.0  # gradient clipping (0 = off)
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"  # auto = bf16 on capable GPUs, fp32 on CPU
    eval_every: int = 100  # steps between validations (the best model is exported)
    save_every: int = 100  # steps between checkpoints (for --resume)
    keep_last: int = 2  # checkpoints kept under out/checkpoints
    patience: int = 0  # evaluations without improvement before stopping (0 = never stop early)
    seed: int = 0  # seeds initialisation, data order and augmentation
    log_with: str | None = "tensorboard"  # Accelerate tracker for out/logs (null = no logs)
    freeze_vision: bool = False  # without LoRA: train the vision tower in full unless frozen
    freeze_text: bool = False  # without LoRA: train the text tower in full unless frozen
    gradient_checkpointing: bool = False  # recompute the towers' blocks in the backward pass: less memory
    # keep each tower MLP's activation input, not its output, for the backward pass (recomputed there; see
    # mmrad/models/recompute.py): less activation memory for one more pointwise pass per MLP
    recompute_activations: bool = True
    init_from: str | None = None  # a saved model folder whose weights start this run (e.g. a pre-training stage)
    # an exponential moving average of the weights, used for validation and the exported model (0 = off; e.g.
    # 0.99 averages over roughly the last 100 steps)
    ema_decay: float = 0.0

    def __post_init__(self):
        for name in ("lr", "tower_lr"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name} must be > 0, got {getattr(self, name)}")
        for name in ("max_steps", "gradient_accumulation_steps", "eval_every", "save_every", "keep_last"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"train.epochs must be >= 1 (or null), got {self.epochs}")


@dataclass
class LoraSettings:
    enabled: bool = False  # add LoRA adapters to the towers named in towers (their base weights freeze)
    r: int = 8  # adapter rank
    alpha: int = 16  # adapter scale (the update is multiplied by alpha / r)
    dropout: float = 0.0  # dropout on the adapters' input (costs activation memory)
    vision_targets: list[str] | None = None  # None = the defaults for the tower's architecture
    text_targets: list[str] | None = None  # None = the defaults for the text tower's model type
    towers: list[str] = field(default_factory=lambda: ["vision", "text"])  # which towers get adapters

    def __post_init__(self):
        if self.r < 1:
            raise ConfigError(f"lora.r must be >= 1, got {self.r}")
        for tower in self.towers:
            if tower not in ("vision", "text"):
                raise ConfigError(f"lora.towers: {tower!r} is not 'vision' or 'text'")


@dataclass
class ExperimentConfig:
    model: MMRadConfig  # the model (saved with the weights as config.json)
    data: DataConfig = field(default_factory=DataConfig)  # the corpus and its loaders
    train: TrainConfig = field(default_factory=TrainConfig)  # optimisation, evaluation and checkpoints
    lora: LoraSettings = field(default_factory=LoraSettings)  # LoRA adapters on the towers

    def __post_init__(self):
        coerce_nested(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------------------------
# Loading an experiment
# ----------------------------------------------------------------------------------------------------------------


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load an experiment config from YAML, apply ``--set`` style overrides, and check it.

    Args:
        path: a YAML file with sections ``model``, ``data``, ``train`` and ``lora``, or the name of a shipped config
            (:func:`mmrad.config.registry.list_configs`: ``"tiny"``, ``"nih-effnet-lite2"``, ...).
        overrides: ``["train.lr=3.0e-4", "model.fusion.num_layers=2"]``.

    Returns:
        The checked :class:`ExperimentConfig`.

    Raises:
        ConfigError: unknown keys, wrong types or bad values, naming the key.
    """
    from mmrad.config.registry import resolve_config

    path = resolve_config(path)
    data = apply_overrides(read_yaml(path), overrides or [])
    try:
        return from_dict(ExperimentConfig, data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err
