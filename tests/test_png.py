"""The cache's unfiltered PNGs: standard files that read back with a copy, and a clean fallback for other PNGs."""

import io

import numpy as np
import pytest
from PIL import Image

from mmrad.corpus.cache import encode_png
from mmrad.io.png import read_png, write_png
from mmrad.processing.transforms import to_float_array


@pytest.mark.parametrize(("dtype", "shape"), [(np.uint16, (37, 23)), (np.uint8, (37, 23)), (np.uint8, (19, 11, 3))])
def test_written_pngs_round_trip_and_are_standard(dtype, shape):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, np.iinfo(dtype).max + 1, size=shape, dtype=np.int64).astype(dtype)
    data = write_png(pixels)
    back = read_png(data)
    assert back.dtype == dtype and np.array_equal(back, pixels)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), pixels)  # any PNG reader agrees
    assert len(data) > pixels.nbytes  # stored, not deflated: reading is a copy


def test_other_pngs_are_left_to_pil():
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 65536, size=(64, 48), dtype=np.int64).astype(np.uint16)
    pil = io.BytesIO()
    Image.fromarray(pixels).save(pil, format="PNG", compress_level=6)  # PIL filters its rows
    assert read_png(pil.getvalue()) is None
    assert read_png(b"GIF89a not a png") is None
    palette = io.BytesIO()
    Image.fromarray(pixels[:8, :8].astype(np.uint8), "L").convert("P").save(palette, format="PNG")
    assert read_png(palette.getvalue()) is None
    # to_float_array takes either form to the same floats
    ours = to_float_array({"bytes": write_png(pixels)})
    theirs = to_float_array({"bytes": pil.getvalue()})
    assert ours.dtype == np.float32 and np.array_equal(ours, theirs)
    np.testing.assert_allclose(ours, pixels / 65535.0, rtol=1e-6)


def test_corrupt_image_data_is_an_error_not_garbage():
    data = bytearray(write_png(np.zeros((16, 16), dtype=np.uint16)))
    start = data.index(b"IDAT") + 4
    data[start : start + 40] = b"\xff" * 40  # the zlib stream's header and first block
    with pytest.raises(ValueError, match="corrupt PNG"):
        read_png(bytes(data))
    short = write_png(np.zeros((4, 4), dtype=np.uint8)).replace(b"IHDR\x00\x00\x00\x04", b"IHDR\x00\x00\x00\x05")
    with pytest.raises(ValueError, match="rows of"):
        read_png(short)  # the header claims more pixels than the data holds


def test_the_image_cache_writes_the_fast_form():
    image = np.linspace(0, 1, 30 * 20, dtype=np.float32).reshape(30, 20)
    for bits, scale in ((16, 65535.0), (8, 255.0)):
        back = read_png(encode_png(image, bits))
        assert back is not None and np.array_equal(back, np.round(image * scale))
