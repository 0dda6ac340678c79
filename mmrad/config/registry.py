"""Named configs: the experiment YAML files shipped with mmrad, usable by name (``mmrad train --config
nih-effnet-lite2``), like open_clip's ``list_models()``.

========================  ==================================================================================
name                      what
========================  ==================================================================================
``tiny``                  tiny random towers that build in a second: tests, smoke runs
``demo``                  the offline demo's towers (``mmrad demo`` sets the stage-specific values)
``nih-effnet-lite2``      real radiographs: ImageNet EfficientNet-Lite2 x pretrained MiniLM queries, labels and
                          boxes without report text (``scripts/bench_real_nih.py``)
``vit-b16-clinicalbert``  GPU scale: open_clip ViT-B/16 (OpenAI weights) x Bio_ClinicalBERT
``biomedclip-lora``       GPU scale: BiomedCLIP's pair with LoRA on both towers
========================  ==================================================================================
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

from mmrad.config.yamlio import ConfigError

PRESET_DIR = Path(__file__).resolve().parent / "presets"


def list_configs() -> list[str]:
    """The names of the shipped configs."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def resolve_config(name_or_path: str | PathLike) -> Path:
    """A config file: an existing path as is, else a shipped config's file by name (underscores or hyphens,
    ``.yaml`` optional).

    Raises:
        ConfigError: neither a file nor a shipped name (the message lists the names).
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = path.name.removesuffix(".yaml").removesuffix(".yml").replace("_", "-")
    preset = PRESET_DIR / f"{name}.yaml"
    if str(path.parent) in ("", ".") and preset.is_file():
        return preset
    raise ConfigError(f"{name_or_path}: config file not found, and not a shipped config ({', '.join(list_configs())})")
