"""Broken corpora: a manifest where about one row in ten is broken in every way archives break, ingested through
``mmrad ingest``. Ingest must finish, list every bad row in rejects.csv with the right reason, and keep every good
row unchanged (labels, de-identified report, pixels equal to what ``load_image`` gives)."""

from __future__ import annotations

import builtins
import csv
import io
import json
import math
import os
import threading
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, JPEGLSLossless, RLELossless

from mmrad.cli import main
from mmrad.corpus.format import REJECTS_FILE, load_corpus
from mmrad.corpus.manifest import parse_label
from mmrad.corpus.splits import SPLIT_NAMES
from mmrad.io.dicom import write_dicom
from mmrad.io.images import load_image, resize_longest
from mmrad.privacy.deid import deidentify_text, hash_identifier

IMAGE_SIZE = 64
REPORT = "FINDINGS: Heart size is normal. No pleural effusion.\nIMPRESSION: No acute cardiopulmonary process."
FINDINGS = ["Cardiomegaly", "Pleural Effusion"]


def _ramp(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    return np.clip((yy * w + xx) / float(h * w) + rng.normal(0, 0.02, (h, w)), 0, 1)


def _dicom_variant(src: Path, dst: Path, **changes) -> Path:
    ds = pydicom.dcmread(src)
    for key, value in changes.items():
        if key == "TransferSyntaxUID":
            ds.file_meta.TransferSyntaxUID = value
            ds.PixelData = encapsulate([b"\xff\xd8\xff\xe0 not a real codestream \xff\xd9"])
            ds["PixelData"].VR = "OB"
        elif value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    ds.save_as(dst, enforce_file_format=True)
    return dst


def _good_images(root: Path, n: int) -> list[tuple[str, str]]:
    """n small images in every format ingest reads: (file name, format)."""
    root.mkdir()
    out = []
    for i in range(n):
        h, w = (IMAGE_SIZE, 48) if i % 2 else (40, IMAGE_SIZE)  # longest side = IMAGE_SIZE: no resize
        img = _ramp(h, w, i)
        kind = i % 7
        if kind == 0:
            name = f"g{i}.png"
            Image.fromarray(np.round(img * 255).astype(np.uint8)).save(root / name)
        elif kind == 1:
            name = f"g{i}.png"
            Image.fromarray(np.round(img * 65535).astype(np.uint16)).save(root / name)
        elif kind == 2:
            name = f"g{i}.jpg"
            Image.fromarray(np.round(img * 255).astype(np.uint8)).save(root / name, quality=90)
        elif kind == 3:
            name = f"g{i}.png"
            rgb = np.stack([img, img[::-1], img[:, ::-1]], axis=-1)
            Image.fromarray(np.round(rgb * 255).astype(np.uint8), "RGB").save(root / name)
        else:
            name = f"g{i}" if kind == 6 else f"g{i}.dcm"  # DICOM archives often have no suffix
            photometric = "MONOCHROME1" if kind == 5 else "MONOCHROME2"
            twelve = np.round(img * 4095).astype(np.uint16)
            write_dicom(root / name, 4095 - twelve if kind == 5 else twelve, photometric=photometric,
                        bits_stored=12, compress=RLELossless if kind == 6 else None,
                        PixelSpacing=[0.2, 0.2])  # fmt: skip
        out.append((name, kind))
    return out


def _broken_files(root: Path) -> None:
    """The broken files of BROKEN (and the files whose rows are broken in other ways)."""
    root.mkdir()
    base = root / "base.dcm"
    write_dicom(base, np.round(_ramp(16, 16, 0) * 4095).astype(np.uint16), bits_stored=12)
    data = base.read_bytes()
    (root / "truncated.dcm").write_bytes(data[: len(data) - 200])
    (root / "not_dicom.dcm").write_bytes(b"%PDF-1.4 a scanned request form, not an image\n" * 20)
    (root / "dicm_garbage.dcm").write_bytes(bytes(128) + b"DICM" + np.random.default_rng(0).bytes(300))
    _dicom_variant(base, root / "no_pixels.dcm", PixelData=None)
    _dicom_variant(base, root / "hsv.dcm", PhotometricInterpretation="HSV")
    _dicom_variant(base, root / "zero_rows.dcm", Rows=0)
    _dicom_variant(base, root / "jpeg_ls.dcm", TransferSyntaxUID=JPEGLSLossless)  # its codec is hidden below
    _dicom_variant(base, root / "bad_jpeg.dcm", TransferSyntaxUID=JPEGBaseline8Bit, BitsAllocated=8, BitsStored=8,
                   HighBit=7)  # fmt: skip
    (root / "zero_bytes.png").write_bytes(b"")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8)).save(buf, format="PNG")
    (root / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "folder.png").mkdir()
    os.mkfifo(root / "fifo.png")  # opening it would block forever
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "locked.png")
    for name in ("box_outside.png", "mask_missing.png"):  # good images, bad annotations
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / name)
    (root / "latin1.txt").write_bytes("FINDINGS: \xe9panchement pleural droit.".encode("latin-1"))
    base.unlink()


