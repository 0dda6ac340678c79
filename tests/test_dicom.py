"""read_dicom against pydicom's own decode, on its bundled files, on files written here, and on real chest DICOMs."""

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import RLELossless

from mmrad.errors import MMRadImageError
from mmrad.io.dicom import read_dicom
from mmrad.privacy.deid import hash_identifier

# (file, shape, photometric, window applied?) — or an error substring for files that must be refused
BUNDLED = [
    ("CT_small.dcm", (128, 128), "MONOCHROME2", False),  # signed, rescale, no window
    ("MR_small.dcm", (64, 64), "MONOCHROME2", True),
    ("MR_small_RLE.dcm", (64, 64), "MONOCHROME2", True),
    ("MR_small_bigendian.dcm", (64, 64), "MONOCHROME2", True),
    ("MR_small_jp2klossless.dcm", (64, 64), "MONOCHROME2", True),
    ("MR_small_jpeg_ls_lossless.dcm", (64, 64), "MONOCHROME2", True),
    ("JPEG2000.dcm", (1024, 256), "MONOCHROME2", False),
    ("JPGExtended.dcm", (1024, 256), "MONOCHROME2", False),
    ("693_J2KI.dcm", (512, 512), "MONOCHROME2", True),
    ("J2K_pixelrep_mismatch.dcm", (512, 512), "MONOCHROME2", True),
    ("image_dfl.dcm", (512, 512), "MONOCHROME2", False),
    ("liver_1frame.dcm", (512, 512), "MONOCHROME2", False),  # 1-bit
    ("rtdose.dcm", (10, 10), "MONOCHROME2", False),  # 15 frames, 32-bit
    ("examples_rgb_color.dcm", (240, 320, 3), "RGB", False),
    ("SC_rgb_rle_2frame.dcm", (100, 100, 3), "RGB", False),
    ("SC_rgb_jpeg_dcmtk.dcm", (100, 100, 3), "YBR_FULL", False),
    ("SC_rgb_rle_16bit.dcm", (100, 100, 3), "RGB", False),
    ("SC_ybr_full_422_uncompressed.dcm", (100, 100, 3), "YBR_FULL_422", False),
    ("examples_jpeg2k.dcm", (480, 640, 3), "YBR_RCT", False),
    ("examples_palette.dcm", (350, 800, 3), "PALETTE COLOR", False),
]
REFUSED = [
    ("MR_truncated.dcm", "truncated"),
    ("rtplan.dcm", "no pixel data"),
    ("JPEG-lossy.dcm", "decoder failed"),  # 12-bit lossy JPEG: the installed decoders cannot read it
]


