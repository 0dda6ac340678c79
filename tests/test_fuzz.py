"""Fuzzing with hypothesis: random and mutated bytes into ``load_image``/``read_dicom`` (mutations of DICOM, PNG,
TIFF and JPEG files written here) and into the image cache's PNG reader, random Unicode into the report parser, the
labeler and the de-identifier. Only ``MMRadImageError``/``ValueError``/``TypeError`` may come out of the readers,
nothing out of the text functions, and every example must finish within the deadline. Runs are derandomised (the same
examples every time); set ``MMRAD_FUZZ_EXAMPLES=5000`` for a longer search."""

from __future__ import annotations

import io
import math
import os
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import RLELossless

from mmrad.errors import MMRadImageError
from mmrad.io.dicom import read_dicom, write_dicom
from mmrad.io.images import load_image
from mmrad.io.png import read_png, write_png
from mmrad.privacy.deid import deidentify_text
from mmrad.reports.labeler import ReportLabeler
from mmrad.reports.sections import parse_report

EXAMPLES = int(os.environ.get("MMRAD_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=timedelta(seconds=3),  # generous for a busy 2-core machine; a hang or a quadratic blow-up exceeds it
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ALLOWED = (MMRadImageError, ValueError, TypeError)


# -------------------------------------------------------------------------------------------------- seed files


def _dicom_seeds(folder: Path) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 4096, (12, 10), dtype=np.uint16)
    seeds = {}
    write_dicom(folder / "plain.dcm", pixels, bits_stored=12, rescale=(2, -100), window=(3000, 4000), Modality="CR",
                PixelSpacing=[0.2, 0.2], PatientID="P1")  # fmt: skip
    write_dicom(folder / "mono1.dcm", pixels, photometric="MONOCHROME1", bits_stored=12)
    write_dicom(folder / "rle.dcm", pixels, bits_stored=12, compress=RLELossless)
    write_dicom(folder / "rgb.dcm", rng.integers(0, 255, (6, 5, 3), dtype=np.uint8), photometric="RGB")
    write_dicom(folder / "frames.dcm", rng.integers(0, 255, (3, 4, 5), dtype=np.uint8))
    write_dicom(folder / "signed.dcm", rng.integers(-500, 500, (8, 8), dtype=np.int16), signed=True)
    ds = pydicom.dcmread(folder / "plain.dcm")
    voi, mlut = Dataset(), Dataset()
    voi.add_new(0x00283002, "US", [4, 0, 16])
    voi.add_new(0x00283006, "US", [0, 1000, 30000, 65535])
    mlut.add_new(0x00283002, "US", [4, 0, 12])
    mlut.ModalityLUTType = "US"
    mlut.add_new(0x00283006, "US", [0, 100, 4000, 4095])
    ds.VOILUTSequence, ds.ModalityLUTSequence = [voi], [mlut]
    ds.save_as(folder / "luts.dcm")
    for path in sorted(folder.glob("*.dcm")):
        seeds[path.stem] = path.read_bytes()
    seeds["no_preamble"] = seeds["plain"][132:]  # a dataset without the 128-byte preamble and DICM marker
    return seeds


def _image_seeds() -> dict[str, bytes]:
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 255, (12, 10), dtype=np.uint8)
    deep = rng.integers(0, 65535, (12, 10), dtype=np.uint16)
    images = {
        "png8": (Image.fromarray(grey), "PNG"),
        "png16": (Image.fromarray(deep), "PNG"),
        "rgba": (Image.fromarray(rng.integers(0, 255, (8, 8, 4), dtype=np.uint8), "RGBA"), "PNG"),
        "tiff16": (Image.fromarray(deep), "TIFF"),
        "jpeg": (Image.fromarray(grey), "JPEG"),
        "palette": (Image.fromarray(grey).convert("P"), "PNG"),
    }
    seeds = {}
    for name, (img, fmt) in images.items():
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        seeds[name] = buf.getvalue()
    return seeds


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    folder = tmp_path_factory.mktemp("fuzz")
    return folder, {**_dicom_seeds(folder), **_image_seeds()}


@st.composite
def mutated(draw, data: bytes) -> bytes:
    """Byte flips (mostly in the first 400 bytes: headers), a deleted or repeated chunk, and truncation."""
    out = bytearray(data)
    for _ in range(draw(st.integers(0, 8))):
        limit = min(len(out), 400) if draw(st.booleans()) else len(out)
        if limit:
            out[draw(st.integers(0, limit - 1))] = draw(st.integers(0, 255))
    if out and draw(st.booleans()):
        start = draw(st.integers(0, len(out) - 1))
        size = draw(st.integers(1, 64))
        chunk = bytes(out[start : start + size])
        out[start : start + size] = chunk * draw(st.integers(0, 3))
    if draw(st.booleans()):
        out = out[: draw(st.integers(0, len(out)))]
    return bytes(out)


def _load(folder: Path, name: str, data: bytes, reader=load_image) -> None:
    path = folder / name
    path.write_bytes(data)
    try:
        arr, _ = reader(path)
    except ALLOWED:
        return
    assert arr.dtype == np.float32 and arr.size > 0 and np.isfinite(arr).all()
    assert float(arr.min()) >= 0.0 and float(arr.max()) <= 1.0


