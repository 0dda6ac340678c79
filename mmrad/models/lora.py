"""LoRA adapters on the towers through peft; adapter state, merging, and a trainable-parameter summary.

Default targets per architecture (``LoraSettings.vision_targets`` / ``text_targets`` override them; a target is a
module name or a dotted suffix of one, as in peft):

* open_clip ViT and native open_clip text: ``attn`` — the ``nn.MultiheadAttention`` module itself, which peft adapts
  as a whole (packed q/k/v and the output projection); its ``out_proj`` alone would be silently bypassed because MHA
  reads that weight directly — plus ``mlp.c_fc`` and ``mlp.c_proj``. Its adapters run unmerged
  (:mod:`mmrad.models.lora_attention`) instead of peft's merge-per-forward;
* timm ViT (BiomedCLIP): ``attn.qkv``, ``attn.proj``, ``mlp.fc1``, ``mlp.fc2``;
* ResNets (open_clip ModifiedResNet, timm CNNs): the convolutions ``conv1``, ``conv2``, ``conv3``. ModifiedResNet's
  attention pool is not adapted: it passes its projection weights to ``F.multi_head_attention_forward`` directly;
* BERT-family text encoders: ``query``, ``key``, ``value``, ``dense``.

Every target must match a module (the error lists the names that exist), and :func:`apply_lora` runs one small
forward/backward through each adapted tower to check that every adapter really receives a gradient: an adapter that
the tower's forward bypasses is an error, not a silent no-op. The projections, decoder and head stay fully trainable.
"""

from __future__ import annotations

import dataclasses
import logging

import torch
from torch import nn

from mmrad.config.schema import ConfigError, LoraSettings

logger = logging.getLogger(__name__)

VIT_TARGETS = ["attn", "mlp.c_fc", "mlp.c_proj"]
TIMM_VIT_TARGETS = ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"]
CONV_TARGETS = ["conv1", "conv2", "conv3"]
HF_TARGETS = {
    "bert": ["query", "key", "value", "dense"],
    "roberta": ["query", "key", "value", "dense"],
    "xlm-roberta": ["query", "key", "value", "dense"],
    "electra": ["query", "key", "value", "dense"],
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
    "modernbert": ["Wqkv", "Wo", "Wi"],
}


def _tower_module(model, tower: str) -> nn.Module:
    return model.vision.visual if tower == "vision" else model.text.encoder


def default_targets(model, tower: str) -> list[str]:
    """The default LoRA targets of one tower ("vision" or "text") of ``model``."""
    if tower == "vision":
        kind = model.vision.kind
        if kind == "vit":
            return list(VIT_TARGETS)
        if kind == "resnet":
            return list(CONV_TARGETS)
        names = [n for n, _ in model.vision.visual.named_modules()]
        if any(n.endswith("attn.qkv") for n in names):
            return list(TIMM_VIT_TARGETS)
        return [t for t in CONV_TARGETS if any(n.endswith("." + t) for n in names)] or list(CONV_TARGETS)
    if model.text.kind == "open_clip":
        return list(VIT_TARGETS)
    model_type = model.text.hf_config.model_type
    if model_type not in HF_TARGETS:
        raise ConfigError(
            f"lora: no default text targets for model_type {model_type!r}; set lora.text_targets "
            f"(known defaults: {', '.join(HF_TARGETS)})"
        )
    return list(HF_TARGETS[model_type])


def resolve_targets(module: nn.Module, targets: list[str], where: str) -> list[str]:
    """Full module names matched by ``targets`` (exact names or dotted suffixes); unmatched targets are errors."""
    names = [n for n, _ in module.named_modules() if n]
    matched, unmatched = [], []
    for target in targets:
        hits = [n for n in names if n == target or n.endswith("." + target)]
        (matched if hits else unmatched).extend(hits or [target])
    if unmatched:
        leaves = sorted({n.split(".")[-1] for n in names})
        raise ConfigError(
            f"lora.{where}_targets: {unmatched} match no module of the {where} tower. "
            f"Module names there: {', '.join(leaves)}"
        )
    return sorted(set(matched))


def apply_lora(model, settings: LoraSettings):
    """Inject peft LoRA adapters into the towers named in ``settings.towers``; freeze those towers' base weights.

    All targets are checked before anything changes, and a failed check leaves the model as it was.

    Returns:
        ``model`` (changed in place), with ``model.lora_settings`` recording the targets used.
    """
    from peft import LoraConfig, inject_adapter_in_model

    if model.lora_settings is not None:
        raise ConfigError("LoRA is already applied to this model (merge_lora first to apply new adapters)")
    recorded = dataclasses.replace(settings, enabled=True)
    plan = {}
    for tower in settings.towers:
        targets = getattr(settings, f"{tower}_targets") or default_targets(model, tower)
        plan[tower] = (targets, resolve_targets(_tower_module(model, tower), targets, tower))
        setattr(recorded, f"{tower}_targets", list(targets))
    requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        for tower, (targets, names) in plan.items():
            module = _tower_module(model, tower)
            config = LoraConfig(
                r=settings.r,
                lora_alpha=settings.alpha,
                lora_dropout=settings.dropout,
                target_modules=names,
                bias="none",
            )
            if hasattr(config, "_register_custom_module"):  # MHA adapters that never merge (lora_attention.py)
                from mmrad.models.lora_attention import UnmergedLoraMultiheadAttention

                config._register_custom_module({nn.MultiheadAttention: UnmergedLoraMultiheadAttention})
            inject_adapter_in_model(config, module)
            for name, param in module.named_parameters():
                param.requires_grad = "lora_" in name
            _check_adapters_reached(model, tower, module)
            logger.info("LoRA r=%d on %d %s modules (%s)", settings.r, len(names), tower, ", ".join(targets))
    except Exception:
        for tower in plan:
            _unload(_tower_module(model, tower), merge=False)
        for name, param in model.named_parameters():
            param.requires_grad = requires_grad.get(name, True)
        raise
    model.lora_settings = recorded
    model.clear_query_cache()
    return model


