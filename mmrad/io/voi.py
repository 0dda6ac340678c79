"""Grey-level mapping of DICOM pixels to [0, 1]: Modality LUT, VOI LUT or window, and MONOCHROME1 inversion.

Pure numpy, no pydicom import: :func:`grey_pipeline` reads the parameters from a dataset that
:mod:`mmrad.io.dicom` has read into a :class:`GreyPipeline`, which maps the pixels.
Formulas follow DICOM PS3.3 C.11.1 (Modality LUT), C.11.2.1.2 (LINEAR window), C.11.2.1.3 (LINEAR_EXACT, SIGMOID).
When every step is linear (rescale, linear window, range scaling, inversion) they fold into one ``a * x + b``
followed by a clip: three passes over the image whatever the number of steps.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

logger = logging.getLogger(__name__)

Window = Literal["auto", "none", "minmax"] | tuple[float, float]
WINDOW_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


@dataclass
class LUT:
    """A lookup table: inputs below ``first`` take entry 0, inputs past the end take the last entry."""

    first: int  # the first mapped input value
    values: np.ndarray  # float32 entries

    def __call__(self, x: np.ndarray) -> np.ndarray:
        index = np.clip(np.rint(x).astype(np.int64) - self.first, 0, len(self.values) - 1)
        return self.values[index]


@dataclass
class GreyPipeline:
    """Stored pixel values -> [0, 1] float32, bone bright."""

    slope: float = 1.0  # RescaleSlope
    intercept: float = 0.0  # RescaleIntercept
    modality_lut: LUT | None = None  # Modality LUT Sequence (replaces the rescale)
    window: tuple[float, float] | None = None  # (center, width) of the VOI window, if one applies
    function: str = "LINEAR"  # VOILUTFunction of the window
    voi_lut: LUT | None = None  # VOI LUT Sequence (takes precedence over the window)
    voi_lut_max: float = 65535.0  # 2**bits - 1 of the VOI LUT output
    value_range: tuple[float, float] = (0.0, 1.0)  # modality values mapped to 0 and 1 when no VOI applies
    invert: bool = False  # MONOCHROME1

    def __post_init__(self):
        if self.function not in WINDOW_FUNCTIONS:
            raise ValueError(f"unsupported VOI LUT function {self.function!r}")
        if self.window is not None and self.window[1] <= 0:
            raise ValueError(f"window width must be > 0, got {self.window[1]}")

    def affine(self) -> tuple[float, float] | None:
        """``(a, b)`` such that the output is ``clip(a * stored + b, 0, 1)``, or None for a non-linear chain."""
        if self.modality_lut is not None or self.voi_lut is not None:
            return None
        if self.window is not None:
            center, width = self.window
            if self.function == "SIGMOID":
                return None
            if self.function == "LINEAR":  # C.11.2.1.2: center - 0.5, width - 1
                center, width = center - 0.5, width - 1.0
                if width <= 0:  # a width of 1 is a threshold
                    return None
            a, b = 1.0 / width, 0.5 - center / width
        else:
            lo, hi = self.value_range
            if hi <= lo:
                return None
            a, b = 1.0 / (hi - lo), -lo / (hi - lo)
        a, b = a * self.slope, a * self.intercept + b
        return (-a, 1.0 - b) if self.invert else (a, b)

    def __call__(self, stored: np.ndarray) -> np.ndarray:
        """Map stored values (any integer or float dtype) to float32 in [0, 1]."""
        coefficients = self.affine()
        if coefficients is not None:
            a, b = coefficients
            out = stored.astype(np.float32)  # measured faster than a casting multiply
            out *= np.float32(a)
            out += np.float32(b)
            return np.clip(out, 0.0, 1.0, out=out)
        if stored.dtype.kind in "ui" and stored.dtype.itemsize <= 2:
            # evaluate the chain once per possible stored value, then look every pixel up
            index_type = np.uint8 if stored.dtype.itemsize == 1 else np.uint16
            domain = np.arange(np.iinfo(index_type).max + 1, dtype=index_type).view(stored.dtype)
            return self._evaluate(domain)[stored.view(index_type)]
        return self._evaluate(stored)

    def _evaluate(self, stored: np.ndarray) -> np.ndarray:
        if self.modality_lut is not None:
            values = self.modality_lut(stored)
        else:
            values = stored.astype(np.float32) * np.float32(self.slope) + np.float32(self.intercept)
        if self.voi_lut is not None:
            out = self.voi_lut(values) / np.float32(self.voi_lut_max)
        elif self.window is not None:
            out = window(values, *self.window, self.function)
        else:
            lo, hi = self.value_range
            out = (values - np.float32(lo)) / np.float32(hi - lo) if hi > lo else np.zeros_like(values)
        out = np.clip(out.astype(np.float32, copy=False), 0.0, 1.0)
        return 1.0 - out if self.invert else out


def window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Apply a VOI window to modality values; output float32 in [0, 1]."""
    values = np.asarray(values, dtype=np.float32)
    if function == "SIGMOID":
        return (1.0 / (1.0 + np.exp(-4.0 * (values - np.float32(center)) / np.float32(width)))).astype(np.float32)
    if function == "LINEAR":
        center, width = center - 0.5, width - 1.0
        if width <= 0:
            return (values > center).astype(np.float32)
    out = (values - np.float32(center)) / np.float32(width) + np.float32(0.5)
    return np.clip(out, 0.0, 1.0)


