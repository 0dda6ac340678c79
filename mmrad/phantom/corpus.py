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
:data:`PHANTOM_SYNONYM_PROMPTS` is a stricter one of pure synonyms. This module samples the findings and writes the
corpus; :mod:`mmrad.phantom.draw` draws the images and :mod:`mmrad.phantom.text` writes the reports and
holds the prompt families. Everything is deterministic for a seed.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np

from mmrad.phantom.draw import WORK_SIZE, anatomy, render, upsample
from mmrad.phantom.text import (
    PHANTOM_FINDINGS,
    PHANTOM_SYNONYM_PROMPTS,
    PHANTOM_ZERO_SHOT_PROMPTS,
    PhantomFinding,
    write_report,
)

__all__ = [  # the prompt families live in phantom_text; importing them from here keeps working
    "PHANTOM_FINDINGS",
    "PHANTOM_LABELS",
    "PHANTOM_SYNONYM_PROMPTS",
    "PHANTOM_ZERO_SHOT_PROMPTS",
    "PhantomCorpus",
    "PhantomFinding",
    "PhantomStudy",
    "make_phantom_corpus",
]


PHANTOM_LABELS = ["No Finding", *PHANTOM_FINDINGS]  # the ground-truth columns of the phantom manifest
_SIZES = ["small", "moderate", "large"]
_LOBES = ["right upper lobe", "right middle lobe", "right lower lobe", "left upper lobe", "left lower lobe"]


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


# -------------------------------------------------------------------------------------------------------- findings


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
        from mmrad.io.dicom import write_dicom

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
        report, truth = write_report(findings, srng)
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