# (image, manifest cells that differ from a good row, expected reason prefix); None = the image of row 0
BROKEN = [
    ("bad/truncated.dcm", {}, "truncated or malformed pixel data"),
    ("bad/not_dicom.dcm", {}, "not an image (neither DICOM nor a format PIL can read)"),
    ("bad/dicm_garbage.dcm", {}, "DICOM file has no pixel data"),
    ("bad/no_pixels.dcm", {}, "DICOM file has no pixel data"),
    ("bad/hsv.dcm", {}, "unsupported photometric interpretation 'HSV'"),
    ("bad/zero_rows.dcm", {}, "empty image (0x16)"),
    ("bad/jpeg_ls.dcm", {}, "no decoder installed for transfer syntax JPEG-LS Lossless Image Compression"),
    ("bad/bad_jpeg.dcm", {}, "the JPEG Baseline (Process 1) decoder failed on this file"),
    ("bad/zero_bytes.png", {}, "empty file (0 bytes)"),
    ("bad/truncated.png", {}, "truncated or corrupt PNG file"),
    ("bad/missing.png", {}, "file not found"),
    ("bad/locked.png", {}, "permission denied"),
    ("bad/folder.png", {}, "is a directory, not a file"),
    ("bad/fifo.png", {}, "not a regular file"),
    ("good/g0.png", {"report": "   ", "Cardiomegaly": "", "Pleural Effusion": ""}, "no report and no finding labels"),
    ("good/g1.png", {"report": "", "report_path": "bad/absent.txt"}, "report file not found"),
    ("good/g2.jpg", {"report": "", "report_path": "bad/latin1.txt"}, "report file is not UTF-8 text"),
    ("good/g3.png", {"report": "\udce9panchement"}, "not valid UTF-8 text (column 'report')"),
    (None, {}, "duplicate image (same file as row 0)"),
    ("good/g4.dcm", {"Cardiomegaly": "2"}, "bad label value '2' (use 1, 0, -1 or empty) in column 'Cardiomegaly'"),
    ("good/g5.dcm", {"Pleural Effusion": "yes"}, "bad label value 'yes'"),
    ("good/g6", {"patient_id": ""}, "missing patient_id"),
    (
        "bad/box_outside.png",
        {"boxes": json.dumps([{"label": "Cardiomegaly", "x": 10, "y": 0, "w": 30, "h": 8}])},
        "bad boxes: box 'Cardiomegaly' lies outside the 16x16 image",
    ),  # fmt: skip
    (
        "bad/mask_missing.png",
        {"masks": json.dumps({"Cardiomegaly": "bad/absent_mask.png"})},
        "bad mask ('Cardiomegaly': file not found)",
    ),
]


@contextmanager
def _unblock_fifo_readers(fifo: Path):
    """If a reader ever opens the FIFO (a regression), give it end-of-file so the test fails instead of hanging."""
    done = threading.Event()

    def poll():
        while not done.wait(0.5):
            with suppress(OSError):  # opening succeeds only while someone reads
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _write_manifest(path: Path, rows: list[dict]) -> None:
    """CSV with undecodable bytes where a cell holds a lone surrogate (a non-UTF-8 cell, as Latin-1 exports have)."""
    fields = list(dict.fromkeys(k for r in rows for k in r))
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    path.write_bytes(text.getvalue().encode("utf-8", "surrogateescape"))


