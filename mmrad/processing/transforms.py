"""Image transforms for the collator: decode to float, fit to the tower's square input, augment, normalise.

Geometry is tracked as a 3x3 matrix from cached-image pixel coordinates (x right, y down, pixel ``i`` spanning
``[i, i + 1)``) to model-input pixel coordinates, so boxes and masks follow the image exactly. Augmentation is a small
random affine (scale, rotation, translation: a random-resized-crop without the crop's aspect change) plus intensity
jitter (brightness, contrast, gamma). There is no horizontal flip: laterality is clinical information.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class AugmentConfig:
    scale: tuple[float, float] = (0.9, 1.1)  # zoom factor range
    rotate: float = 7.0  # degrees, uniform in [-rotate, rotate]
    translate: float = 0.05  # fraction of the input size, uniform in [-translate, translate]
    brightness: float = 0.08  # added, uniform in [-brightness, brightness]
    contrast: tuple[float, float] = (0.85, 1.15)
    gamma: tuple[float, float] = (0.8, 1.25)


def to_float_array(image) -> np.ndarray:
    """A PIL image, ``{"bytes": ...}`` dict or array as float32 in [0, 1], (H, W) grey or (H, W, 3) colour.

    Undecoded cache images (the collator's rows) are read by :func:`mmrad.io.png.read_png` when they are in its
    fast form, else by PIL."""
    from PIL import Image

    if isinstance(image, dict):
        import io

        from mmrad.io.png import read_png

        pixels = read_png(image["bytes"])
        image = pixels if pixels is not None else Image.open(io.BytesIO(image["bytes"]))
    if isinstance(image, np.ndarray):
        arr = image
        if arr.dtype == np.uint8:
            return arr.astype(np.float32) / 255.0
        if arr.dtype == np.uint16:
            return arr.astype(np.float32) / 65535.0
        return arr.astype(np.float32)
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        return np.asarray(image, dtype=np.float32) / 65535.0
    if mode == "F":
        return np.asarray(image, dtype=np.float32)
    if mode in ("L", "1", "LA"):
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def encoded_images(split):
    """``split`` with its ``image`` column left as PNG bytes (``{"bytes", "path"}``), for :func:`to_float_array`."""
    from datasets import Image

    if isinstance(split.features.get("image"), Image):
        split = split.cast_column("image", Image(decode=False))
    return split


def fit_to_square(image: np.ndarray, size: int, mode: str = "pad") -> tuple[np.ndarray, np.ndarray]:
    """Resize (antialiased bilinear) and pad, centre-crop or squash an (H, W) or (H, W, C) float image to square.

    Resizing runs in PIL, single-threaded: per-sample resizes in a collator are small, and torch's intra-op threads
    only add overhead there (PIL's filter equals ``F.interpolate(..., antialias=True)`` within 1e-5).

    Returns:
        ``(image, matrix)``: the (C, size, size) float32 image (zeros where padded) and the 3x3 matrix from input to
        output pixel coordinates.
    """
    from PIL import Image

    image = image[..., None] if image.ndim == 2 else image
    h, w, c = image.shape
    if mode == "squash":
        nh = nw = size
    else:
        scale = size / (max(h, w) if mode == "pad" else min(h, w))
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    top, left = (size - nh) // 2, (size - nw) // 2  # negative when cropping
    ch, cw = min(size, nh), min(size, nw)  # the copied extent
    sy, sx, dy, dx = max(0, -top), max(0, -left), max(0, top), max(0, left)
    out = np.zeros((c, size, size), dtype=np.float32)
    for k in range(c):
        plane = np.ascontiguousarray(image[..., k], dtype=np.float32)
        if (nh, nw) != (h, w):
            plane = np.asarray(Image.fromarray(plane, mode="F").resize((nw, nh), Image.BILINEAR))
        out[k, dy : dy + ch, dx : dx + cw] = plane[sy : sy + ch, sx : sx + cw]
    matrix = np.array([[nw / w, 0, left], [0, nh / h, top], [0, 0, 1]], dtype=np.float64)
    return out, matrix


def random_affine(size: int, cfg: AugmentConfig, generator: torch.Generator | None = None) -> np.ndarray:
    """A random 3x3 affine about the centre of a size x size image (no reflection)."""
    r = torch.rand(4, generator=generator).tolist()
    scale = cfg.scale[0] + (cfg.scale[1] - cfg.scale[0]) * r[0]
    angle = math.radians(cfg.rotate * (2 * r[1] - 1))
    tx, ty = (cfg.translate * (2 * r[2] - 1) * size, cfg.translate * (2 * r[3] - 1) * size)
    c = size / 2
    cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
    return np.array([[cos, -sin, c - cos * c + sin * c + tx], [sin, cos, c - sin * c - cos * c + ty], [0, 0, 1]])


def warp(images: torch.Tensor, matrices: np.ndarray, mode: str = "bilinear") -> torch.Tensor:
    """Apply per-sample 3x3 pixel-space affines to (B, C, S, S) images (output = matrix @ input), zeros outside."""
    b, _, s, _ = images.shape
    # normalised coordinates (align_corners=False): u = 2 * x / s - 1; grid_sample needs output -> input
    to_norm = np.array([[2 / s, 0, -1], [0, 2 / s, -1], [0, 0, 1]])
    theta = np.stack([(to_norm @ np.linalg.inv(m) @ np.linalg.inv(to_norm))[:2] for m in matrices])
    grid = F.affine_grid(torch.as_tensor(theta, dtype=images.dtype), [b, images.shape[1], s, s], align_corners=False)
    return F.grid_sample(images, grid, mode=mode, padding_mode="zeros", align_corners=False)


def intensity_jitter(image: np.ndarray, cfg: AugmentConfig, generator: torch.Generator | None = None) -> np.ndarray:
    """Random gamma, contrast and brightness on a float image in [0, 1] (result clipped to [0, 1])."""
    r = torch.rand(3, generator=generator).tolist()
    gamma = cfg.gamma[0] + (cfg.gamma[1] - cfg.gamma[0]) * r[0]
    contrast = cfg.contrast[0] + (cfg.contrast[1] - cfg.contrast[0]) * r[1]
    brightness = cfg.brightness * (2 * r[2] - 1)
    out = np.clip(image, 0, 1, dtype=np.float32) ** np.float32(gamma)
    return np.clip((out - 0.5) * np.float32(contrast) + np.float32(0.5 + brightness), 0, 1)


def transform_boxes(boxes: list[dict], matrix: np.ndarray, size: int) -> list[dict]:
    """Map ``{"label", "x", "y", "w", "h"}`` boxes through a 3x3 matrix; the result is the corners' bounding box,
    clipped to the size x size output (boxes pushed fully outside are dropped)."""
    out = []
    for b in boxes:
        corners = np.array([[b["x"], b["y"], 1], [b["x"] + b["w"], b["y"], 1], [b["x"], b["y"] + b["h"], 1],
                            [b["x"] + b["w"], b["y"] + b["h"], 1]], dtype=np.float64).T  # fmt: skip
        xs, ys = (matrix @ corners)[:2]
        x0, y0 = max(float(xs.min()), 0.0), max(float(ys.min()), 0.0)
        x1, y1 = min(float(xs.max()), float(size)), min(float(ys.max()), float(size))
        if x1 > x0 and y1 > y0:
            out.append({"label": b["label"], "x": x0, "y": y0, "w": x1 - x0, "h": y1 - y0})
    return out


def normalize(images: np.ndarray, mean: list[float], std: list[float]) -> np.ndarray:
    """(B, C or 1, H, W) in [0, 1] -> (B, C, H, W) ``(x - mean) / std`` per channel; one grey channel is repeated."""
    m = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    return np.ascontiguousarray((images.astype(np.float32, copy=False) - m) / s)
