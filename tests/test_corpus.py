"""Ingest: manifest -> cached corpus, rejects, labels, boxes, bit depth, patient splits, reuse, PHI."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmrad.corpus import ingest as corpus_mod
from mmrad.corpus.format import CACHE_DIR, INFO_FILE, REJECTS_FILE, corpus_features, load_corpus
from mmrad.corpus.ingest import ingest
from mmrad.corpus.manifest import ManifestError, manifest_from_folder, parse_label
from mmrad.corpus.splits import SPLIT_NAMES, parse_fractions, patient_split
from mmrad.errors import MMRadError
from mmrad.io.dicom import write_dicom

SECRET_ID = "CANARY-PATIENT-7731"


def _ramp(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy * w + xx) / float(h * w - 1)


def _write_rows(path: Path, rows: list[dict]) -> Path:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def mixed(tmp_path) -> Path:
    """PNG (8- and 16-bit), DICOM (MONOCHROME1/2), JPEG, plus a missing file, a truncated DICOM, a row with neither
    report nor label and a bad label value: 7 good rows, 4 bad ones."""
    src = tmp_path / "src"
    src.mkdir()
    img = _ramp(60, 80)
    Image.fromarray(np.round(img * 255).astype(np.uint8)).save(src / "a.png")
    Image.fromarray(np.round(img[::-1] * 255).astype(np.uint8)).save(src / "b.png")
    Image.fromarray(np.round(img * 65535).astype(np.uint16)).save(src / "deep.png")
    Image.fromarray(np.round(img * 255).astype(np.uint8)).save(src / "c.jpg", quality=95)
    twelve = np.round(img * 4095).astype(np.uint16)
    write_dicom(src / "m2.dcm", twelve, bits_stored=12, PatientID=SECRET_ID, ViewPosition="AP")
    write_dicom(src / "m1.dcm", 4095 - twelve, photometric="MONOCHROME1", bits_stored=12, PatientID=SECRET_ID)
    write_dicom(src / "cut.dcm", twelve, bits_stored=12)
    data = (src / "cut.dcm").read_bytes()
    (src / "cut.dcm").write_bytes(data[: len(data) - 2000])
    Image.fromarray(np.round(img * 255).astype(np.uint8)).save(src / "e.png")
    Image.fromarray(np.round(img * 255).astype(np.uint8)).save(src / "f.png")
    report = "FINDINGS: Small right pleural effusion. No pneumothorax.\n\nIMPRESSION: Right effusion."
    box = json.dumps([{"label": "Pleural Effusion", "x": 40, "y": 30, "w": 40, "h": 30}])
    good = [
        ("src/a.png", "P1", "1", box),
        ("src/b.png", "P1", "0", ""),
        ("src/deep.png", "P2", "", ""),
        ("src/c.jpg", "P3", "-1", ""),
        ("src/m2.dcm", SECRET_ID, "1", ""),
        ("src/m1.dcm", SECRET_ID, "0", ""),
        ("src/e.png", "P5", "1", ""),
    ]
    rows = [{"image": i, "report": report, "patient_id": p, "Pleural Effusion": e, "boxes": b} for i, p, e, b in good]
    rows += [
        {"image": "src/missing.png", "report": report, "patient_id": "P6", "Pleural Effusion": "1", "boxes": ""},
        {"image": "src/cut.dcm", "report": report, "patient_id": "P7", "Pleural Effusion": "1", "boxes": ""},
        {"image": "src/f.png", "report": "   ", "patient_id": "P8", "Pleural Effusion": "", "boxes": ""},
        {"image": "src/f.png", "report": report, "patient_id": "P9", "Pleural Effusion": "yes", "boxes": ""},
    ]
    return _write_rows(tmp_path / "manifest.csv", rows)


def _rejects(out: Path) -> list[dict]:
    with (out / REJECTS_FILE).open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _all_rows(splits) -> list[dict]:
    return [row for name in SPLIT_NAMES for row in splits[name]]


def test_mixed_manifest_exact_counts_and_rejects(mixed, tmp_path):
    out = tmp_path / "corpus"
    summary = ingest(mixed, out, image_size=40, labels="manifest", progress=False)
    assert summary.kept == 7 and summary.rejected == 4 and summary.info.total == 11
    rejects = _rejects(out)
    assert [(int(r["row"]), r["path"]) for r in rejects] == [
        (7, "src/missing.png"), (8, "src/cut.dcm"), (9, "src/f.png"), (10, "src/f.png"),
    ]  # fmt: skip
    reasons = [r["reason"] for r in rejects]
    assert reasons[0] == "file not found"
    assert reasons[1].startswith("truncated or malformed pixel data")
    assert reasons[2] == "no report and no finding labels"
    assert reasons[3].startswith("bad label value 'yes'") and "Pleural Effusion" in reasons[3]
    assert summary.info.reject_reasons == {
        "file not found": 1, "truncated or malformed pixel data": 1, "no report and no finding labels": 1,
        "bad label value": 1,
    }  # fmt: skip

    splits, info = load_corpus(out)
    assert set(splits) == set(SPLIT_NAMES)
    assert info.label_names == ["Pleural Effusion"]
    rows = {r["manifest_row"]: r for r in _all_rows(splits)}
    assert sorted(rows) == list(range(7))
    assert {rows[i]["source_format"] for i in rows} == {"PNG", "JPEG", "DICOM"}
    assert rows[0]["labels"] == [1.0] and rows[3]["labels"] == [-1.0] and math.isnan(rows[2]["labels"][0])
    assert rows[0]["label_source"] == "manifest"
    assert rows[4]["view"] == "AP" and rows[0]["view"] == ""
    assert (
        rows[0]["findings"].startswith("Small right pleural effusion") and rows[0]["impression"] == "Right effusion."
    )
    assert rows[0]["sentences"][0] == "Small right pleural effusion."
    # MONOCHROME1 is inverted on ingest: both DICOMs come out as the same ramp
    m2, m1 = (np.asarray(rows[i]["image"], dtype=np.float64) for i in (4, 5))
    assert np.abs(m2 - m1).max() <= 1 and (rows[4]["width"], rows[4]["height"]) == (40, 30)


def test_datasets_load_from_disk_and_schema(mixed, tmp_path):
    import datasets

    out = tmp_path / "corpus"
    ingest(mixed, out, image_size=40, labels="manifest", progress=False)
    splits = datasets.load_from_disk(str(out))
    assert list(splits["train"].features) == list(corpus_features())


def test_boxes_rescaled_to_the_cached_image(mixed, tmp_path):
    ingest(mixed, tmp_path / "c", image_size=40, labels="manifest", progress=False)
    rows = {r["manifest_row"]: r for r in _all_rows(load_corpus(tmp_path / "c")[0])}
    (box,) = rows[0]["boxes"]  # (40, 30, 40, 30) on 80x60 -> x0.5 on 40x30
    assert (box["label"], box["x"], box["y"], box["w"], box["h"]) == ("Pleural Effusion", 20.0, 15.0, 20.0, 15.0)
    assert (rows[0]["orig_width"], rows[0]["orig_height"]) == (80, 60)


def test_annotation_kind_reads_list_lengths(mixed, tmp_path):
    from mmrad.corpus.format import annotation_kind

    ingest(mixed, tmp_path / "c", image_size=40, labels="manifest", split="1,0,0", progress=False)
    train = load_corpus(tmp_path / "c")[0]["train"]
    assert annotation_kind(train) == "boxes"  # the mixed manifest has boxes, no masks
    with_box = [i for i, r in enumerate(train.select_columns(["boxes"])) if r["boxes"]]
    assert annotation_kind(train.select([i for i in range(len(train)) if i not in with_box])) is None
    assert annotation_kind(train.remove_columns(["boxes"])) is None


def test_box_outside_the_image_is_rejected(tmp_path):
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "b.png")
    outside = json.dumps([{"label": "Cardiomegaly", "x": 15, "y": 0, "w": 10, "h": 5}])
    manifest = _write_rows(tmp_path / "m.csv", [
        {"image": "a.png", "report": "Normal.", "patient_id": "A", "Cardiomegaly": "0", "boxes": outside},
        {"image": "b.png", "report": "Normal.", "patient_id": "B", "Cardiomegaly": "0", "boxes": "[{oops"},
    ])  # fmt: skip
    summary = ingest(manifest, tmp_path / "c", image_size=20, labels="manifest", progress=False)
    assert summary.kept == 0
    assert [r["reason"].split(":")[0] for r in _rejects(tmp_path / "c")] == ["bad boxes", "bad boxes"]


def test_masks_are_resized_with_the_image_and_bad_masks_reject_the_row(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(np.zeros((40, 60), np.uint8)).save(tmp_path / name)
    mask = np.zeros((40, 60), np.uint8)
    mask[10:20, 30:50] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    Image.fromarray(mask[:20]).save(tmp_path / "small.png")
    manifest = _write_rows(tmp_path / "m.csv", [
        {"image": "a.png", "report": "Nodule.", "patient_id": "A", "masks": json.dumps({"Lung Lesion": "m.png"})},
        {"image": "b.png", "report": "Nodule.", "patient_id": "B", "masks": json.dumps({"Lung Lesion": "small.png"})},
        {"image": "c.png", "report": "Nodule.", "patient_id": "C", "masks": json.dumps({"Lung Lesion": "no.png"})},
    ])  # fmt: skip
    summary = ingest(manifest, tmp_path / "c", image_size=30, labels="chexpert", split="1,0,0", progress=False)
    assert (summary.kept, summary.info.reject_reasons) == (1, {"bad mask": 2})
    (row,) = load_corpus(tmp_path / "c")[0]["train"]
    cached = np.asarray(row["masks"][0]["mask"]) > 127
    assert cached.shape == (20, 30) and cached[5:10, 15:25].all() and cached.sum() == 50


def test_16bit_source_stays_16bit_and_8bit_stays_8bit(mixed, tmp_path):
    ingest(mixed, tmp_path / "c", image_size=80, labels="manifest", progress=False)  # no resize: exact values
    rows = {r["manifest_row"]: r for r in _all_rows(load_corpus(tmp_path / "c")[0])}
    deep, shallow, dicom = rows[2]["image"], rows[0]["image"], rows[4]["image"]
    assert deep.mode.startswith("I") and rows[2]["bit_depth"] == 16
    expected = np.round(_ramp(60, 80) * 65535).astype(np.int64)
    assert np.array_equal(np.asarray(deep, dtype=np.int64), expected)
    assert shallow.mode == "L" and rows[0]["bit_depth"] == 8
    assert dicom.mode.startswith("I") and rows[4]["bit_depth"] == 12  # 12-bit DICOM is cached at 16 bits


def test_no_identifiers_or_source_paths_in_the_cache(mixed, tmp_path):
    out = tmp_path / "corpus"
    ingest(mixed, out, image_size=40, labels="manifest", progress=False)
    src = str((tmp_path / "src").resolve()).encode()
    for path in out.rglob("*"):
        if path.is_file() and path.name != REJECTS_FILE:  # rejects.csv is the user's own error report
            data = path.read_bytes()
            assert SECRET_ID.encode() not in data, path
            assert src not in data and b"src/" not in data, path
    keys = {r["patient_key"] for r in _all_rows(load_corpus(out)[0])}
    assert all(len(k) == 16 for k in keys) and SECRET_ID not in keys


def test_rerun_reuses_finished_work(mixed, tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_mod, "SHARD_ROWS", 2)
    out = tmp_path / "corpus"
    first = ingest(mixed, out, image_size=40, labels="manifest", progress=False)
    assert not first.reused and first.shards_decoded == 5  # 9 rows pass the manifest checks
    again = ingest(mixed, out, image_size=40, labels="manifest", progress=False)
    assert again.reused and again.info == first.info
    # a crash after decoding (no info file) or a new split seed reuses every decoded shard
    (out / INFO_FILE).unlink()
    resumed = ingest(mixed, out, image_size=40, labels="manifest", progress=False, seed=3)
    assert not resumed.reused and resumed.shards_decoded == 0 and resumed.shards_reused == 5
    # an appended row only decodes the last shard
    with mixed.open("a", newline="", encoding="utf-8") as f:
        csv.writer(f).writerow(["src/f.png", "No effusion.", "P10", "0", ""])
    grown = ingest(mixed, out, image_size=40, labels="manifest", progress=False, seed=3)
    assert grown.shards_decoded == 1 and grown.shards_reused == 4 and grown.kept == 8
    assert len(list((out / CACHE_DIR / "shards").iterdir())) == 5  # the stale shard is cleaned up


def test_an_edited_manifest_rebuilds_from_the_decoded_shards(mixed, tmp_path):
    out = tmp_path / "corpus"
    first = ingest(mixed, out, image_size=40, labels="manifest", progress=False)
    assert ingest(mixed, out, image_size=40, labels="manifest", progress=False).reused
    text = mixed.read_text(encoding="utf-8")
    # a kept row's report, then a rejected row's reason: each is a new input, and no image is decoded again
    for old, new in (("IMPRESSION: Right effusion.", "IMPRESSION: Left effusion."), (",yes,", ",maybe,")):
        text = text.replace(old, new, 1)
        mixed.write_text(text, encoding="utf-8")
        again = ingest(mixed, out, image_size=40, labels="manifest", progress=False)
        assert not again.reused and again.shards_decoded == 0 and again.info.key != first.info.key
        first = again
    rows = {r["manifest_row"]: r for r in _all_rows(load_corpus(out)[0])}
    assert rows[0]["impression"] == "Left effusion." and rows[1]["impression"] == "Right effusion."
    assert _rejects(out)[-1]["reason"].startswith("bad label value 'maybe'")


def test_parallel_ingest_matches_serial(mixed, tmp_path):
    one = ingest(mixed, tmp_path / "one", image_size=40, labels="manifest", progress=False)
    two = ingest(mixed, tmp_path / "two", image_size=40, labels="manifest", progress=False, num_proc=2)
    assert one.info.num_rows == two.info.num_rows and one.info.key == two.info.key
    a, b = load_corpus(tmp_path / "one")[0]["train"], load_corpus(tmp_path / "two")[0]["train"]
    assert a["manifest_row"] == b["manifest_row"]
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a["image"], b["image"], strict=True))


def test_folder_tree_becomes_a_manifest(tmp_path):
    root = tmp_path / "archive"
    for patient, study, n in (("p1", "s1", 2), ("p1", "s2", 1), ("p2", "s1", 1)):
        folder = root / patient / study
        folder.mkdir(parents=True)
        (folder / "report.txt").write_text("IMPRESSION: No acute cardiopulmonary process.", encoding="utf-8")
        for i in range(n):
            Image.fromarray(np.full((10, 12), 100, np.uint8)).save(folder / f"im{i}.png")
    records = manifest_from_folder(root, out=tmp_path / "m.csv")
    assert [(r["patient_id"], r["study_id"]) for r in records] == [
        ("p1", "p1/s1"), ("p1", "p1/s1"), ("p1", "p1/s2"), ("p2", "p2/s1"),
    ]  # fmt: skip
    with (tmp_path / "m.csv").open(encoding="utf-8") as f:
        assert next(csv.DictReader(f))["image"] == "archive/p1/s1/im0.png"
    with pytest.raises(ManifestError, match="finding columns"):  # a folder has no finding columns
        ingest(root, tmp_path / "c", image_size=12, labels="manifest", progress=False)
    pytest.importorskip("mmrad.reports.labeler")
    summary = ingest(root, tmp_path / "c", image_size=12, labels="chexpert", split="1,0,0", progress=False)
    assert summary.kept == 4
    assert load_corpus(tmp_path / "c")[0]["train"]["impression"][0] == "No acute cardiopulmonary process."


def test_jsonl_and_parquet_manifests(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    rows = [{"image": "a.png", "report": "No pneumothorax.", "patient_id": 17, "Pneumothorax": 0}]
    (tmp_path / "m.jsonl").write_text(json.dumps(rows[0]) + "\n\nnot json\n", encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    for name, kept, rejected in (("m.jsonl", 1, 1), ("m.parquet", 1, 0)):
        summary = ingest(tmp_path / name, tmp_path / name.replace(".", "_"), image_size=8, labels="manifest",
                         progress=False)  # fmt: skip
        assert (summary.kept, summary.rejected) == (kept, rejected), name


def test_non_utf8_cells_reject_their_row_only(tmp_path):
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / name)
    (tmp_path / "bad.txt").write_bytes(b"Findings: \xff\xfe no effusion")
    (tmp_path / "m.csv").write_bytes(
        b"image,report,report_path,patient_id,Pneumothorax\n"
        b"a.png,No pneumothorax.,,A,0\n"
        b"b.png,Caf\xe9 report,,B,0\n"
        b"a.png,,bad.txt,C,0\n"
    )
    summary = ingest(tmp_path / "m.csv", tmp_path / "c", image_size=8, labels="manifest", progress=False)
    assert (summary.kept, summary.rejected) == (1, 2)
    reasons = {int(r["row"]): (r["path"], r["reason"]) for r in _rejects(tmp_path / "c")}
    assert reasons[1] == ("b.png", "not valid UTF-8 text (column 'report')")
    assert reasons[2] == ("a.png", "report file is not UTF-8 text (bad.txt)")
    assert summary.info.reject_reasons == {"not valid UTF-8 text": 1, "report file is not UTF-8 text": 1}


def test_bad_manifests_are_clear_errors(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        ingest(tmp_path / "nope.csv", tmp_path / "c", progress=False)
    _write_rows(tmp_path / "m.csv", [{"image": "a.png", "text": "x"}])
    with pytest.raises(ManifestError, match="patient_id"):
        ingest(tmp_path / "m.csv", tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match="sum to 1"):
        ingest(tmp_path / "m.csv", tmp_path / "c", split="0.5,0.1,0.1", progress=False)
    with pytest.raises(MMRadError, match="not an mmrad corpus"):
        load_corpus(tmp_path)


def test_parse_label_values():
    assert [parse_label(v) for v in ("1", "0", "-1", "1.0", 0, -1.0)] == [1.0, 0.0, -1.0, 1.0, 0.0, -1.0]
    assert all(math.isnan(parse_label(v)) for v in ("", " ", "nan", None, float("nan")))
    for bad in ("2", "yes", "0.5", True):
        with pytest.raises(ValueError, match="bad label value"):
            parse_label(bad)


# ------------------------------------------------------------------------------------------------------ splits


def test_patient_split_keeps_patients_whole_and_is_deterministic():
    rng = np.random.default_rng(0)
    patients = [f"p{i}" for i in rng.integers(0, 150, 400)]
    labels = (rng.random((400, 5)) < 0.2).astype(np.float32)
    a = patient_split(patients, labels, (0.8, 0.1, 0.1), seed=1)
    assert a == patient_split(patients, labels, (0.8, 0.1, 0.1), seed=1)
    assert a != patient_split(patients, labels, (0.8, 0.1, 0.1), seed=2)
    owner = {}
    for p, s in zip(patients, a, strict=True):
        assert owner.setdefault(p, s) == s
    counts = np.bincount(a, minlength=3) / len(a)
    assert np.allclose(counts, (0.8, 0.1, 0.1), atol=0.05)
    for s in range(3):  # stratified: every split holds each finding at about its overall rate
        rate = labels[np.array(a) == s].mean(axis=0)
        assert np.all(np.abs(rate - labels.mean(axis=0)) < 0.12), (s, rate)


def test_parse_fractions():
    assert parse_fractions("0.8,0.1,0.1") == (0.8, 0.1, 0.1)
    assert parse_fractions([1, 0, 0]) == (1.0, 0.0, 0.0)
    for bad in ("0.8,0.2", "a,b,c", "1.2,-0.1,-0.1"):
        with pytest.raises(ValueError):
            parse_fractions(bad)


@pytest.fixture(scope="module")
def phantom_corpus(tmp_path_factory):
    from mmrad.phantom.corpus import make_phantom_corpus

    root = tmp_path_factory.mktemp("phantom")
    return make_phantom_corpus(root / "src", n=120, image_size=48, seed=3)


def test_phantom_ingest_splits_by_patient(phantom_corpus, tmp_path):
    a = ingest(phantom_corpus.manifest, tmp_path / "a", image_size=32, labels="manifest", seed=5, progress=False)
    assert a.kept == 120 and a.rejected == 0
    splits, info = load_corpus(tmp_path / "a")
    assert info.label_names == ["No Finding", "Cardiomegaly", "Lung Lesion", "Consolidation", "Pneumothorax",
                                "Pleural Effusion"]  # fmt: skip
    owner: dict[str, str] = {}
    for name in SPLIT_NAMES:
        for key in splits[name]["patient_key"]:
            assert owner.setdefault(key, name) == name
    assert len(owner) < 120  # some patients have several studies
    masks = [
        (m["mask"].size, (r["width"], r["height"])) for r in splits["train"].select(range(20)) for m in r["masks"]
    ]
    assert masks and all(a == b for a, b in masks)
    # the same seed gives the same split; another seed another one
    b = ingest(phantom_corpus.manifest, tmp_path / "b", image_size=32, labels="manifest", seed=5, progress=False)
    c = ingest(phantom_corpus.manifest, tmp_path / "a", image_size=32, labels="manifest", seed=6, progress=False)
    rows = {d: load_corpus(tmp_path / d)[0] for d in ("a", "b")}
    assert b.info.num_rows == a.info.num_rows and c.shards_decoded == 0
    assert rows["a"]["test"]["manifest_row"] != splits["test"]["manifest_row"]
    assert load_corpus(tmp_path / "b")[0]["test"]["manifest_row"] == splits["test"]["manifest_row"]


# ------------------------------------------------------------------------------------------- labels from reports


def test_labeler_fills_labels_when_the_manifest_has_none(tmp_path):
    pytest.importorskip("mmrad.reports.labeler")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "b.png")
    manifest = _write_rows(tmp_path / "m.csv", [
        {"image": "a.png", "report": "FINDINGS: Small right pleural effusion. No pneumothorax.", "patient_id": "A",
         "Cardiomegaly": ""},
        {"image": "b.png", "report": "FINDINGS: Possible consolidation. No pleural effusion.", "patient_id": "B",
         "Cardiomegaly": "1"},
    ])  # fmt: skip
    ingest(manifest, tmp_path / "c", image_size=8, labels="both", split="1,0,0", progress=False)
    splits, info = load_corpus(tmp_path / "c")
    rows = {r["manifest_row"]: dict(zip(info.label_names, r["labels"], strict=True)) | {"src": r["label_source"]}
            for r in splits["train"]}  # fmt: skip
    assert rows[0]["Pleural Effusion"] == 1.0 and rows[0]["Pneumothorax"] == 0.0 and rows[0]["src"] == "labeler"
    assert rows[1]["Consolidation"] == -1.0 and rows[1]["Pleural Effusion"] == 0.0
    assert rows[1]["Cardiomegaly"] == 1.0 and rows[1]["src"] == "manifest+labeler"  # the manifest cell wins
    ingest(manifest, tmp_path / "d", image_size=8, labels="chexpert", split="1,0,0", progress=False)
    splits, info = load_corpus(tmp_path / "d")
    assert math.isnan(splits["train"][1]["labels"][info.label_names.index("Cardiomegaly")])  # reports only
    assert set(splits["train"]["label_source"]) == {"labeler"}


def test_cli_ingest_prints_a_summary(mixed, tmp_path, capsys):
    from mmrad.cli import main

    args = ["ingest", str(mixed), "--out", str(tmp_path / "c"), "--image-size", "32", "--labels", "manifest"]
    assert main([*args, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "ingested 7 of 11 rows" in out and "rejected 4 row(s)" in out and "file not found" in out
    assert main([*args, "--no-progress"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert main(["ingest", str(tmp_path / "none.csv"), "--out", str(tmp_path / "d")]) == 1


def test_manifest_split_column_is_used_instead_of_the_patient_split(tmp_path, caplog):
    src = tmp_path / "src"
    src.mkdir()
    rows = []
    for i in range(9):
        Image.fromarray(np.full((20, 20), i * 20, dtype=np.uint8)).save(src / f"{i}.png")
        split = ["train", "val", "TEST"][i % 3]
        rows.append({"image": f"src/{i}.png", "patient_id": f"P{i // 2}", "Cardiomegaly": "1", "split": split})
    Image.fromarray(np.zeros((20, 20), dtype=np.uint8)).save(src / "z.png")
    rows.append({"image": "src/z.png", "patient_id": "PZ", "Cardiomegaly": "0", "split": "dev"})
    with caplog.at_level("WARNING", logger="mmrad"):
        summary = ingest(_write_rows(tmp_path / "m.csv", rows), tmp_path / "c", image_size=16, labels="manifest",
                         progress=False)  # fmt: skip
    assert summary.kept == 9 and summary.info.reject_reasons == {"bad split value": 1}
    splits, info = load_corpus(tmp_path / "c")
    assert {n: sorted(splits[n]["manifest_row"]) for n in SPLIT_NAMES} == {
        "train": [0, 3, 6], "validation": [1, 4, 7], "test": [2, 5, 8]}  # fmt: skip
    assert info.split == pytest.approx([1 / 3] * 3)
    # patients 0..3 have images in two splits: the manifest's choice stands, with a warning
    assert any("4 patient(s) in more than one split" in r.getMessage() for r in caplog.records)
