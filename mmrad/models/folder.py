"""The files of a saved model folder and reading its config: what :mod:`mmrad.models.serialization` writes and loads
and what :mod:`mmrad.models.card` and :mod:`mmrad.hub.push` read.
"""

from __future__ import annotations

import json
from pathlib import Path

from mmrad import __version__
from mmrad.config.schema import MMRadConfig
from mmrad.errors import MMRadError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
TOKENIZER_DIR = "tokenizer"
PROMPT_BANK_NAME = "prompt_bank.yaml"
MODEL_TYPE = "mmrad"
META_KEYS = ("model_type", "mmrad_version", "label_names", "lora", "adapter_only", "base_model", "token_grid")


class CheckpointError(MMRadError, RuntimeError):
    """A model folder that cannot be loaded: missing files, or weights that do not match the config."""


CARD_NAME = "README.md"
METRICS_NAME = "metrics.json"
DATA_SUMMARY_NAME = "data_summary.json"


def resolve_folder(name_or_path: str | Path, revision: str | None = None) -> Path:
    """A local folder as is; otherwise a Hub repo id, fetched through the Hugging Face cache (offline: cache only)."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=str(name_or_path), revision=revision))
    except Exception as err:  # invalid id, offline without cache, missing repo
        raise CheckpointError(f"{name_or_path}: not a model folder, and not fetchable from the Hub ({err})") from err


def read_config(folder: Path) -> tuple[dict, MMRadConfig]:
    """``(meta, config)`` from a folder's ``config.json``; a folder written by a newer mmrad is refused."""
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {CONFIG_NAME} (not an mmrad model folder)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not a valid JSON config ({err})") from err
    if not isinstance(data, dict) or data.get("model_type") != MODEL_TYPE:
        found = data.get("model_type") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path}: model_type is {found!r}, not {MODEL_TYPE!r}")
    _check_version(path, data.get("mmrad_version"))
    meta = {k: data.pop(k, None) for k in META_KEYS}
    return meta, MMRadConfig.from_dict(data)


def _check_version(path: Path, written_by) -> None:
    """A folder from a newer mmrad may hold settings this version would misread: refuse it, naming both versions."""
    from packaging.version import InvalidVersion, Version

    if written_by is None:
        return
    try:
        newer = Version(str(written_by)) > Version(__version__)
    except InvalidVersion:
        raise CheckpointError(f"{path}: unreadable mmrad_version {written_by!r}") from None
    if newer:
        raise CheckpointError(
            f"{path}: written by mmrad {written_by}, newer than this mmrad {__version__}; upgrade mmrad to load it"
        )


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
