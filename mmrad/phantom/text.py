"""The phantom's words: report templates, their writing, and the held-out prompt families for zero-shot checks.

Reports (:func:`write_report`) come from varied templates with negations, uncertainty and locations, consistent with
the findings drawn (see :mod:`mmrad.phantom.corpus`, which writes the corpus). A second phrasing family,
:data:`PHANTOM_ZERO_SHOT_PROMPTS`, never appears in the reports and serves zero-shot checks;
:data:`PHANTOM_SYNONYM_PROMPTS` is a stricter one of pure synonyms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class PhantomFinding:
    name: str
    side: str | None = None  # "right", "left", "bilateral" (the patient's side)
    location: str | None = None  # "upper"/"lower" zone, lobe name, "apical"
    size: str | None = None  # "small", "moderate", "large", "mild", or "2.5" (cm)
    certain: bool = True  # False: the report phrases it as uncertain


PHANTOM_FINDINGS = ["Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Lung Lesion", "Consolidation"]

# Held-out phrasings for zero-shot checks, in the shape of a prompt bank (mmrad.config.prompts) with templates
# off, so that `prompt_bank_from_dict(PHANTOM_ZERO_SHOT_PROMPTS)` turns it into one. A second template family: sentence
# frames and modifiers never used in the training reports or queries ("a pneumothorax is seen at the apex", "a rounded
# pulmonary nodule"), around the findings' clinical terms.
PHANTOM_ZERO_SHOT_PROMPTS = {
    "name": "phantom-heldout",
    "findings": {
        "Cardiomegaly": {
            "templates": False,
            "positive": ["the cardiac silhouette is enlarged", "cardiomegaly seen on this radiograph",
                         "the heart appears enlarged"],
            "negative": ["the cardiac silhouette is normal", "no enlargement of the heart"],
        },
        "Pleural Effusion": {
            "templates": False,
            "positive": ["a pleural effusion is seen", "pleural fluid collection", "effusion at the lung base"],
            "negative": ["no effusion is seen", "the costophrenic angles are sharp"],
        },
        "Pneumothorax": {
            "templates": False,
            "positive": ["a pneumothorax is seen at the apex", "the lung is partly collapsed by a pneumothorax",
                         "pneumothorax at the lung apex"],
            "negative": ["no pneumothorax is seen", "the lungs are fully expanded"],
        },
        "Lung Lesion": {
            "templates": False,
            "positive": ["a rounded pulmonary nodule", "a solitary nodule in the lung",
                         "a nodular lesion in the lung"],
            "negative": ["no nodule is seen", "no focal lung lesion"],
        },
        "Consolidation": {
            "templates": False,
            "positive": ["consolidation of one lobe", "dense consolidation in the lung", "a consolidated lobe"],
            "negative": ["the lungs are clear without consolidation", "no airspace consolidation"],
        },
    },
}  # fmt: skip

# A stricter held-out family: synonyms that share no clinical term with the training reports ("air in the pleural
# space" for a pneumothorax). Only a text tower that already knows radiology (a biomedical encoder) can map them;
# the demo reports it beside the template family, as the harder check.
PHANTOM_SYNONYM_PROMPTS = {
    "name": "phantom-synonyms",
    "findings": {
        "Cardiomegaly": {
            "templates": False,
            "positive": ["enlarged cardiac silhouette", "increased cardiothoracic ratio", "a large heart shadow"],
            "negative": ["normal cardiac silhouette", "cardiothoracic ratio within normal limits"],
        },
        "Pleural Effusion": {
            "templates": False,
            "positive": ["fluid in the pleural space", "blunting of the costophrenic angle", "layering pleural fluid"],
            "negative": ["sharp costophrenic angles", "no pleural fluid"],
        },
        "Pneumothorax": {
            "templates": False,
            "positive": [
                "air in the pleural space",
                "a visible pleural line with absent lung markings",
                "partially collapsed lung",
            ],
            "negative": ["no air in the pleural space", "fully expanded lungs"],
        },  # fmt: skip
        "Lung Lesion": {
            "templates": False,
            "positive": ["a rounded opacity in the lung", "a solitary pulmonary mass", "a round lung lesion"],
            "negative": ["no rounded opacity in the lung", "no pulmonary mass"],
        },
        "Consolidation": {
            "templates": False,
            "positive": [
                "dense airspace opacification",
                "lobar opacity with air bronchograms",
                "an area of airspace disease",
            ],
            "negative": ["no airspace opacification", "no airspace disease"],
        },  # fmt: skip
    },
}

# -------------------------------------------------------------------------------------------- training phrasings

_POSITIVE = {
    "Cardiomegaly": ["{sev} cardiomegaly.", "Heart size is {sev}ly enlarged.", "There is {sev} cardiomegaly."],
    "Pleural Effusion": ["{size} {side} pleural effusion.", "There is a {size} {side} pleural effusion."],
    "Pneumothorax": ["{size} {side} apical pneumothorax.", "There is a {size} {side} pneumothorax."],
    "Lung Lesion": ["{cm} cm nodule in the {side} {zone} lobe.", "There is a {cm} cm {side} {zone} lobe nodule."],
    "Consolidation": ["{lobe} consolidation.", "There is consolidation in the {lobe}.",
                      "Focal airspace consolidation in the {lobe}."],
}  # fmt: skip
_PHRASE = {  # the finding as a noun phrase, for uncertain sentences and the impression
    "Cardiomegaly": "{sev} cardiomegaly",
    "Pleural Effusion": "{size} {side} pleural effusion",
    "Pneumothorax": "{size} {side} pneumothorax",
    "Lung Lesion": "{side} {zone} lobe nodule",
    "Consolidation": "{lobe} consolidation",
}
_UNCERTAIN = ["Possible {p}.", "{P} cannot be excluded.", "Findings may represent {p}."]
_NEGATIVE = {
    "Cardiomegaly": ["Heart size is normal.", "The heart is normal in size.", "No cardiomegaly."],
    "Pleural Effusion": ["No pleural effusion.", "There is no pleural effusion."],
    "Pneumothorax": ["No pneumothorax.", "There is no pneumothorax."],
    "Lung Lesion": ["No pulmonary nodules.", "No suspicious pulmonary nodule."],
    "Consolidation": ["No focal consolidation.", "No consolidation."],
}
_JOINT_NEGATIVE = {"Consolidation": "focal consolidation", "Pleural Effusion": "pleural effusion",
                   "Pneumothorax": "pneumothorax"}  # fmt: skip
_FILLERS = ["The trachea is midline.", "Visualized upper abdomen is unremarkable.",
            "Mediastinal contours are within normal limits.", "No acute osseous abnormality."]  # fmt: skip
_NORMAL_IMPRESSION = ["No acute cardiopulmonary process.", "No acute cardiopulmonary abnormality."]
_INDICATIONS = ["Cough.", "Shortness of breath.", "Fever.", "Chest pain.", "Follow-up."]


# --------------------------------------------------------------------------------------------------------- reports


def _fill(template: str, f: PhantomFinding) -> str:
    if f.side == "bilateral":
        template = template.replace("There is a", "There are").replace("effusion", "effusions")
    lobe = f"{f.side} {f.location}" if f.name == "Consolidation" else ""
    values = {"sev": f.size or "", "size": f.size or "", "side": f.side or "", "cm": f.size or "",
              "zone": f.location or "", "lobe": lobe}  # fmt: skip
    text = " ".join(template.format(**values).split())
    return text[0].upper() + text[1:]


def write_report(findings: list[PhantomFinding], rng: np.random.Generator) -> tuple[str, dict[str, float]]:
    """A free-text report of ``findings`` and what it states per label: 1, 0, -1 (uncertain), NaN (not mentioned)."""
    present = {f.name: f for f in findings}
    truth: dict[str, float] = {}
    sentences = []
    absent_mentioned = []
    for name in PHANTOM_FINDINGS:
        f = present.get(name)
        if f is None:
            if rng.random() < 0.7:
                absent_mentioned.append(name)
                truth[name] = 0.0
            else:
                truth[name] = math.nan
            continue
        if f.certain:
            sentences.append(_fill(str(rng.choice(_POSITIVE[name])), f))
            truth[name] = 1.0
        else:
            phrase = _fill(_PHRASE[name], f)
            template = str(rng.choice(_UNCERTAIN))
            sentences.append(template.format(p=phrase[0].lower() + phrase[1:], P=phrase))
            truth[name] = -1.0
    joint = [n for n in absent_mentioned if n in _JOINT_NEGATIVE]
    if len(joint) >= 2 and rng.random() < 0.35:
        words = [_JOINT_NEGATIVE[n] for n in joint]
        sentences.append(f"No {', '.join(words[:-1])} or {words[-1]}.")
        absent_mentioned = [n for n in absent_mentioned if n not in joint]
    sentences += [str(rng.choice(_NEGATIVE[n])) for n in absent_mentioned]
    order = rng.permutation(len(sentences))
    sentences = [sentences[i] for i in order]
    sentences.insert(int(rng.integers(0, len(sentences) + 1)), str(rng.choice(_FILLERS)))
    if findings:
        impression = " ".join(
            (_fill(_PHRASE[f.name], f) + "." if f.certain else f"Possible {_fill(_PHRASE[f.name], f).lower()}.")
            for f in findings
        )
    else:
        impression = str(rng.choice(_NORMAL_IMPRESSION))
        truth["No Finding"] = 1.0
    body = " ".join(sentences)
    style = int(rng.integers(4))
    if style == 0:
        text = f"EXAMINATION: Chest radiograph, PA view.\n\nINDICATION: {rng.choice(_INDICATIONS)}\n\n"
        text += f"FINDINGS: {body}\n\nIMPRESSION: {impression}"
    elif style == 1:
        text = f"FINDINGS:\n{body}\n\nIMPRESSION:\n{impression}"
    elif style == 2:
        text = f"Findings: {body}\nImpression: {impression}"
    else:
        text = body if findings else f"{body} {impression}"
    return text, truth