def _check_adapters_reached(model, tower: str, module: nn.Module) -> None:
    """One tiny forward/backward: every adapter parameter must receive a gradient (peft cannot see bypasses)."""
    was_training = module.training
    module.eval()  # no dropout, no BatchNorm statistics update
    lora = {n: p for n, p in module.named_parameters() if "lora_" in n}
    try:
        with torch.enable_grad():
            if tower == "vision":
                size = model.vision.image_size
                out = model.vision(torch.zeros(1, 3, size, size, device=model.device))
            else:
                enc = model.tokenize(["chest"])
                out = model.text(enc["input_ids"], enc["attention_mask"])
            total = sum(o.float().sum() for o in out[:2])
            if total.requires_grad:
                total.backward()
        missed = sorted({n.rsplit(".lora_", 1)[0] for n, p in lora.items() if p.grad is None})
    finally:
        for p in lora.values():
            p.grad = None
        module.train(was_training)
    if missed:
        raise ConfigError(
            f"lora.{tower}_targets: the {tower} tower's forward bypasses the adapters of {missed}. For open_clip "
            "attention target the nn.MultiheadAttention module ('attn'), not 'attn.out_proj'"
        )


def _unload(root: nn.Module, merge: bool) -> None:
    """Replace every peft layer under ``root`` by its base layer, merging the adapter into it when ``merge``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = {n for n, m in root.named_modules() if isinstance(m, BaseTunerLayer)}
    # outermost adapter layers only: peft's MHA layer wraps its out_proj, which it unloads itself
    for name in [n for n in layers if not any(n.startswith(o + ".") for o in layers)]:
        parent_name, _, child = name.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        layer = getattr(parent, child)
        if hasattr(layer, "unload_and_optionally_merge_module"):
            base = layer.unload_and_optionally_merge_module(merge=merge, safe_merge=True, adapter_names=None)
        else:
            if merge:
                layer.merge(safe_merge=True)
            base = layer.get_base_layer()
        setattr(parent, child, base)
    if hasattr(root, "peft_config"):  # set by inject_adapter_in_model; stale once the layers are gone
        del root.peft_config


def merge_lora(model):
    """Merge every adapter into its base weights and remove the peft layers (outputs unchanged); returns ``model``.
    The merged towers are fully trainable again."""
    if model.lora_settings is None:
        return model
    for tower in model.lora_settings.towers:
        root = _tower_module(model, tower)
        _unload(root, merge=True)
        for param in root.parameters():
            param.requires_grad = True
    model.lora_settings = None
    model.clear_query_cache()
    return model


def is_adapter_key(name: str, buffers: set[str]) -> bool:
    """State-dict keys saved by an adapter-only save: LoRA weights, every new module, and the towers' buffers (e.g.
    BatchNorm statistics, which training moves even when the weights are frozen)."""
    from mmrad.models.pretrained import is_tower_parameter

    return not is_tower_parameter(name) or "lora_" in name or name in buffers


def adapter_state_dict(model) -> dict[str, torch.Tensor]:
    """The state of an adapter-only save (see :func:`is_adapter_key`)."""
    buffers = {n for n, _ in model.named_buffers()}
    return {k: v for k, v in model.state_dict().items() if is_adapter_key(k, buffers)}


def trainable_summary(model) -> str:
    """A table of trainable vs total parameters per component (towers, LoRA adapters, new modules)."""
    rows: dict[str, list[int]] = {}
    for name, param in model.named_parameters():
        top = name.split(".")[0]
        component = f"{top} (LoRA)" if "lora_" in name else top
        row = rows.setdefault(component, [0, 0])
        row[0] += param.numel() if param.requires_grad else 0
        row[1] += param.numel()
    total_trainable = sum(r[0] for r in rows.values())
    total = sum(r[1] for r in rows.values())
    width = max(len(k) for k in [*rows, "component"]) + 2
    lines = [f"{'component':<{width}}{'trainable':>14}{'total':>14}{'%':>8}"]
    for component, (trainable, count) in rows.items():
        lines.append(f"{component:<{width}}{trainable:>14,}{count:>14,}{100 * trainable / max(count, 1):>8.2f}")
    lines.append(f"{'all':<{width}}{total_trainable:>14,}{total:>14,}{100 * total_trainable / max(total, 1):>8.2f}")
    return "\n".join(lines)