# ----------------------------------------------------------------------------------------------- from the header


def grey_pipeline(arr: np.ndarray, ds, window: Window, bits_stored: int, signed: bool, inverted: bool):
    """Read the Modality LUT / rescale and the VOI choice from a pydicom dataset into a :class:`GreyPipeline`."""
    pipeline = GreyPipeline(invert=inverted)
    mlut = ds.get("ModalityLUTSequence")
    if mlut:
        pipeline.modality_lut, depth = _lut(mlut[0], ds, signed)
        pipeline.value_range = (0.0, float(2**depth - 1))
    else:
        pipeline.slope = float(ds.get("RescaleSlope", 1) or 1)
        pipeline.intercept = float(ds.get("RescaleIntercept", 0) or 0)
        lo, hi = (-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1) if signed else (0, 2**bits_stored - 1)
        ends = sorted((lo * pipeline.slope + pipeline.intercept, hi * pipeline.slope + pipeline.intercept))
        pipeline.value_range = (ends[0], ends[1])

    if isinstance(window, tuple | list):
        pipeline.window = (float(window[0]), float(window[1]))
    elif window == "minmax":  # the range of this frame's modality values
        ends = np.array([arr.min(), arr.max()])
        mapped = pipeline.modality_lut(ends) if mlut else ends * pipeline.slope + pipeline.intercept
        pipeline.value_range = (float(mapped.min()), float(mapped.max()))
    elif window == "auto":
        voi_seq = ds.get("VOILUTSequence")
        if voi_seq and "LUTDescriptor" in voi_seq[0] and "LUTData" in voi_seq[0]:
            pipeline.voi_lut, depth = _lut(voi_seq[0], ds, signed)
            pipeline.voi_lut_max = float(2**depth - 1)
        elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
            try:
                center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
            except (TypeError, ValueError, IndexError):
                center = width = math.nan
            function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
            if math.isfinite(center) and math.isfinite(width) and width > 0 and function in WINDOW_FUNCTIONS:
                pipeline.window, pipeline.function = (center, width), function
            else:
                logger.warning("ignoring invalid window (center=%s, width=%s, function=%s)", center, width, function)
    elif window != "none":
        raise ValueError(f"window must be 'auto', 'none', 'minmax' or (center, width), got {window!r}")
    return pipeline


def _lut(item, ds, signed: bool) -> tuple[LUT, int]:
    """A Modality or VOI LUT item (PS3.3 C.11.1.1 / C.11.2.1.1) as a :class:`LUT` and its output bit depth."""
    descriptor = [int(v) for v in item.LUTDescriptor]
    entries = descriptor[0] or 65536
    first = descriptor[1]
    if signed and first >= 2**15:  # the descriptor's first value is SS for signed pixel data
        first -= 2**16
    data = item.LUTData
    if isinstance(data, bytes | bytearray):  # OW: raw 16-bit words in the dataset's byte order
        order = "<" if getattr(ds, "original_encoding", (None, True))[1] is not False else ">"
        values = np.frombuffer(bytes(data), dtype=f"{order}u2", count=entries)
    else:
        values = np.asarray(list(data) if isinstance(data, Sequence) else [data])
    return LUT(first, values.astype(np.float32)), descriptor[2]


def _first(value) -> float:
    """First value of a possibly multi-valued DS element."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        value = value[0]
    return float(value)
