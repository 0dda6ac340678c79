"""Saving and loading ``MMRadModel`` folders.

A folder holds:

* ``config.json`` — the complete :class:`~mmrad.config.schema.MMRadConfig` (the open_clip ``model_cfg`` dict, the
  Hugging Face text config dict, preprocessing, frozen label names and descriptions) at the top level, plus
  ``model_type``, ``mmrad_version``, ``label_names``, ``lora`` (the LoRA settings when adapters are in the weights),
  ``adapter_only`` and ``base_model``. Everything needed to rebuild the model offline.
* ``model.safetensors`` — every weight; or, for ``adapter_only``, ``adapter_model.safetensors`` with the LoRA weights,
  the new modules and the towers' buffers only. Loading an adapter-only folder first loads the base towers, from
  ``base_model`` (an mmrad folder or Hub repo) or from the config's tower sources (``MMRadModel.from_towers``).
* ``tokenizer/`` — the tokenizer files (none for open_clip's bundled BPE tokenizer).

Loading is strict: a missing or unexpected weight is a :class:`CheckpointError`. Weights are safetensors only;
pickle is never loaded.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mmrad import __version__
from mmrad.config.schema import LoraSettings, MMRadConfig
from mmrad.files import staging_folder
from mmrad.models.card import write_card
from mmrad.models.folder import (
    ADAPTER_WEIGHTS_NAME,
    CONFIG_NAME,
    DATA_SUMMARY_NAME,
    METRICS_NAME,
    MODEL_TYPE,
    PROMPT_BANK_NAME,
    TOKENIZER_DIR,
    WEIGHTS_NAME,
    CheckpointError,
    read_config,
    read_json,
    resolve_folder,
)

logger = logging.getLogger(__name__)


def save_model(model, save_directory: str | Path, *, adapter_only: bool = False, base_model: str | None = None):
    """Write ``model`` to ``save_directory`` (created if needed) and return its path.

    Args:
        model: an ``MMRadModel``.
        adapter_only: write only the LoRA adapters, new modules and tower buffers; needs LoRA to be applied.
        base_model: where the base tower weights come from when loading an adapter-only folder: an mmrad folder or
            Hub repo. Default: the folder the model was loaded from, else its config's tower sources.
    """
    from mmrad.models.lora import adapter_state_dict

    out = Path(save_directory)
    if adapter_only:
        if model.lora_settings is None:
            raise CheckpointError("adapter_only=True needs LoRA adapters (apply_lora); this model has none")
        base_model = base_model or model.name_or_path
        if base_model is None and not model.towers_from_sources:
            raise CheckpointError(
                "adapter_only=True: the base towers are random and saved nowhere. Save the base model first and "
                "load it with MMRadModel.from_pretrained, or pass base_model="
            )
    meta = {
        "model_type": MODEL_TYPE,
        "mmrad_version": __version__,
        "label_names": list(model.label_names),
        "lora": dataclasses.asdict(model.lora_settings) if model.lora_settings is not None else None,
        "adapter_only": adapter_only,
        "base_model": str(base_model) if adapter_only and base_model is not None else None,
        "token_grid": list(model.vision.grid()),  # (h, w) patches at the input size, for the card
    }
    state = adapter_state_dict(model) if adapter_only else model.state_dict()
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    # everything is written into a hidden sibling first: a full disk or a crash leaves `out` as it was
    with staging_folder(out) as staging:
        with open(staging / CONFIG_NAME, "w", encoding="utf-8") as f:
            json.dump({**meta, **model.config.to_dict()}, f, indent=2)
            f.write("\n")
        save_file(state, str(staging / (ADAPTER_WEIGHTS_NAME if adapter_only else WEIGHTS_NAME)),
                  metadata={"format": "pt"})  # fmt: skip
        if hasattr(model.tokenizer, "save_pretrained"):
            model.tokenizer.save_pretrained(str(staging / TOKENIZER_DIR))
        write_prompt_bank(model, staging)
        # the card reads metrics.json / data_summary.json when the folder already has them
        write_card(staging, metrics=read_json(out / METRICS_NAME), data_summary=read_json(out / DATA_SUMMARY_NAME),
                   location=str(out))  # fmt: skip
        out.mkdir(exist_ok=True)
        _publish(staging, out)
        # one weights file per folder, so a folder is never ambiguous
        (out / (WEIGHTS_NAME if adapter_only else ADAPTER_WEIGHTS_NAME)).unlink(missing_ok=True)
    logger.info("saved %s%s to %s", "adapters of " if adapter_only else "", type(model).__name__, out)
    return out


def _publish(staging: Path, out: Path) -> None:
    """Move the staged files into ``out`` by renames (no new space needed); other files in ``out`` stay."""
    for entry in sorted(staging.iterdir(), key=lambda p: p.name == CONFIG_NAME):  # config.json last
        target = out / entry.name
        if target.is_dir() and not target.is_symlink():
            old = staging / f".old-{entry.name}"
            os.replace(target, old)  # a folder cannot be renamed onto a non-empty one: move the old one aside
        os.replace(entry, target)


def write_prompt_bank(model, out: Path) -> Path:
    """``prompt_bank.yaml``: the zero-shot phrasings of the model's findings (the shipped CheXpert bank's where it has
    the finding, else the finding's description), used by default when this model scores free text."""
    import yaml

    from mmrad.config.prompts import load_prompt_bank

    shipped = load_prompt_bank("chexpert")
    findings = {}
    for name, description in zip(model.label_names, model.label_descriptions, strict=True):
        if name in shipped.findings:
            p = shipped.findings[name]
            findings[name] = {"templates": False, "positive": p.positive, "negative": p.negative}
        else:
            findings[name] = {"positive": [description]}
    bank = {"name": f"{MODEL_TYPE}-findings", "templates": shipped.templates, "findings": findings}
    path = out / PROMPT_BANK_NAME
    path.write_text(yaml.safe_dump(bank, sort_keys=False), encoding="utf-8")
    return path


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    """A folder's safetensors weights; pickle weight files are never loaded, and are named when they are all there
    is."""
    if not path.is_file():
        pickles = sorted(p.name for p in path.parent.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"))
        if pickles:
            raise CheckpointError(
                f"{path.parent}: {path.name} is missing; refusing {', '.join(pickles)}: pickle files can run code "
                "when loaded, and mmrad loads weights from safetensors only (convert weights you trust with "
                "safetensors.torch.save_file)"
            )
        raise CheckpointError(f"{path.parent}: {path.name} is missing")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own SafetensorError (header, size) or OSError
        raise CheckpointError(f"{path}: not a valid safetensors file ({err})") from err


def load_model(cls, name_or_path: str | Path, *, revision: str | None = None, trust_remote_code: bool = False):
    """Load a folder written by :func:`save_model` (see the module docstring).

    A folder's ``config.json`` cannot switch on ``text.trust_remote_code`` by itself (it would run code from a
    repository the folder names): the caller must pass ``trust_remote_code=True`` as well.
    """
    from mmrad.models.lora import apply_lora

    folder = resolve_folder(name_or_path, revision)
    meta, config = read_config(folder)
    if config.text.trust_remote_code and not trust_remote_code:
        raise CheckpointError(
            f"{folder / CONFIG_NAME}: the model asks for text.trust_remote_code, which runs code from the text "
            "tower's repository; pass trust_remote_code=True to from_pretrained only if you trust it"
        )
    tokenizer_name = config.text.tokenizer
    if (folder / TOKENIZER_DIR).is_dir():
        config.text.tokenizer = str(folder / TOKENIZER_DIR)  # the saved copy wins; the config keeps the name
    adapter_only = bool(meta["adapter_only"])
    model = _base_for_adapters(cls, config, meta["base_model"], revision) if adapter_only else cls(config)
    if meta["lora"] is not None:
        apply_lora(model, LoraSettings(**meta["lora"]))
    name = ADAPTER_WEIGHTS_NAME if meta["adapter_only"] else WEIGHTS_NAME
    state = _load_weights(folder / name)
    if meta["adapter_only"]:
        from mmrad.models.lora import adapter_state_dict

        expected = set(adapter_state_dict(model))
        _check_keys(folder / name, expected, set(state))
        model.load_state_dict(state, strict=False)
    else:
        _check_keys(folder / name, set(model.state_dict()), set(state))
        model.load_state_dict(state, strict=True)
    if list(model.label_names) != list(meta["label_names"] or model.label_names):
        raise CheckpointError(f"{folder}: label_names in {CONFIG_NAME} do not match the config's labels")
    model.config.text.tokenizer = tokenizer_name
    model.name_or_path = str(name_or_path)
    model.clear_query_cache()
    return model.eval()


def _check_keys(path: Path, expected: set[str], found: set[str]) -> None:
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the model config — missing {len(missing)} {missing[:8]}, "
            f"unexpected {len(unexpected)} {unexpected[:8]}"
        )


def _base_for_adapters(cls, config: MMRadConfig, base_model: str | None, revision: str | None):
    """The model of an adapter-only folder with its base tower weights loaded (adapters not yet applied)."""
    from mmrad.models.pretrained import is_tower_parameter

    if base_model is None:
        return cls.from_towers(config)
    model = cls(copy.deepcopy(config))
    base = resolve_folder(base_model, revision if not Path(base_model).is_dir() else None)
    base_meta, _ = read_config(base)
    if base_meta["adapter_only"] or base_meta["lora"] is not None:
        raise CheckpointError(f"{base}: the base of adapters must be a full model without LoRA (merge_lora it)")
    state = _load_weights(base / WEIGHTS_NAME)
    towers = {k: v for k, v in state.items() if is_tower_parameter(k)}
    expected = {k for k in model.state_dict() if is_tower_parameter(k)}
    _check_keys(base / WEIGHTS_NAME, expected, set(towers))
    with torch.no_grad():
        model.load_state_dict(towers, strict=False)
    return model
