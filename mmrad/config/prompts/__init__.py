"""Zero-shot prompt banks: positive and negative phrasings of each finding, wrapped in templates.

A bank is YAML (see ``chexpert.yaml`` beside this file)::

    templates: {positive: ["{}", "there is {}"], negative: ["no {}", "there is no {}"]}
    findings:
      Pleural Effusion: {positive: ["pleural effusion", "fluid in the pleural space"]}
      No Finding: {templates: false, positive: [...], negative: [...]}

Negative prompts are the templates' negative forms of the positive phrasings plus any listed ``negative`` phrasings.
A finding with ``templates: false`` uses its phrasings as written: a class whose name is itself a negation
("No Finding") is never templated into "no No Finding".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mmrad.errors import MMRadError

PROMPT_DIR = Path(__file__).parent
SHIPPED_BANKS = ("chexpert",)


@dataclass
class FindingPrompts:
    positive: list[str]
    negative: list[str]


@dataclass
class PromptBank:
    name: str
    findings: dict[str, FindingPrompts] = field(default_factory=dict)
    # templates that wrap a free-text query which names none of the findings
    templates: dict[str, list[str]] = field(default_factory=lambda: {"positive": ["{}"], "negative": ["no {}"]})

    @property
    def names(self) -> list[str]:
        return list(self.findings)

    def prompts(self, finding: str) -> FindingPrompts:
        try:
            return self.findings[finding]
        except KeyError:
            raise MMRadError(f"prompt bank {self.name!r} has no prompts for {finding!r}") from None

    def merged(self, other: PromptBank) -> PromptBank:
        """This bank with ``other``'s findings added or replacing ours."""
        return PromptBank(f"{self.name}+{other.name}", {**self.findings, **other.findings}, self.templates)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "templates": self.templates,
            "findings": {
                k: {"templates": False, "positive": v.positive, "negative": v.negative}
                for k, v in self.findings.items()
            },
        }


def _strings(value, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise MMRadError(f"{where} must be a list of non-empty strings")
    return [v.strip() for v in value]


def prompt_bank_from_dict(data: dict, name: str = "prompts") -> PromptBank:
    """Expand a bank's templates into explicit positive/negative prompts per finding."""
    if not isinstance(data, dict) or not isinstance(data.get("findings"), dict):
        raise MMRadError(f"prompt bank {name!r} needs a 'findings' mapping")
    templates = data.get("templates") or {}
    pos_t = _strings(templates.get("positive"), f"{name}: templates.positive") or ["{}"]
    neg_t = _strings(templates.get("negative"), f"{name}: templates.negative") or ["no {}"]
    for t in pos_t + neg_t:
        if t.count("{}") != 1:
            raise MMRadError(f"{name}: template {t!r} must contain '{{}}' exactly once")
    findings = {}
    for finding, spec in data["findings"].items():
        if spec is None:  # the finding's name alone
            spec = {}
        if not isinstance(spec, dict):
            raise MMRadError(f"{name}: findings.{finding} must be a mapping")
        where = f"{name}: findings.{finding}"
        phrases = _strings(spec.get("positive"), f"{where}.positive") or [str(finding).replace("_", " ").lower()]
        extra_neg = _strings(spec.get("negative"), f"{where}.negative")
        if spec.get("templates", True):
            positive = [t.format(p) for t in pos_t for p in phrases]
            negative = [t.format(p) for t in neg_t for p in phrases] + extra_neg
        else:
            if not extra_neg:
                raise MMRadError(f"{where}: with templates: false, list the negative phrasings")
            positive, negative = phrases, extra_neg
        findings[str(finding)] = FindingPrompts(list(dict.fromkeys(positive)), list(dict.fromkeys(negative)))
    return PromptBank(str(data.get("name") or name), findings, {"positive": pos_t, "negative": neg_t})


def load_prompt_bank(name_or_path: str | Path = "chexpert") -> PromptBank:
    """A shipped bank (``"chexpert"``) or a user YAML file."""
    key = str(name_or_path)
    path = PROMPT_DIR / f"{key}.yaml" if key in SHIPPED_BANKS else Path(key)
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise MMRadError(f"prompt bank {key!r} not found (shipped: {', '.join(SHIPPED_BANKS)})") from None
    except yaml.YAMLError as err:
        raise MMRadError(f"{path}: not valid YAML ({err})") from err
    return prompt_bank_from_dict(data, path.stem)
