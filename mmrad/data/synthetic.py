"""Phantom corpus: chest-radiograph-like images with known findings, masks and matching free-text reports.

For the demo and for tests that must prove a model learns and looks at the right place. Images are drawn as a
projection of body, lungs with vessel texture, ribs, mediastinum, heart and diaphragm, with per-patient anatomy and
per-study exposure, blur and noise (at most 256 px, then upsampled with fine noise added for larger images). Five
findings (CheXpert names) are drawn with location and size:
Cardiomegaly (enlarged heart), Pleural Effusion (right/left/bilateral basal fluid with a meniscus), Pneumothorax (an
apical-lateral crescent of air without lung markings and a pleural line), Lung Lesion (a lobulated nodule) and
Consolidation (a patchy lobar opacity with air bronchograms); small vessel dots act as distractors. Laterality
follows the radiological convention: the patient's right is the image's left.

Reports come from varied templates with negations, uncertainty and locations, consistent with the image. A second
phrasing family, :data:`PHANTOM_ZERO_SHOT_PROMPTS`, never appears in the reports and serves zero-shot checks;
:data:`PHANTOM_SYNONYM_PROMPTS` is a stricter one of pure synonyms.
Everything is deterministic for a seed.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np

from mmrad.data.phantom_draw import WORK_SIZE, anatomy, render, upsample

PHANTOM_FINDINGS = ["Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Lung Lesion", "Consolidation"]
PHANTOM_LABELS = ["No Finding", *PHANTOM_FINDINGS]  # the ground-truth columns of the phantom manifest

# Held-out phrasings for zero-shot checks, in the shape of a prompt bank (mmrad.prompts) with templates off, so that
# `prompt_bank_from_dict(PHANTOM_ZERO_SHOT_PROMPTS)` turns it into one. A second template family: sentence frames and
# modifiers never used in the training reports or queries ("a pneumothorax is seen at the apex", "a rounded pulmonary
# nodule"), around the findings' clinical terms.
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
_SIZES = ["small", "moderate", "large"]
_LOBES = ["right upper lobe", "right middle lobe", "right lower lobe", "left upper lobe", "left lower lobe"]


@dataclass
class PhantomFinding:
    name: str
    side: str | None = None  # "right", "left", "bilateral" (the patient's side)
    location: str | None = None  # "upper"/"lower" zone, lobe name, "apical"
    size: str | None = None  # "small", "moderate", "large", "mild", or "2.5" (cm)
    certain: bool = True  # False: the report phrases it as uncertain


@dataclass
class PhantomStudy:
    patient_id: str
    study_id: str
    image: str  # relative to the corpus root
    format: str  # "PNG8", "PNG16", "JPEG", "DICOM-MONOCHROME1", "DICOM-MONOCHROME2"
    report: str
    findings: list[PhantomFinding]
    labels: dict[str, int]  # image truth over PHANTOM_LABELS: 1 present, 0 absent
    report_labels: dict[str, float]  # what the report says: 1, 0, -1 (uncertain), NaN (not mentioned)
    boxes: list[dict]  # {"label", "x", "y", "w", "h"} in image pixels
    masks: dict[str, str]  # finding -> mask PNG relative to the root
    height: int = 0
    width: int = 0


@dataclass
class PhantomCorpus:
    root: Path
    manifest: Path
    studies: list[PhantomStudy] = field(default_factory=list)
    label_names: list[str] = field(default_factory=lambda: list(PHANTOM_LABELS))

    def labels(self) -> np.ndarray:
        """(N, K) image-truth labels aligned to ``label_names``."""
        return np.array([[s.labels[n] for n in self.label_names] for s in self.studies], dtype=np.float32)


# --------------------------------------------------------------------------------------------------------- reports


def _sample_findings(rng: np.random.Generator, prevalence: float, uncertain: float, carry: dict) -> list:
    findings = []
    if carry["Cardiomegaly"]:  # a patient-level trait
        findings.append(PhantomFinding("Cardiomegaly", size="mild" if rng.random() < 0.5 else "moderate"))
    if rng.random() < prevalence:
        side = str(rng.choice(["right", "left", "bilateral"], p=[0.4, 0.4, 0.2]))
        findings.append(PhantomFinding("Pleural Effusion", side=side, size=str(rng.choice(_SIZES))))
    if rng.random() < prevalence * 0.85:
        side, size = str(rng.choice(["right", "left"])), str(rng.choice(_SIZES))
        findings.append(PhantomFinding("Pneumothorax", side=side, location="apical", size=size))
    nodule = carry.get("Lung Lesion")
    if nodule is not None or rng.random() < prevalence:
        if nodule is None or rng.random() > 0.8:
            side, zone = str(rng.choice(["right", "left"])), str(rng.choice(["upper", "lower"]))
            nodule = PhantomFinding("Lung Lesion", side=side, location=zone, size=f"{rng.uniform(4.5, 6.0):.1f}")
        findings.append(PhantomFinding(**asdict(nodule)))
    if rng.random() < prevalence:
        lobe = str(rng.choice(_LOBES))
        findings.append(PhantomFinding("Consolidation", side=lobe.split()[0], location=lobe.split(maxsplit=1)[1]))
    for f in findings:
        f.certain = bool(rng.random() >= uncertain)
    return findings


def _fill(template: str, f: PhantomFinding) -> str:
    if f.side == "bilateral":
        template = template.replace("There is a", "There are").replace("effusion", "effusions")
    lobe = f"{f.side} {f.location}" if f.name == "Consolidation" else ""
    values = {"sev": f.size or "", "size": f.size or "", "side": f.side or "", "cm": f.size or "",
              "zone": f.location or "", "lobe": lobe}  # fmt: skip
    text = " ".join(template.format(**values).split())
    return text[0].upper() + text[1:]


def _report(findings: list[PhantomFinding], rng: np.random.Generator) -> tuple[str, dict[str, float]]:
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


# ---------------------------------------------------------------------------------------------------------- corpus


def _boxes(name: str, mask: np.ndarray) -> list[dict]:
    """Bounding boxes of a mask; bilateral effusions give one box per side."""
    from scipy.ndimage import find_objects, label

    parts, _ = label(mask)
    out = []
    for sl in find_objects(parts):
        if sl is None:
            continue
        ys, xs = sl
        if (ys.stop - ys.start) * (xs.stop - xs.start) < 4:
            continue
        out.append({"label": name, "x": float(xs.start), "y": float(ys.start), "w": float(xs.stop - xs.start),
                    "h": float(ys.stop - ys.start)})  # fmt: skip
    return out


def _uid(seed: int, study: str) -> str:
    import hashlib

    return "2.25." + str(int(hashlib.sha256(f"mmrad-phantom/{seed}/{study}".encode()).hexdigest()[:30], 16))


def _write_image(path: Path, img: np.ndarray, fmt: str, patient_id: str, study_uid: str) -> None:
    from PIL import Image

    if fmt.startswith("DICOM"):
        from mmrad.data.dicom import write_dicom

        pixels = np.round(img * 4095).astype(np.uint16)
        photometric = "MONOCHROME1" if fmt.endswith("1") else "MONOCHROME2"
        if photometric == "MONOCHROME1":
            pixels = 4095 - pixels
        write_dicom(path, pixels, photometric=photometric, bits_stored=12, Modality="CR", ViewPosition="PA",
                    PatientID=patient_id, StudyInstanceUID=study_uid, SeriesInstanceUID=study_uid + ".1",
                    SOPInstanceUID=study_uid + ".1.1", PixelSpacing=[0.3, 0.3])  # fmt: skip
    elif fmt == "PNG16":
        Image.fromarray(np.round(img * 65535).astype(np.uint16)).save(path)
    elif fmt == "JPEG":
        Image.fromarray(np.round(img * 255).astype(np.uint8), "L").save(path, quality=95)
    else:
        Image.fromarray(np.round(img * 255).astype(np.uint8), "L").save(path)


def make_phantom_corpus(
    out_dir: str | PathLike,
    n: int = 200,
    image_size: int = 128,
    seed: int = 0,
    *,
    prevalence: float = 0.3,
    uncertain_fraction: float = 0.12,
    dicom_fraction: float = 0.2,
    nonsquare_fraction: float = 0.15,
) -> PhantomCorpus:
    """Write a phantom corpus: images, masks, ``manifest.csv`` (truth columns, boxes, masks) and ``truth.jsonl``.

    Args:
        out_dir: the folder to write (``images/``, ``masks/``, ``manifest.csv``, ``truth.jsonl``).
        n: number of studies (one image each); patients have 1 to 3 studies.
        image_size: image height in pixels (some images are narrower or wider).
        seed: the same seed writes the same corpus.
        prevalence: chance of each finding per study.
        uncertain_fraction: chance that a present finding is reported as uncertain.
        dicom_fraction: share of images written as 12-bit DICOM (half MONOCHROME1); of the rest, 15% are 16-bit PNG,
            5% JPEG and the others 8-bit PNG.
        nonsquare_fraction: share of images that are not square.

    Returns:
        A :class:`PhantomCorpus` listing every study with its image truth (``labels``) and report truth.
    """
    root = Path(out_dir)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    plan = []  # (patient index, study index within patient)
    patient = 0
    while len(plan) < n:
        for k in range(int(rng.choice([1, 2, 3], p=[0.7, 0.2, 0.1]))):
            plan.append((patient, k))
        patient += 1
    plan = plan[:n]
    studies = []
    anatomies: dict[int, dict] = {}
    carry: dict[int, dict] = {}
    for i, (p, k) in enumerate(plan):
        srng = np.random.default_rng([seed, i])
        if p not in anatomies:
            prng = np.random.default_rng([seed, 10**6 + p])
            anatomies[p] = anatomy(prng)
            carry[p] = {"Cardiomegaly": bool(prng.random() < prevalence)}
        findings = _sample_findings(srng, prevalence, uncertain_fraction, carry[p])
        carry[p]["Lung Lesion"] = next((f for f in findings if f.name == "Lung Lesion"), None)
        width = image_size
        if srng.random() < nonsquare_fraction:
            width = int(round(image_size * srng.choice([0.85, 1.15])))
        work = min(image_size, WORK_SIZE)
        img, masks = render(anatomies[p], findings, work, max(8, round(width * work / image_size)), srng)
        if work < image_size:
            img, masks = upsample(img, masks, image_size, width, srng)
        report, truth = _report(findings, srng)
        u, d = srng.random(), dicom_fraction
        fmt = ("DICOM-MONOCHROME1" if u < d / 2 else "DICOM-MONOCHROME2" if u < d
               else "PNG16" if u < d + 0.15 else "JPEG" if u < d + 0.2 else "PNG8")  # fmt: skip
        patient_id, study_id = f"PH{p:05d}", f"PH{p:05d}-S{k + 1}"
        name = f"images/{study_id}.{'dcm' if fmt.startswith('DICOM') else 'jpg' if fmt == 'JPEG' else 'png'}"
        _write_image(root / name, img, fmt, patient_id, _uid(seed, study_id))
        mask_paths, boxes = {}, []
        for finding, mask in masks.items():
            rel = f"masks/{study_id}_{finding.lower().replace(' ', '_')}.png"
            _write_image(root / rel, mask.astype(np.float32), "PNG8", "", "")
            mask_paths[finding] = rel
            boxes += _boxes(finding, mask)
        labels = {name_: int(any(f.name == name_ for f in findings)) for name_ in PHANTOM_FINDINGS}
        labels["No Finding"] = int(not findings)
        studies.append(PhantomStudy(patient_id, study_id, name, fmt, report, findings, labels, truth, boxes,
                                    mask_paths, image_size, width))  # fmt: skip
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "report", "patient_id", "study_id", "view", "boxes", "masks", *PHANTOM_LABELS])
        for s in studies:
            writer.writerow([s.image, s.report, s.patient_id, s.study_id, "PA", json.dumps(s.boxes),
                             json.dumps(s.masks), *(s.labels[n] for n in PHANTOM_LABELS)])  # fmt: skip
    with (root / "truth.jsonl").open("w", encoding="utf-8") as f:
        for s in studies:
            record = asdict(s)
            record["report_labels"] = {k: (None if math.isnan(v) else v) for k, v in s.report_labels.items()}
            f.write(json.dumps(record) + "\n")
    return PhantomCorpus(root, manifest, studies)
