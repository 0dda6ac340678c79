"""Maps over the model input's patch grid: cosine maps, smoothing, and resampling onto the original image.

Used by grounding (:mod:`mmrad.inference.grounding`), by ``mmrad evaluate``'s grounding metrics and by
:meth:`mmrad.processing.image_processor.ImageProcessor.to_original`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def cosine_maps(patch_embeds: torch.Tensor, query_embeds: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, Q, h, w) cosine between each projected patch token (B, N, P) and each query embedding (Q, P)."""
    patches = F.normalize(patch_embeds, dim=-1)
    return torch.einsum("bnp,qp->bqn", patches, query_embeds).unflatten(-1, grid)


def to_image_space(
    grid_map: torch.Tensor, matrix: np.ndarray, size: tuple[int, int], input_size: int, smooth: float = 0.5
) -> np.ndarray:
    """Resample a (h, w) patch-grid map onto the original image.

    Args:
        grid_map: (h, w) map over the square model input.
        matrix: 3x3 from image pixels to input pixels (the collator's fit).
        size: (H, W) of the original image.
        input_size: the model input's side S.
        smooth: Gaussian sigma in patches applied on the input (0 = bilinear only).

    Returns:
        (H, W) float32 map, min-max normalised to [0, 1] (zeros if constant).
    """
    h, w = grid_map.shape
    m = grid_map[None, None].float()
    # upsample to the input's pixels (bilinear over patch centres), then blur by `smooth` patches
    m = F.interpolate(m, size=(input_size, input_size), mode="bilinear", align_corners=False)
    if smooth > 0:
        m = gaussian_blur(m, sigma=smooth * input_size / max(h, w))
    height, width = size
    # centres of the original pixels, mapped into input pixels, as grid_sample's normalised coordinates
    ys, xs = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    points = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
    u, v = (matrix @ points)[:2]
    coords = np.stack([2 * u / input_size - 1, 2 * v / input_size - 1], axis=-1).reshape(1, height, width, 2)
    sampled = F.grid_sample(m, torch.as_tensor(coords, dtype=m.dtype), mode="bilinear", padding_mode="border",
                            align_corners=False)[0, 0].numpy()  # fmt: skip
    lo, hi = float(sampled.min()), float(sampled.max())
    return ((sampled - lo) / (hi - lo) if hi > lo else np.zeros_like(sampled)).astype(np.float32)


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of (N, 1, H, W) maps, ``sigma`` in pixels, edges replicated: how grounding
    smooths the maps it returns (and ``mmrad evaluate`` the maps it scores)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=image.dtype)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    padded = F.pad(image, (radius, radius, radius, radius), mode="replicate")
    out = F.conv2d(padded, kernel.view(1, 1, 1, -1))
    return F.conv2d(out, kernel.view(1, 1, -1, 1))
