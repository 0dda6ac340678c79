"""Uncompressed PNGs for the image cache, written so that reading them back is a copy.

The cache stores images as standard PNGs (any viewer opens them) with zlib level 0 and filter type 0 ("none") on
every row: the pixel bytes then sit in the file as they are, and :func:`read_png` turns them into an array with
one ``zlib.decompress`` of stored blocks and a byte-order view, several times faster than a general PNG decoder
(PIL unfilters row by row; it also picks adaptive filters when it writes, even at level 0). Any other PNG (filtered,
compressed, interlaced, palette, alpha) is left to PIL: :func:`read_png` returns None for it.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOUR_TYPES = {1: 0, 3: 2}  # channels -> PNG colour type (grey, RGB)
_CHANNELS = {0: 1, 2: 3}


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png(pixels: np.ndarray, level: int = 0) -> bytes:
    """PNG bytes of a uint8 or uint16 (H, W) grey or (H, W, 3) RGB array, every row unfiltered.

    Args:
        pixels: the image; uint16 is stored as 16-bit samples.
        level: zlib level (0 = stored, the fast-reading form).
    """
    if pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"write_png takes uint8 or uint16 pixels, got {pixels.dtype}")
    channels = 1 if pixels.ndim == 2 else pixels.shape[-1]
    if pixels.ndim not in (2, 3) or channels not in _COLOUR_TYPES:
        raise ValueError(f"write_png takes (H, W) or (H, W, 3) arrays, got shape {pixels.shape}")
    height, width = pixels.shape[:2]
    depth = 8 * pixels.dtype.itemsize
    rows = pixels.astype(pixels.dtype.newbyteorder(">"), copy=False).reshape(height, -1).view(np.uint8)
    raw = np.zeros((height, rows.shape[1] + 1), dtype=np.uint8)  # a leading 0 per row: filter type "none"
    raw[:, 1:] = rows
    header = struct.pack(">IIBBBBB", width, height, depth, _COLOUR_TYPES[channels], 0, 0, 0)
    return (
        SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw.tobytes(), level))
        + _chunk(b"IEND", b"")
    )


def read_png(data: bytes) -> np.ndarray | None:
    """The uint8 / uint16 (H, W) or (H, W, 3) pixels of an unfiltered 8- or 16-bit grey or RGB PNG; None for any
    other PNG (or non-PNG bytes), which a general decoder must read. Raises ValueError for a truncated or corrupt
    image stream."""
    if not data.startswith(SIGNATURE):
        return None
    pos, header, parts = len(SIGNATURE), None, []
    while pos + 8 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR" and len(body) == 13:
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            parts.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None or not parts:
        return None
    width, height, depth, colour, _, _, interlace = header
    if depth not in (8, 16) or colour not in _CHANNELS or interlace or not width or not height:
        return None
    channels, itemsize = _CHANNELS[colour], depth // 8
    try:
        raw = zlib.decompress(b"".join(parts))
    except zlib.error as err:
        raise ValueError(f"corrupt PNG image data: {err}") from err
    stride = width * channels * itemsize + 1
    if len(raw) != height * stride:
        raise ValueError(f"PNG image data has {len(raw)} bytes, {height} rows of {stride} expected")
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, stride)
    if rows[:, 0].any():  # some row is filtered: not the fast form
        return None
    pixels = rows[:, 1:].view(">u2" if depth == 16 else np.uint8).astype(np.uint16 if depth == 16 else np.uint8)
    return pixels.reshape(height, width, channels) if channels == 3 else pixels.reshape(height, width)
