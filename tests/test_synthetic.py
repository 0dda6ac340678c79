"""Phantom corpus: determinism, image/report/mask consistency, laterality, formats, held-out prompt family."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from mmrad.io.images import load_image
from mmrad.phantom.corpus import (
    PHANTOM_FINDINGS,
    PHANTOM_LABELS,
    PHANTOM_SYNONYM_PROMPTS,
    PHANTOM_ZERO_SHOT_PROMPTS,
    make_phantom_corpus,
)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return make_phantom_corpus(tmp_path_factory.mktemp("ph") / "a", n=150, image_size=64, seed=11)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_corpus_other_seed_differs(phantom, tmp_path):
    again = make_phantom_corpus(tmp_path / "b", n=150, image_size=64, seed=11)
    other = make_phantom_corpus(tmp_path / "c", n=150, image_size=64, seed=12)
    a, b = _files(phantom.root), _files(again.root)
    assert a.keys() == b.keys()
    assert phantom.manifest.read_bytes() == again.manifest.read_bytes()
    for name in a:
        if name.endswith(".dcm"):  # DICOM file meta holds a random instance UID: compare the pixels
            assert np.array_equal(load_image(phantom.root / name)[0], load_image(again.root / name)[0]), name
        else:
            assert a[name] == b[name], name
    assert other.manifest.read_bytes() != phantom.manifest.read_bytes()


def test_manifest_has_truth_columns_boxes_and_masks(phantom):
    with phantom.manifest.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 150
    assert set(PHANTOM_LABELS) <= set(rows[0]) and {"image", "report", "patient_id", "boxes", "masks"} <= set(rows[0])
    labels = phantom.labels()
    prevalence = labels.mean(axis=0)
    assert np.all(prevalence[1:] > 0.1) and np.all(prevalence[1:] < 0.6), prevalence
    assert (labels[:, 1:].sum(axis=1) >= 2).mean() > 0.2  # several findings per image are common
    assert np.array_equal(labels[:, 0], (labels[:, 1:].sum(axis=1) == 0).astype(np.float32))  # No Finding
    per_patient = np.unique([s.patient_id for s in phantom.studies], return_counts=True)[1]
    assert per_patient.max() >= 2 and (per_patient == 1).any()


def test_formats_include_monochrome1_dicom_and_16bit_png(phantom):
    formats = {s.format for s in phantom.studies}
    assert {"DICOM-MONOCHROME1", "DICOM-MONOCHROME2", "PNG16", "PNG8"} <= formats
    for fmt in ("DICOM-MONOCHROME1", "DICOM-MONOCHROME2", "PNG16"):
        study = next(s for s in phantom.studies if s.format == fmt)
        img, meta = load_image(phantom.root / study.image)
        assert img.shape == (study.height, study.width)
        if fmt == "DICOM-MONOCHROME1":
            assert meta.dicom.photometric_interpretation == "MONOCHROME1"
        h, w = img.shape  # bone bright after MONOCHROME1 inversion: the mediastinum is brighter than the air outside
        assert img[h // 3, w // 2] > img[2, 2] + 0.3, fmt
    assert any(s.width != s.height for s in phantom.studies)


def test_masks_and_boxes_match_the_findings_and_their_side(phantom):
    checked = 0
    for s in phantom.studies:
        assert set(s.masks) == {f.name for f in s.findings}
        assert {b["label"] for b in s.boxes} == set(s.masks)
        for f in s.findings:
            mask = load_image(phantom.root / s.masks[f.name])[0] > 0.5
            assert mask.shape == (s.height, s.width) and mask.sum() >= 4, (s.study_id, f.name)
            ys, xs = np.nonzero(mask)
            for b in (b for b in s.boxes if b["label"] == f.name):
                assert b["x"] >= 0 and b["y"] >= 0 and b["x"] + b["w"] <= s.width and b["y"] + b["h"] <= s.height
            if f.side in ("right", "left"):  # radiological convention: the patient's right is the image's left
                centre = xs.mean() - (s.width - 1) / 2
                assert (centre < 0) == (f.side == "right"), (s.study_id, f.name, f.side)
                checked += 1
            if f.name == "Pleural Effusion" and f.side == "bilateral":
                assert xs.min() < s.width / 2 < xs.max()
    assert checked > 50


def test_findings_change_the_image_where_the_mask_is(phantom):
    """A present finding makes its region brighter (effusion, nodule, consolidation) or darker (pneumothorax)."""
    for name, brighter in (("Pleural Effusion", True), ("Lung Lesion", True), ("Consolidation", True),
                           ("Pneumothorax", False)):  # fmt: skip
        diffs = []
        for s in (s for s in phantom.studies if name in s.masks and s.format == "PNG8"):
            img = load_image(phantom.root / s.image)[0]
            mask = load_image(phantom.root / s.masks[name])[0] > 0.5
            ring = _dilate(mask, 3) & ~mask
            diffs.append(img[mask].mean() - img[ring].mean())
        assert diffs, name
        assert (np.median(diffs) > 0.03) if brighter else (np.median(diffs) < -0.03), (name, np.median(diffs))


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    from scipy.ndimage import binary_dilation

    return binary_dilation(mask, iterations=r)


def test_reports_state_findings_with_location_negations_and_uncertainty(phantom):
    reports = [s.report for s in phantom.studies]
    assert any("No pneumothorax" in r or "no pneumothorax" in r for r in reports)
    assert any(r.startswith(("FINDINGS", "Findings", "EXAMINATION")) for r in reports)
    assert any("IMPRESSION" not in r and "Impression" not in r for r in reports)
    uncertain = [s for s in phantom.studies if any(not f.certain for f in s.findings)]
    assert uncertain and all(-1.0 in s.report_labels.values() for s in uncertain)
    for s in phantom.studies:
        text = s.report.lower()
        for f in s.findings:
            assert s.report_labels[f.name] == (1.0 if f.certain else -1.0)
            if f.side and f.name != "Cardiomegaly":
                assert f.side in text, (s.study_id, f.name)
        for name in PHANTOM_FINDINGS:
            if s.labels[name] == 0:
                assert s.report_labels[name] == 0.0 or math.isnan(s.report_labels[name])


@pytest.mark.parametrize("family", [PHANTOM_ZERO_SHOT_PROMPTS, PHANTOM_SYNONYM_PROMPTS])
def test_zero_shot_family_never_appears_in_training_reports_or_queries(phantom, family):
    from mmrad.config.prompts import prompt_bank_from_dict
    from mmrad.demo import load_config

    bank = prompt_bank_from_dict(family)
    assert bank.names == PHANTOM_FINDINGS
    # the demo's training queries (the findings' descriptions) are not held-out phrasings either
    from mmrad.demo import DEMO_CONFIG

    queries = " ".join(load_config(DEMO_CONFIG).model.labels.descriptions.values()).lower()
    reports = " ".join(s.report.lower() for s in phantom.studies) + " " + queries
    for finding in PHANTOM_FINDINGS:
        prompts = bank.prompts(finding)
        assert prompts.positive and prompts.negative
        for phrase in prompts.positive + prompts.negative:
            assert phrase.lower() not in reports, phrase


def test_labeler_agrees_with_the_report_truth(phantom):
    labeler = pytest.importorskip("mmrad.reports.labeler").ReportLabeler("chexpert")
    disagreements = []
    for s in phantom.studies:
        got = labeler.label(s.report).labels
        for name in PHANTOM_FINDINGS:
            want = s.report_labels[name]
            if not (got[name] == want or (math.isnan(want) and math.isnan(got[name]))):
                disagreements.append((name, want, got[name], s.report))
        if s.labels["No Finding"]:
            assert got["No Finding"] == 1.0, s.report
    assert not disagreements, disagreements[:5]