@pytest.fixture(scope="module")
def broken_corpus(tmp_path_factory, phantom_corpus):
    """The phantom's 80 studies and 180 small images in every format, plus 24 broken rows, through `mmrad ingest`."""
    root = tmp_path_factory.mktemp("broken")
    good = _good_images(root / "good", 180)
    _broken_files(root / "bad")
    rows = []
    with (phantom_corpus.parent / "source" / "manifest.csv").open(newline="", encoding="utf-8") as f:
        source = phantom_corpus.parent / "source"
        for r in csv.DictReader(f):
            masks = {k: str(source / v) for k, v in json.loads(r["masks"] or "{}").items()}
            rows.append({**r, "image": str(source / r["image"]), "masks": json.dumps(masks) if masks else ""})
    labels = ["1", "0", "-1", ""]
    for i, (name, _) in enumerate(good):
        rows.append({"image": f"good/{name}", "report": f"{REPORT} Image {i}.", "patient_id": f"G{i // 2}",
                     "Cardiomegaly": labels[i % 4], "Pleural Effusion": labels[(i // 4) % 4]})  # fmt: skip
    by_image = {r["image"]: r for r in rows}
    bad_rows = {}
    for image, cells, reason in BROKEN:
        image = image or rows[0]["image"]
        template = by_image.get(image, {"report": REPORT, "patient_id": f"B{len(bad_rows)}"})
        bad_rows[len(rows)] = reason
        rows.append({**template, "image": image, **cells})
    # shuffle bad rows in among the good ones (deterministically), remembering where each went
    order = np.random.default_rng(0).permutation(len(rows))
    order = [int(i) for i in order if i != 0]
    order.insert(0, 0)  # row 0 stays first: the duplicate refers to it
    shuffled = [rows[i] for i in order]
    bad = {new: bad_rows[old] for new, old in enumerate(order) if old in bad_rows}
    _write_manifest(root / "manifest.csv", shuffled)

    from pydicom.pixels.decoders.base import get_decoder

    real_open = builtins.open
    locked = str(root / "bad" / "locked.png")

    def open_as_unprivileged(file, *args, **kwargs):
        if str(file) == locked:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp, _unblock_fifo_readers(root / "bad" / "fifo.png"):
        mp.setattr(get_decoder(JPEGLSLossless), "_available", {})  # as if the pylibjpeg plugins were missing
        if os.geteuid() == 0:
            # root reads through chmod 000, so the refusal a normal user meets is simulated at open()
            mp.setattr(builtins, "open", open_as_unprivileged)
        else:
            os.chmod(locked, 0)
        code = main(["ingest", str(root / "manifest.csv"), "--out", str(root / "corpus"), "--image-size",
                     str(IMAGE_SIZE), "--labels", "manifest", "--no-progress"])  # fmt: skip
    assert code == 0
    return root, shuffled, bad


def test_about_one_row_in_ten_is_broken(broken_corpus):
    _, rows, bad = broken_corpus
    assert len(bad) == len(BROKEN) and 0.08 <= len(bad) / len(rows) <= 0.12


def test_every_bad_row_is_rejected_with_its_reason(broken_corpus):
    root, rows, bad = broken_corpus
    with (root / "corpus" / REJECTS_FILE).open(newline="", encoding="utf-8") as f:
        rejects = {int(r["row"]): r for r in csv.DictReader(f)}
    assert sorted(rejects) == sorted(bad)
    for row, reason in bad.items():
        assert rejects[row]["reason"].startswith(reason), (row, rows[row]["image"], rejects[row]["reason"])
        assert rejects[row]["path"] == rows[row]["image"]
    _, info = load_corpus(root / "corpus")
    assert info.total == len(rows) and info.rejected == len(bad)
    assert sum(info.num_rows.values()) + info.rejected == info.total  # nothing dropped silently


def test_every_good_row_is_kept_unchanged(broken_corpus):
    root, rows, bad = broken_corpus
    splits, info = load_corpus(root / "corpus")
    kept = {r["manifest_row"]: r for name in SPLIT_NAMES for r in splits[name]}
    assert sorted(kept) == [i for i in range(len(rows)) if i not in bad]
    for i, row in kept.items():
        source = rows[i]
        for k, name in enumerate(info.label_names):
            expected = parse_label(source.get(name))
            assert (math.isnan(expected) and math.isnan(row["labels"][k])) or row["labels"][k] == expected, (i, name)
        assert row["report"] == deidentify_text(source["report"].strip())
        assert row["patient_key"] == hash_identifier(source["patient_id"], os.environ["MMRAD_SALT"])
        assert len(row["boxes"]) == len(json.loads(source.get("boxes") or "[]"))
        arr, meta = load_image(root / source["image"])
        expected = resize_longest(arr, IMAGE_SIZE)
        top = 65535 if meta.bit_depth > 8 else 255
        cached = np.asarray(row["image"], dtype=np.int64)
        assert cached.shape == expected.shape and row["source_format"] == meta.format, i
        assert np.array_equal(cached, np.round(expected * top).astype(np.int64)), i


def _stored_values(path: Path, cached) -> tuple[np.ndarray, np.ndarray]:
    """(source values, the cached image read back at the source's depth): equal when nothing was lost."""
    cached = np.asarray(cached, dtype=np.float64)
    if path.suffix == ".png":
        with Image.open(path) as img:
            return np.asarray(img, dtype=np.float64), cached
    ds = pydicom.dcmread(path)  # 12 bits cached at 16: scaling back must give every stored value
    values = ds.pixel_array.astype(np.float64)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        values = 4095 - values
    return values, np.round(cached / 65535 * 4095)


def test_good_images_round_trip_exactly(broken_corpus):
    """Sources whose longest side is already the cache size come back value for value (JPEG is lossy)."""
    root, rows, _ = broken_corpus
    splits, _ = load_corpus(root / "corpus")
    checked = 0
    for row in (r for name in SPLIT_NAMES for r in splits[name]):
        image = rows[row["manifest_row"]]["image"]
        if image.startswith("good/") and not image.endswith(".jpg"):
            source, cached = _stored_values(root / image, row["image"])
            assert np.array_equal(cached, source), image
            checked += 1
    assert checked > 100
