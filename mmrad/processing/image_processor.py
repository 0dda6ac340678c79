"""``ImageProcessor``: the one path from an image (file, array or PIL image) to the model's ``pixel_values``.

The same object serves ingest (decoding into the corpus's image cache), training collation, and every inference path
(zero-shot, grounding, prediction), in the habits of transformers' image processors: built from the model's
:class:`~mmrad.config.schema.PreprocessConfig`, called on a batch of images, returning ``pixel_values``.

Two steps:

1. :meth:`ImageProcessor.decode` — the ingest-time choices: DICOM windowing (``window``) and MONOCHROME1 inversion,
   then, when ``decode_size`` is set (the size of the corpus cache a model was trained from), a resize of the longest
   side to it and the cache's rounding (16 bits for deeper sources, 8 for 8-bit ones). A file decoded here holds
   exactly the values the training corpus's cache held for it.
2. :meth:`ImageProcessor.prepare` — the fit to the tower's square input (pad, crop or squash), optional intensity
   jitter (training), and :meth:`normalize` with the tower's mean and std.

Every prepared image carries a 3x3 matrix from its *original* pixels (before the decode resize) to input pixels;
:meth:`ImageProcessor.to_original` uses it to put a map computed on the input back on the original image.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np

from mmrad.config.schema import PreprocessConfig
from mmrad.processing.transforms import fit_to_square, intensity_jitter, normalize, to_float_array

__all__ = ["DecodedImage", "ImageProcessor", "parse_window", "quantize"]

_8BIT = ("L", "LA", "RGB", "RGBA", "P", "1")  # PIL modes with 8-bit samples


def parse_window(window: str) -> str | tuple[float, float]:
    """A ``window`` setting as :func:`mmrad.io.images.load_image` takes it: ``"auto"``, ``"none"``, ``"minmax"`` or
    ``"center,width"`` -> ``(center, width)``."""
    if window in ("auto", "none", "minmax"):
        return window
    try:
        center, width = (float(v) for v in str(window).split(","))
    except ValueError:
        raise ValueError(f"window {window!r}: use auto, none, minmax or center,width (e.g. 40,400)") from None
    if width <= 0:
        raise ValueError(f"window {window!r}: the width must be > 0")
    return center, width


def quantize(pixels: np.ndarray, bit_depth: int) -> np.ndarray:
    """Round float [0, 1] pixels as the image cache stores them: 16 bits for grey images from deeper sources, else
    8 bits (what :func:`mmrad.corpus.cache.encode_png` writes and reading it back gives)."""
    levels = 65535.0 if bit_depth > 8 and pixels.ndim == 2 else 255.0
    return (np.round(pixels * levels) / levels).astype(np.float32)


@dataclass
class DecodedImage:
    """An image after :meth:`ImageProcessor.decode`."""

    pixels: np.ndarray  # float32 [0, 1], (h, w) grey or (h, w, 3) colour, at the decode size
    original_size: tuple[int, int]  # (H, W) of the source
    to_decoded: np.ndarray  # 3x3 from original pixels to ``pixels``' pixels
    bit_depth: int = 8
    meta: object | None = None  # mmrad.io.images.ImageMeta for files
    original: np.ndarray | None = None  # the full-resolution pixels, when asked for (decode(keep_original=True))


class ImageProcessor:
    """Decode, fit and normalise images for a model.

    Args:
        config: the model's preprocessing (``model.config.preprocess``); defaults to :class:`PreprocessConfig`.
        **overrides: fields of the config to replace (``ImageProcessor(cfg, decode_size=512)``).

    Example::

        processor = ImageProcessor.from_pretrained("run/model")
        batch = processor(["study/IM0001", "chest.png"])
        probs = model.classify(batch["pixel_values"])
    """

    def __init__(self, config: PreprocessConfig | None = None, **overrides):
        config = config or PreprocessConfig()
        self.config = dataclasses.replace(config, **overrides) if overrides else config

    @classmethod
    def from_pretrained(cls, model_dir: str | PathLike) -> ImageProcessor:
        """The processor of a saved model folder (the ``preprocess`` section of its ``config.json``)."""
        path = Path(model_dir) / "config.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))["preprocess"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise FileNotFoundError(f"{path}: no model config with a preprocess section ({err})") from None
        from mmrad.config.yamlio import from_dict

        return cls(from_dict(PreprocessConfig, data, "preprocess"))

    @property
    def size(self) -> int:
        return self.config.image_size

    # ------------------------------------------------------------------------------------------------- decoding

    def decode(self, image, *, salt: str | None = None, keep_original: bool = False) -> DecodedImage:
        """A file (DICOM by content, PNG, JPEG, TIFF), a float/uint array or a PIL image as a :class:`DecodedImage`
        (``keep_original``: also its full-resolution pixels, e.g. to draw maps on).

        Raises:
            MMRadImageError: a file that cannot be read (names the file and the reason).
        """
        meta = None
        if isinstance(image, str | PathLike):
            from mmrad.io.images import load_image

            pixels, meta = load_image(image, window=parse_window(self.config.window),
                                      invert_monochrome1=self.config.invert_monochrome1, salt=salt)  # fmt: skip
            bit_depth = meta.bit_depth
        else:
            pixels = to_float_array(image)
            bit_depth = 8 if getattr(image, "dtype", None) == np.uint8 or getattr(image, "mode", "") in _8BIT else 16
        decoded = self.decoded(pixels, bit_depth=bit_depth, meta=meta)
        if keep_original:
            decoded.original = pixels
        return decoded

    def decoded(self, pixels: np.ndarray, *, bit_depth: int = 8, meta=None) -> DecodedImage:
        """Apply the decode size and the cache's rounding to pixels already in [0, 1]."""
        from mmrad.io.images import resize_longest

        h0, w0 = pixels.shape[:2]
        if self.config.decode_size is not None:
            pixels = quantize(resize_longest(pixels, self.config.decode_size), bit_depth)
        h, w = pixels.shape[:2]
        scale = np.diag([w / w0, h / h0, 1.0])
        return DecodedImage(pixels, (h0, w0), scale, bit_depth, meta)

    @staticmethod
    def cached(row: dict) -> DecodedImage:
        """A corpus row's cached image, decoded at ingest. The corpus keeps no source file, so the cached image is
        the image maps go back onto."""
        pixels = to_float_array(row["image"])
        return DecodedImage(pixels, pixels.shape[:2], np.eye(3), row.get("bit_depth") or 8)

    # ------------------------------------------------------------------------------------------------- the input

    def prepare(self, image: DecodedImage, *, jitter=None, generator=None) -> tuple[np.ndarray, np.ndarray]:
        """The square input before normalisation: ``((1 or C, S, S) float32 in [0, 1], matrix)``, the matrix from
        original pixels to input pixels. Grey stays one channel here (:meth:`normalize` repeats it). ``jitter`` (an
        :class:`~mmrad.processing.transforms.AugmentConfig`) applies intensity jitter before the fit, so that padding
        stays black."""
        pixels = image.pixels
        if pixels.ndim == 3 and self.config.channels != 3:
            pixels = pixels.mean(axis=-1)
        if jitter is not None:
            pixels = intensity_jitter(pixels, jitter, generator)
        fitted, fit = fit_to_square(pixels, self.config.image_size, self.config.resize)
        return fitted, fit @ image.to_decoded

    def normalize(self, images: np.ndarray) -> np.ndarray:
        """(B, 1 or C, S, S) in [0, 1] -> (B, C, S, S) normalised with the tower's mean and std."""
        return normalize(images, self.config.mean, self.config.std)

    def __call__(self, images, *, return_tensors: str | None = "pt") -> dict:
        """Decode, fit and normalise a batch.

        Args:
            images: one image or a list of files, arrays, PIL images or :class:`DecodedImage`.
            return_tensors: ``"pt"`` for a torch tensor, None for numpy.

        Returns:
            ``{"pixel_values": (B, C, S, S), "matrices": [3x3 original -> input], "original_sizes": [(H, W)]}``.
        """
        if not isinstance(images, list | tuple):
            images = [images]
        decoded = [im if isinstance(im, DecodedImage) else self.decode(im) for im in images]
        prepared = [self.prepare(d) for d in decoded]
        channels = {p.shape[0] for p, _ in prepared}
        stack = [np.broadcast_to(p, (self.config.channels, *p.shape[1:])) if len(channels) > 1 else p
                 for p, _ in prepared]  # fmt: skip
        pixels = self.normalize(np.stack(stack))
        if return_tensors == "pt":
            import torch

            pixels = torch.from_numpy(pixels)
        return {"pixel_values": pixels, "matrices": [m for _, m in prepared],
                "original_sizes": [d.original_size for d in decoded]}  # fmt: skip

    # --------------------------------------------------------------------------------------------- maps go back

    def to_original(self, grid_map, matrix: np.ndarray, size: tuple[int, int], smooth: float = 0.5) -> np.ndarray:
        """A (h, w) map over the model input's patch grid resampled onto the original image (H, W) = ``size``:
        upsampled, smoothed by ``smooth`` patches, min-max normalised (see
        :func:`mmrad.processing.maps.to_image_space`)."""
        from mmrad.processing.maps import to_image_space

        return to_image_space(grid_map, matrix, size, self.config.image_size, smooth)