def reference(path: Path, window_applied: bool) -> np.ndarray:
    """pydicom's own answer: pixel_array -> apply_modality_lut -> apply_voi_lut (un-normalised)."""
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array
    if getattr(ds, "NumberOfFrames", 1) and int(getattr(ds, "NumberOfFrames", 1)) > 1 and arr.ndim == 3:
        arr = arr[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = apply_modality_lut(arr, ds)
        if window_applied:
            values = apply_voi_lut(values, ds)
    return values.astype(np.float64)


def assert_affine_increasing(ours: np.ndarray, ref: np.ndarray, tol: float = 2e-3):
    """ours == a * ref + b with a > 0: same windowing, same clipping, no inversion, no distortion."""
    x, y = ref.ravel(), ours.astype(np.float64).ravel()
    if np.ptp(x) == 0:
        assert np.ptp(y) == 0
        return
    a, b = np.polyfit(x, y, 1)
    assert a > 0
    assert np.abs(a * x + b - y).max() < tol


@pytest.mark.parametrize("name, shape, photometric, windowed", BUNDLED, ids=[b[0] for b in BUNDLED])
def test_bundled_files_match_pydicom(name, shape, photometric, windowed):
    path = Path(get_testdata_file(name))
    arr, meta = read_dicom(path)
    assert arr.dtype == np.float32 and arr.shape == shape
    assert arr.min() >= 0.0 and arr.max() <= 1.0
    assert meta.photometric_interpretation == photometric
    assert (meta.window is not None) == windowed
    if len(shape) == 2:
        assert_affine_increasing(arr, reference(path, windowed))
    else:
        ds = pydicom.dcmread(path)
        ref = ds.pixel_array[0] if ds.pixel_array.ndim == 4 else ds.pixel_array
        if photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            ref = apply_color_lut(ref, ds)
        top = 255.0 if ref.dtype == np.uint8 else 65535.0
        np.testing.assert_allclose(arr, ref / top, atol=1e-6)


@pytest.mark.parametrize("name, reason", REFUSED, ids=[r[0] for r in REFUSED])
def test_bundled_broken_files_are_refused(name, reason):
    with pytest.raises(MMRadImageError, match=reason) as info:
        read_dicom(get_testdata_file(name))
    assert name in str(info.value)


def test_window_formula_linear(dicom_file):
    # DICOM LINEAR: y = ((x - (c - 0.5)) / (w - 1) + 0.5), clipped to [0, 1]
    pixels = np.array([[0, 50, 100, 150, 200, 1000]], dtype=np.uint16)
    path = dicom_file(pixels=pixels, bits_stored=12, window=(100, 101))
    arr, meta = read_dicom(path)
    expected = np.clip((pixels - 99.5) / 100 + 0.5, 0, 1)
    np.testing.assert_allclose(arr, expected, atol=1e-6)
    assert meta.window == (100.0, 101.0)


def test_window_none_minmax_and_override(dicom_file):
    pixels = np.array([[100, 200, 300, 4095]], dtype=np.uint16)
    path = dicom_file(pixels=pixels, bits_stored=12, window=(200, 100))
    none, _ = read_dicom(path, window="none")
    np.testing.assert_allclose(none, pixels / 4095.0, atol=1e-6)  # BitsStored range, not BitsAllocated
    minmax, _ = read_dicom(path, window="minmax")
    np.testing.assert_allclose(minmax, (pixels - 100) / 3995.0, atol=1e-6)
    override, meta = read_dicom(path, window=(300, 201))
    np.testing.assert_allclose(override, np.clip((pixels - 299.5) / 200 + 0.5, 0, 1), atol=1e-6)
    assert meta.window == (300.0, 201.0)


def test_rescale_is_applied_before_window(dicom_file):
    # stored 0..2000 with slope 2, intercept -1000 -> HU -1000..3000; window (0, 401) around 0 HU
    pixels = np.array([[0, 400, 500, 600, 2000]], dtype=np.uint16)
    path = dicom_file(pixels=pixels, bits_stored=12, rescale=(2.0, -1000.0), window=(0, 401))
    arr, _ = read_dicom(path)
    hu = pixels * 2.0 - 1000.0
    np.testing.assert_allclose(arr, np.clip((hu + 0.5) / 400 + 0.5, 0, 1), atol=1e-6)
    assert_affine_increasing(arr[:, 1:4], reference(path, True)[:, 1:4])


def test_monochrome1_is_inverted(dicom_file):
    m2, _ = read_dicom(dicom_file("m2.dcm", "MONOCHROME2"))
    m1, meta = read_dicom(dicom_file("m1.dcm", "MONOCHROME1"))
    assert meta.photometric_interpretation == "MONOCHROME1"
    np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-6)
    raw, _ = read_dicom(dicom_file("m1b.dcm", "MONOCHROME1"), invert_monochrome1=False)
    np.testing.assert_allclose(raw, m2, atol=1e-6)


def test_signed_16_bit(dicom_file):
    pixels = np.array([[-32768, -1, 0, 32767]], dtype=np.int16)
    arr, meta = read_dicom(dicom_file(pixels=pixels, signed=True))
    np.testing.assert_allclose(arr, (pixels.astype(np.float64) + 32768) / 65535, atol=1e-6)
    assert meta.bits_stored == 16


def test_voi_lut_sequence(dicom_file):
    from pydicom.dataset import Dataset

    path = dicom_file(pixels=np.array([[0, 1, 2, 3, 9]], dtype=np.uint16), bits_stored=12)
    ds = pydicom.dcmread(path)
    item = Dataset()
    item.add_new(0x00283002, "US", [4, 0, 16])  # LUTDescriptor: 4 entries, first mapped value 0, 16-bit output
    item.add_new(0x00283006, "US", [0, 1000, 30000, 65535])  # LUTData
    ds.VOILUTSequence = [item]
    ds.save_as(path)
    arr, _ = read_dicom(path)
    np.testing.assert_allclose(arr, [[0, 1000 / 65535, 30000 / 65535, 1, 1]], atol=1e-6)
    assert_affine_increasing(arr, reference(path, True))


def test_modality_lut_sequence(dicom_file):
    from pydicom.dataset import Dataset

    path = dicom_file(pixels=np.array([[0, 1, 2, 3]], dtype=np.uint16), bits_stored=12)
    ds = pydicom.dcmread(path)
    item = Dataset()
    item.add_new(0x00283002, "US", [4, 0, 12])  # LUTDescriptor
    item.ModalityLUTType = "US"
    item.add_new(0x00283006, "US", [0, 100, 4000, 4095])  # LUTData
    ds.ModalityLUTSequence = [item]
    ds.save_as(path)
    arr, _ = read_dicom(path)
    np.testing.assert_allclose(arr, [[0, 100 / 4095, 4000 / 4095, 1]], atol=1e-6)


