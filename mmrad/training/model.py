"""The model a run trains: ``train.init_from`` (a saved model), the pretrained towers the config names, or random
towers; then frozen towers, LoRA, gradient checkpointing and activation recompute as configured."""

from __future__ import annotations

from mmrad.config.schema import ExperimentConfig
from mmrad.errors import MMRadError


def build_model(cfg: ExperimentConfig):
    """The model to train: ``train.init_from`` (a saved model), the pretrained towers, or random towers."""
    from mmrad.models.lora import apply_lora
    from mmrad.models.modeling import MMRadModel
    from mmrad.models.outputs import resolve_labels

    if cfg.train.init_from:
        model = MMRadModel.from_pretrained(cfg.train.init_from)
        if model.label_names != resolve_labels(cfg.model.labels)[0]:
            raise MMRadError(
                f"train.init_from {cfg.train.init_from}: its findings {model.label_names} differ from the config's"
            )
        model.config.loss = cfg.model.loss  # the stage's loss weights; the architecture comes from the folder
    elif names_pretrained_weights(cfg.model):
        model = MMRadModel.from_towers(cfg.model)
    else:
        model = MMRadModel(cfg.model)
    if cfg.train.freeze_vision:
        model.vision.requires_grad_(False)
    if cfg.train.freeze_text:
        model.text.requires_grad_(False)
    if cfg.lora.enabled:
        apply_lora(model, cfg.lora)
    if cfg.train.gradient_checkpointing:
        model.set_grad_checkpointing(True)
    if cfg.train.recompute_activations:
        model.set_activation_recompute(True)
    return model


def names_pretrained_weights(model_cfg) -> bool:
    """The config asks for pretrained towers: an open_clip tag or file, an hf-hub:/local-dir: model, or a text
    encoder named by id or folder without a config dict to build it from."""
    vision, text = model_cfg.vision, model_cfg.text
    return bool(
        vision.pretrained
        or str(vision.model_name or "").startswith(("hf-hub:", "local-dir:"))
        or (text.source == "hf" and text.name_or_path and not text.hf_config)
    )


def is_tower(name: str) -> bool:
    from mmrad.models.pretrained import is_tower_parameter

    return is_tower_parameter(name)
