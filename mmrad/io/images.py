"""Image loading for DICOM, PNG, JPEG and TIFF with one output convention.

:func:`load_image` returns float32 pixels in [0, 1] of shape (H, W) for grey or (H, W, 3) for colour, and an
:class:`ImageMeta`. DICOM is recognised by content (not by file name) and read by :mod:`mmrad.io.dicom`; other
formats go through PIL with 16-bit greyscale kept at full depth and EXIF orientation applied.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from os import PathLike

import numpy as np

from mmrad.errors import MMRadImageError
from mmrad.io.dicom import DicomMeta, Window, check_file, file_error, is_dicom, read_dicom

logger = logging.getLogger(__name__)


@dataclass
class ImageMeta:
    """Facts about a loaded image; no paths or identifiers."""

    format: str  # "DICOM", "PNG", "JPEG", "TIFF", ...
    height: int  # original size, before any resize
    width: int
    bit_depth: int  # of the source samples (8, 12, 16, ...)
    channels: int  # 1 for grey, 3 for colour (of the returned array)
    dicom: DicomMeta | None = None


def load_image(
    path: str | PathLike,
    *,
    window: Window = "auto",
    frame: int = 0,
    invert_monochrome1: bool = True,
    salt: str | None = None,
) -> tuple[np.ndarray, ImageMeta]:
    """Load a DICOM, PNG, JPEG or TIFF file as float32 in [0, 1].

    Args:
        path: the image file; DICOM is detected by content, whatever its name.
        window, frame, invert_monochrome1, salt: passed to :func:`mmrad.io.dicom.read_dicom` for DICOM files.

    Returns:
        ``(pixels, meta)``: pixels (H, W) for grey images (including RGB files whose channels are equal) or
        (H, W, 3) for colour.

    Raises:
        MMRadImageError: the file is missing, unreadable, not an image, truncated or empty.
    """
    check_file(path)
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as err:
        raise file_error(path, err, f"cannot read file ({err.strerror or err})") from err
    if not head:
        raise MMRadImageError(path, "empty file (0 bytes)")
    if is_dicom(path):
        arr, dmeta = read_dicom(path, window=window, frame=frame, invert_monochrome1=invert_monochrome1, salt=salt)
        channels = 1 if arr.ndim == 2 else 3
        meta = ImageMeta("DICOM", dmeta.rows, dmeta.columns, dmeta.bits_stored, channels, dmeta)
        return arr, meta
    return _read_pil(path)


def _read_pil(path: str | PathLike) -> tuple[np.ndarray, ImageMeta]:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            fmt = img.format or "unknown"
            img = ImageOps.exif_transpose(img)
            img.load()
    except UnidentifiedImageError as err:
        raise MMRadImageError(path, "not an image (neither DICOM nor a format PIL can read)") from err
    except Image.DecompressionBombError as err:
        raise MMRadImageError(path, f"image too large ({err})") from err
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise MMRadImageError(path, f"truncated or corrupt {_fmt_name(path)} file ({err})") from err
    if img.width == 0 or img.height == 0:
        raise MMRadImageError(path, f"empty image ({img.width}x{img.height})")

    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        arr, depth = np.asarray(img, dtype=np.float32) / 65535.0, 16
    elif mode == "I":
        # 16-bit PNGs open as 32-bit "I"; the PNG header tells the true depth
        raw = np.asarray(img)
        depth = 16 if fmt == "PNG" or raw.max(initial=0) <= 65535 else 32
        arr = raw.astype(np.float32) / float(2**depth - 1)
    elif mode == "F":
        raw = np.asarray(img, dtype=np.float32)
        lo, hi = float(raw.min()), float(raw.max())
        if not np.isfinite(raw).all():
            raise MMRadImageError(path, "float image contains NaN or infinite values")
        arr = raw if lo >= 0 and hi <= 1 else (raw - lo) / max(hi - lo, 1e-12)
        depth = 32
    elif mode in ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("L" if mode in ("1", "L", "LA") else "RGB")
        arr, depth = np.asarray(img, dtype=np.float32) / 255.0, 8
    else:
        raise MMRadImageError(path, f"unsupported image mode {mode!r}")

    if arr.ndim == 3 and _channels_equal(arr):
        arr = arr[..., 0]
    arr = np.ascontiguousarray(np.clip(arr, 0.0, 1.0), dtype=np.float32)
    channels = 1 if arr.ndim == 2 else 3
    return arr, ImageMeta(fmt, arr.shape[0], arr.shape[1], depth, channels)


def _fmt_name(path: str | PathLike) -> str:
    suffix = str(path).rsplit(".", 1)[-1].upper() if "." in str(path) else ""
    return suffix or "image"


def _channels_equal(arr: np.ndarray) -> bool:
    return bool(np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]))


def resize_longest(arr: np.ndarray, size: int) -> np.ndarray:
    """Resize so that the longest side equals ``size``, keeping the aspect ratio (antialiased, float32 in/out).

    Args:
        arr: (H, W) or (H, W, C) float32.
        size: the target length of the longest side.

    Returns:
        (h, w[, C]) float32 with ``max(h, w) == size``.
    """
    import torch
    import torch.nn.functional as F

    h, w = arr.shape[:2]
    scale = size / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    if (new_h, new_w) == (h, w):
        return arr.astype(np.float32, copy=False)
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    t = t[None, None] if arr.ndim == 2 else t.permute(2, 0, 1)[None]
    out = F.interpolate(t, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=scale < 1)
    out = out[0, 0] if arr.ndim == 2 else out[0].permute(1, 2, 0)
    return np.ascontiguousarray(out.clamp_(0.0, 1.0).numpy())
