"""Grey-level mapping of DICOM pixels to [0, 1]: Modality LUT, VOI LUT or window, and MONOCHROME1 inversion.

Pure numpy; :mod:`mmrad.data.dicom` reads the parameters from the header into a :class:`GreyPipeline`.
Formulas follow DICOM PS3.3 C.11.1 (Modality LUT), C.11.2.1.2 (LINEAR window), C.11.2.1.3 (LINEAR_EXACT, SIGMOID).
When every step is linear (rescale, linear window, range scaling, inversion) they fold into one ``a * x + b``
followed by a clip: three passes over the image whatever the number of steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