# -------------------------------------------------------------------------------------------------- images


@FUZZ
@given(data=st.data())
def test_mutated_dicom(seeds, data):
    folder, files = seeds
    name = data.draw(st.sampled_from(["plain", "mono1", "rle", "rgb", "frames", "signed", "luts", "no_preamble"]))
    _load(folder, "mutated.dcm", data.draw(mutated(files[name])))


@FUZZ
@given(data=st.data())
def test_mutated_dicom_through_read_dicom(seeds, data):
    folder, files = seeds
    name = data.draw(st.sampled_from(["plain", "luts", "no_preamble", "rle"]))
    _load(folder, "mutated_direct", data.draw(mutated(files[name])), reader=read_dicom)


@FUZZ
@given(data=st.data())
def test_mutated_png_tiff_jpeg(seeds, data):
    folder, files = seeds
    name = data.draw(st.sampled_from(["png8", "png16", "rgba", "tiff16", "jpeg", "palette"]))
    _load(folder, "mutated.img", data.draw(mutated(files[name])))


@FUZZ
@given(data=st.data())
def test_mutated_cache_png_through_the_fast_reader(data):
    """The cache's own PNG reader: pixels, None (left to PIL) or ValueError, nothing else."""
    pixels = np.arange(24 * 17, dtype=np.uint16).reshape(24, 17) * 97
    source = data.draw(st.sampled_from([write_png(pixels), write_png((pixels % 256).astype(np.uint8)), write_png(
        np.stack([pixels % 256] * 3, -1).astype(np.uint8))]))  # fmt: skip
    try:
        out = read_png(data.draw(mutated(source)))
    except ValueError:
        return
    assert out is None or (out.dtype in (np.uint8, np.uint16) and out.size > 0)


@FUZZ
@given(
    prefix=st.sampled_from([b"", bytes(128) + b"DICM", b"\x02\x00\x00\x00UL", b"\x08\x00\x05\x00CS",
                            b"\x89PNG\r\n\x1a\n", b"II*\x00", b"\xff\xd8\xff"]),
    body=st.binary(max_size=1024),
)  # fmt: skip
def test_random_bytes(seeds, prefix, body):
    folder, _ = seeds
    _load(folder, "random.bin", prefix + body)
    _load(folder, "random_direct.dcm", prefix + body, reader=read_dicom)


# -------------------------------------------------------------------------------------------------- text

WORDS = ["FINDINGS:", "IMPRESSION:", "INDICATION:", "COMPARISON:", "no", "not", "without", "pleural effusion",
         "pneumothorax", "cardiomegaly", "may represent", "cannot exclude", "versus", "or", "Dr.", "Patient:", "MRN:",
         "2.5 cm", "1.", "-", ".", ",", ";", "\n", "\n\n", " ", "\t", "\u00a0", "\u2028", "03/04/2019", "e.g.",
         "(555) 123-4567", "a@b.org", "Dear", "John Smith", "XXXX", "…", "é", "\x00", "\ud7ff"]  # fmt: skip
REPORT_TEXT = st.one_of(st.text(max_size=300), st.lists(st.one_of(st.sampled_from(WORDS), st.text(max_size=4)),
                                                         max_size=60).map("".join))  # fmt: skip
LABELER = ReportLabeler("chexpert")


@FUZZ
@given(text=REPORT_TEXT)
def test_parse_report_never_fails_and_offsets_hold(text):
    report = parse_report(text)
    for sentence in report.sentences:
        assert text[sentence.start : sentence.end] == sentence.text


@FUZZ
@given(text=REPORT_TEXT)
def test_labeler_never_fails(text):
    values = LABELER.label(text).as_array()
    assert all(math.isnan(v) or v in (1.0, 0.0, -1.0) for v in values)


@FUZZ
@given(text=REPORT_TEXT)
def test_deidentify_never_fails(text):
    assert isinstance(deidentify_text(text), str)


@pytest.mark.parametrize(
    "text",
    ["\n" * 100_000, " \n\t" * 35_000, "1-" * 50_000, "MRN: " + "A-" * 50_000, "a." * 50_000 + "@",
     "Dr. " + "Aa-" * 30_000, "Patient:\n" * 30_000, "no " * 30_000 + "effusion", "(" * 50_000, "." * 100_000],
    ids=["newlines", "whitespace", "dashes", "id", "email", "names", "headers", "negations", "parens", "dots"],
)  # fmt: skip
def test_text_functions_take_linear_time(text):
    """100,000 characters of what makes regexes backtrack: each function well under the bound (measured 0.07-0.3
    s); quadratic behaviour took 37 s for 20,000 blank lines in deidentify_text."""
    for function in (deidentify_text, parse_report, LABELER.label):
        start = time.perf_counter()
        function(text)
        assert time.perf_counter() - start < 10, function.__name__


def test_header_name_on_the_next_line_is_removed_but_not_the_next_header():
    assert deidentify_text("Patient:\nJane Doe\nFINDINGS: x") == "Patient:\n[NAME]\nFINDINGS: x"
    assert deidentify_text("Patient:\nFINDINGS: Heart size normal.") == "Patient:[NAME]\nFINDINGS: Heart size normal."
