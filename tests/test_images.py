import numpy as np
import pydicom
import pytest
from PIL import Image

from mmrad.errors import MMRadImageError
from mmrad.io.images import load_image, resize_longest


def test_16_bit_png_keeps_full_depth(tmp_path):
    pixels = np.array([[0, 1, 255, 256], [1000, 30000, 65534, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(pixels).save(path)
    arr, meta = load_image(path)
    assert meta.format == "PNG" and meta.bit_depth == 16 and meta.channels == 1
    np.testing.assert_allclose(arr, pixels / 65535.0, atol=1e-7)
    assert len(np.unique(arr)) == 8  # 1 and 256 would collapse if truncated to 8 bits


def test_16_bit_tiff(tmp_path):
    pixels = np.array([[0, 12345], [40000, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.tif"
    Image.fromarray(pixels).save(path)
    arr, meta = load_image(path)
    assert meta.bit_depth == 16
    np.testing.assert_allclose(arr, pixels / 65535.0, atol=1e-7)


def test_8_bit_grey_png_and_grey_rgb_jpeg(tmp_path):
    grey = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (16, 1))
    Image.fromarray(grey).save(tmp_path / "g.png")
    arr, meta = load_image(tmp_path / "g.png")
    assert arr.shape == (16, 32) and meta.bit_depth == 8
    np.testing.assert_allclose(arr, grey / 255.0, atol=1e-7)

    rgb = np.repeat(grey[..., None], 3, axis=2)
    Image.fromarray(rgb).save(tmp_path / "g.png")  # RGB file with equal channels -> one grey channel
    arr, meta = load_image(tmp_path / "g.png")
    assert arr.shape == (16, 32) and meta.channels == 1

    Image.fromarray(rgb).save(tmp_path / "g.jpg", quality=95)
    arr, meta = load_image(tmp_path / "g.jpg")
    assert meta.format == "JPEG" and arr.ndim in (2, 3)
    assert np.abs((arr if arr.ndim == 2 else arr.mean(-1)) - grey / 255.0).max() < 0.1


def test_colour_and_alpha(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 128
    Image.fromarray(rgba).save(tmp_path / "c.png")
    arr, meta = load_image(tmp_path / "c.png")
    assert arr.shape == (4, 4, 3) and meta.channels == 3
    np.testing.assert_allclose(arr[0, 0], [1, 0, 0])


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((10, 20), dtype=np.uint8)
    pixels[0, :] = 255  # top row white
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(tmp_path / "r.jpg", exif=exif, quality=100)
    arr, meta = load_image(tmp_path / "r.jpg")
    assert arr.shape == (20, 10) and (meta.height, meta.width) == (20, 10)
    assert arr[:, -1].mean() > 0.8  # the white top row is now the right column


def test_dicom_detected_by_content_not_name(dicom_file, tmp_path):
    path = dicom_file("scan.png")  # a DICOM named .png
    arr, meta = load_image(path)
    assert meta.format == "DICOM" and meta.dicom is not None and arr.shape == (48, 40)

    # a DICOM without the 128-byte preamble and DICM marker
    ds = pydicom.dcmread(path)
    bare = tmp_path / "bare"
    del ds.file_meta
    ds.preamble = None
    ds.save_as(bare, enforce_file_format=False, implicit_vr=True, little_endian=True)
    assert bare.read_bytes()[128:132] != b"DICM"
    arr2, meta2 = load_image(bare)
    assert meta2.format == "DICOM"
    np.testing.assert_allclose(arr2, arr)


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty file"),
        (b"hello, I am a text file\n" * 20, "not an image"),
        (b"DICM" + b"\0" * 200, "not an image"),  # marker at the wrong offset is not DICOM
    ],
)
def test_bad_files(tmp_path, content, reason):
    path = tmp_path / "bad.dcm"
    path.write_bytes(content)
    with pytest.raises(MMRadImageError, match=reason) as info:
        load_image(path)
    assert info.value.path == str(path)


def test_truncated_png_and_missing_file(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(MMRadImageError, match="truncated or corrupt"):
        load_image(tmp_path / "cut.png")
    with pytest.raises(MMRadImageError, match="file not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(MMRadImageError, match="directory"):
        load_image(tmp_path)


def test_resize_longest_keeps_aspect():
    arr = np.random.default_rng(0).random((100, 50), dtype=np.float32)
    out = resize_longest(arr, 32)
    assert out.shape == (32, 16) and out.dtype == np.float32
    assert abs(out.mean() - arr.mean()) < 0.02
    colour = np.random.default_rng(0).random((30, 60, 3), dtype=np.float32)
    assert resize_longest(colour, 120).shape == (60, 120, 3)
    assert resize_longest(arr, 100) is not None and resize_longest(arr, 100).shape == (100, 50)


def test_real_nih_pngs_and_dicoms(shared_data):
    pngs = sorted((shared_data / "nih_sample" / "images").glob("*.png"))
    assert len(pngs) == 24
    for path in pngs:
        arr, meta = load_image(path)
        assert arr.shape[:2] == (1024, 1024) and arr.dtype == np.float32
        assert 0 <= arr.min() <= arr.max() <= 1 and arr.std() > 0.05
    for path in sorted((shared_data / "dicom").glob("*.dcm")):
        arr, meta = load_image(path)
        assert meta.format == "DICOM" and arr.ndim == 2 and arr.std() > 0.05