def test_multi_frame_picks_frame_and_checks_range(dicom_file):
    frames = np.stack([np.full((4, 5), v, dtype=np.uint8) for v in (0, 100, 255)])
    path = dicom_file(pixels=frames)
    for i, value in enumerate((0, 100, 255)):
        arr, meta = read_dicom(path, frame=i)
        assert arr.shape == (4, 5) and meta.number_of_frames == 3
        np.testing.assert_allclose(arr, value / 255, atol=1e-6)
    with pytest.raises(MMRadImageError, match="frame 3 out of range: the file has 3"):
        read_dicom(path, frame=3)


def test_rle_compressed_round_trip(dicom_file):
    pixels = np.random.default_rng(0).integers(0, 4096, (32, 24), dtype=np.uint16)
    plain, _ = read_dicom(dicom_file("plain.dcm", pixels=pixels, bits_stored=12))
    rle, meta = read_dicom(dicom_file("rle.dcm", pixels=pixels, bits_stored=12, compress=RLELossless))
    assert meta.transfer_syntax == RLELossless
    np.testing.assert_array_equal(plain, rle)


def test_truncated_file(dicom_file, tmp_path):
    path = dicom_file()
    data = path.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - 1000])
    with pytest.raises(MMRadImageError, match="truncated|not a readable") as info:
        read_dicom(cut)
    assert "cut.dcm" in str(info.value)


def test_no_pixel_data_and_unsupported_photometric(dicom_file):
    path = dicom_file()
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(MMRadImageError, match="no pixel data"):
        read_dicom(path)
    path = dicom_file("hsv.dcm")
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = "HSV"
    ds.save_as(path)
    with pytest.raises(MMRadImageError, match="unsupported photometric interpretation 'HSV'"):
        read_dicom(path)


def test_missing_codec_names_the_package(dicom_file, monkeypatch):
    from pydicom.pixels.decoders.base import get_decoder

    path = dicom_file(compress=RLELossless)
    decoder = get_decoder(RLELossless)
    monkeypatch.setattr(decoder, "_available", {})  # as if no RLE plugin were installed
    with pytest.raises(MMRadImageError, match="pip install pylibjpeg pylibjpeg-rle"):
        read_dicom(path)


def test_not_dicom_and_missing_file(tmp_path):
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"this is not a dicom file at all" * 10)
    with pytest.raises(MMRadImageError, match="junk.dcm"):
        read_dicom(junk)
    with pytest.raises(MMRadImageError, match="file not found"):
        read_dicom(tmp_path / "absent.dcm")


def test_meta_holds_no_identifiers(dicom_file):
    path = dicom_file(
        PatientID="MRN123456",
        PatientName="Doe^Jane",
        PatientBirthDate="19500101",
        AccessionNumber="ACC999",
        Modality="CR",
        ViewPosition="PA",
        PixelSpacing=[0.14, 0.14],
    )
    _, meta = read_dicom(path, salt="s")
    text = repr(meta)
    for canary in ("MRN123456", "Doe", "19500101", "ACC999"):
        assert canary not in text
    assert meta.patient_key == hash_identifier("MRN123456", "s")
    assert meta.patient_key != hash_identifier("MRN123456", "other salt")
    assert (meta.modality, meta.view_position, meta.pixel_spacing) == ("CR", "PA", (0.14, 0.14))


def test_zero_pixel_spacing_is_none_with_warning(dicom_file, caplog):
    path = dicom_file(PixelSpacing=[0, 0])
    _, meta = read_dicom(path)
    assert meta.pixel_spacing is None
    assert "pixel spacing" in caplog.text


# ------------------------------------------------------------------------------------------ real chest DICOMs


def test_real_monochrome1_twin_is_the_inverse(shared_data):
    m2, meta2 = read_dicom(shared_data / "dicom" / "siim_cr_chest_850819.dcm")
    m1, meta1 = read_dicom(shared_data / "dicom" / "siim_cr_chest_850819_tagged_monochrome1.dcm")
    assert m2.shape == (1024, 1024) and meta2.pixel_spacing == (0.168, 0.168)
    assert meta1.photometric_interpretation == "MONOCHROME1"
    np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-6)


def test_real_jpeg2000_monochrome1_chest_has_bright_spine(shared_data):
    arr, meta = read_dicom(shared_data / "dicom" / "RG1_J2KI.dcm")
    assert arr.shape == (1955, 1841)
    assert meta.photometric_interpretation == "MONOCHROME1" and meta.bits_stored == 15
    assert meta.window == (15000.0, 30000.0)
    assert meta.pixel_spacing is None  # the file says 0\0
    h, w = arr.shape
    rows = slice(int(0.35 * h), int(0.6 * h))
    spine = arr[rows, int(0.47 * w) : int(0.53 * w)].mean()
    left_lung = arr[rows, int(0.22 * w) : int(0.35 * w)].mean()
    right_lung = arr[rows, int(0.65 * w) : int(0.78 * w)].mean()
    assert spine > left_lung + 0.1 and spine > right_lung + 0.1
