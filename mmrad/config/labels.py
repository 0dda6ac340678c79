"""Finding vocabularies, the descriptions used as model queries, and uncertainty policies.

A vocabulary is a YAML file (shipped ones live in ``mmrad/vocabularies/``)::

    name: chexpert
    findings:
      Pleural Effusion:
        description: fluid in the pleural space   # the text query the model encodes for this finding
        mentions: [pleural effusion, effusion, ...]   # phrases the report labeler looks for
        exclusions: [pericardial effusion, ...]       # phrases that are not this finding

Labels are ``1`` present, ``0`` absent, ``-1`` uncertain and ``NaN`` not mentioned. An uncertainty policy says what
an uncertain label becomes in training: ``ignore`` (masked), ``ones`` (positive) or ``zeros`` (negative).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import yaml

from mmrad.config.schema import UNCERTAINTY_POLICIES, ConfigError, LabelsConfig

VOCABULARY_DIR = Path(__file__).parent / "vocabularies"
SHIPPED = ("chexpert", "nih14")

CHEXPERT_14 = [
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices",
]  # fmt: skip
NIH_14 = [
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
]  # fmt: skip


@dataclass
class Finding:
    name: str
    description: str  # query text for the model
    mentions: list[str] = field(default_factory=list)
    exclusions: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # labeler-specific keys the vocabulary file carries


@dataclass
class Vocabulary:
    name: str
    findings: dict[str, Finding]
    speculation: str = "uncertain"  # the convention for "may represent X": -1 ("uncertain") or 0 ("absent")

    @property
    def names(self) -> list[str]:
        return list(self.findings)


def load_vocabulary(name_or_path: str | Path) -> Vocabulary:
    """Load a shipped vocabulary (``"chexpert"``, ``"nih14"``) or a user YAML file."""
    key = str(name_or_path)
    path = VOCABULARY_DIR / f"{key}.yaml" if key in SHIPPED else Path(key)
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        mtime = 0
    return _load_vocabulary_file(str(path.resolve()), mtime)


@lru_cache(maxsize=16)
def _load_vocabulary_file(path: str, mtime_ns: int) -> Vocabulary:  # the mtime keys the cache to the file's version
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError as err:
        raise ConfigError(f"vocabulary {path!r} not found (shipped ones: {', '.join(SHIPPED)})") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(data, dict) or not isinstance(data.get("findings"), dict) or not data["findings"]:
        raise ConfigError(f"{path}: a vocabulary needs a non-empty 'findings' mapping")
    findings = {}
    for name, spec in data["findings"].items():
        spec = spec or {}
        if not isinstance(spec, dict):
            raise ConfigError(f"{path}: findings.{name} must be a mapping (description, mentions, exclusions)")
        extra = {k: v for k, v in spec.items() if k not in ("description", "mentions", "exclusions")}
        for key in ("mentions", "exclusions"):
            value = spec.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{path}: findings.{name}.{key} must be a list of strings")
        findings[str(name)] = Finding(
            name=str(name),
            description=str(spec.get("description") or str(name).replace("_", " ").lower()),
            mentions=list(spec.get("mentions", [])),
            exclusions=list(spec.get("exclusions", [])),
            extra=extra,
        )
    speculation = data.get("speculation", "uncertain")
    if speculation not in ("uncertain", "absent"):
        raise ConfigError(f"{path}: speculation must be 'uncertain' or 'absent', got {speculation!r}")
    return Vocabulary(name=str(data.get("name") or Path(path).stem), findings=findings, speculation=speculation)


def label_names(cfg: LabelsConfig) -> list[str]:
    """The findings a model predicts: ``cfg.names``, or every finding of the vocabulary."""
    vocab = load_vocabulary(cfg.vocabulary)
    if not cfg.names:
        return vocab.names
    unknown = [n for n in cfg.names if n not in vocab.findings and n not in cfg.descriptions]
    if unknown:
        raise ConfigError(
            f"model.labels.names: {unknown} are neither in vocabulary {vocab.name!r} nor given a description"
        )
    return list(cfg.names)


def label_descriptions(cfg: LabelsConfig) -> list[str]:
    """One query text per finding of :func:`label_names` (config descriptions override the vocabulary's)."""
    vocab = load_vocabulary(cfg.vocabulary)
    return [
        cfg.descriptions.get(n) or (vocab.findings[n].description if n in vocab.findings else n.lower())
        for n in label_names(cfg)
    ]


def uncertainty_policies(cfg: LabelsConfig, names: list[str] | None = None) -> list[str]:
    """The policy of each finding: one for all, or per finding (findings not listed use ``ignore``)."""
    names = names if names is not None else label_names(cfg)
    if isinstance(cfg.uncertainty, str):
        return [cfg.uncertainty] * len(names)
    unknown = set(cfg.uncertainty) - set(names)
    if unknown:
        raise ConfigError(f"model.labels.uncertainty names unknown findings: {sorted(unknown)}")
    return [cfg.uncertainty.get(n, "ignore") for n in names]


def apply_uncertainty(labels: np.ndarray, policies: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Turn labels (N, K) with 1/0/-1/NaN into training targets and a mask of the entries that count.

    Returns:
        ``(targets, mask)``: float32 (N, K) targets in {0, 1}, and a bool (N, K) mask that is False for NaN and for
        uncertain labels under ``ignore``.
    """
    labels = np.asarray(labels, dtype=np.float32)
    if labels.shape[-1] != len(policies):
        raise ValueError(f"labels have {labels.shape[-1]} columns but {len(policies)} policies were given")
    for p in policies:
        if p not in UNCERTAINTY_POLICIES:
            raise ValueError(f"unknown uncertainty policy {p!r}")
    mask = ~np.isnan(labels)
    targets = np.where(mask, labels, 0.0)
    uncertain = targets == -1
    ones = np.array([p == "ones" for p in policies])
    ignore = np.array([p == "ignore" for p in policies])
    targets = np.where(uncertain, np.where(ones, 1.0, 0.0), targets).astype(np.float32)
    mask &= ~(uncertain & ignore)
    return targets, mask
