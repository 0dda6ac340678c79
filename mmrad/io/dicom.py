"""DICOM reading: the only module that imports pydicom.

:func:`read_dicom` returns float32 pixels in [0, 1] with bone bright, after the Modality LUT (rescale or LUT
sequence), the VOI LUT or window (DICOM PS3.3 C.11.2), BitsStored-based scaling, and MONOCHROME1 inversion, plus a
:class:`DicomMeta` that carries no patient identifiers (only salted hashes). Compressed transfer syntaxes decode
through pydicom's plugins (pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg). The grey-level steps are
:mod:`mmrad.io.voi`'s (:func:`~mmrad.io.voi.grey_pipeline`).

After torchxrayvision's ``read_xray_dcm``; windowing follows the formulas of the standard (as pydicom's
``apply_windowing`` does) but runs in float32 and outputs [0, 1] directly.
"""

from __future__ import annotations

import logging
import math
import os
import stat
from contextlib import contextmanager
from dataclasses import dataclass
from os import PathLike

import numpy as np

from mmrad.errors import MMRadImageError
from mmrad.io.voi import Window, grey_pipeline
from mmrad.privacy.deid import hash_identifier

logger = logging.getLogger(__name__)

GREY = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR")

# transfer syntax UID prefix -> what to pip install when no decoder plugin is available
_CODEC_PACKAGES = {
    "1.2.840.10008.1.2.4.5": "pylibjpeg pylibjpeg-libjpeg",  # JPEG baseline / extended
    "1.2.840.10008.1.2.4.7": "pylibjpeg pylibjpeg-libjpeg",  # JPEG lossless
    "1.2.840.10008.1.2.4.8": "pylibjpeg pylibjpeg-libjpeg",  # JPEG-LS
    "1.2.840.10008.1.2.4.9": "pylibjpeg pylibjpeg-openjpeg",  # JPEG 2000
    "1.2.840.10008.1.2.4.20": "pylibjpeg pylibjpeg-openjpeg",  # HTJ2K
    "1.2.840.10008.1.2.5": "pylibjpeg pylibjpeg-rle",  # RLE
}
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


@dataclass
class DicomMeta:
    """What mmrad keeps of a DICOM header: acquisition facts and salted keys, never identifiers."""

    modality: str | None
    view_position: str | None
    body_part: str | None
    rows: int
    columns: int
    pixel_spacing: tuple[float, float] | None  # (row, column) in mm; None when missing or degenerate
    photometric_interpretation: str
    bits_stored: int
    transfer_syntax: str | None
    number_of_frames: int
    window: tuple[float, float] | None  # the (center, width) applied, if any
    patient_key: str | None  # salted hash of PatientID
    study_key: str | None  # salted hash of StudyInstanceUID (or AccessionNumber)


def is_dicom(path: str | PathLike) -> bool:
    """True when the file holds DICOM: the ``DICM`` marker at byte 128, or a preamble-less dataset."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    # No preamble: a dataset starts with a tag of group 0002 (file meta) or 0008 (identifying), little endian,
    # followed by a plausible explicit VR or a 4-byte implicit length.
    if len(head) >= 8 and int.from_bytes(head[:2], "little") in (0x0002, 0x0008):
        vr = head[4:6]
        return (vr.isalpha() and vr.isupper()) or int.from_bytes(head[4:8], "little") < 1 << 24
    return False


def read_dicom(
    path: str | PathLike,
    *,
    window: Window = "auto",
    frame: int = 0,
    invert_monochrome1: bool = True,
    salt: str | None = None,
) -> tuple[np.ndarray, DicomMeta]:
    """Read one DICOM frame as float32 in [0, 1], bone bright.

    Args:
        path: the DICOM file.
        window: ``"auto"`` applies the VOI LUT sequence or WindowCenter/Width when present (else scales the
            BitsStored range), ``"none"`` scales the BitsStored range, ``"minmax"`` scales the frame's own range,
            and a ``(center, width)`` tuple applies that linear window.
        frame: which frame of a multi-frame file.
        invert_monochrome1: invert MONOCHROME1 so that high attenuation is bright, as in MONOCHROME2.
        salt: salt for the patient/study keys (default: :func:`mmrad.privacy.deid.default_salt`).

    Returns:
        ``(pixels, meta)``: pixels of shape (Rows, Columns), or (Rows, Columns, 3) for colour.

    Raises:
        MMRadImageError: not DICOM, no pixel data, codec missing, truncated data, a damaged header, frame out of
            range, empty image, unsupported photometric interpretation.
        ValueError: ``window`` is not one of the accepted values.
    """
    import pydicom

    if not (isinstance(window, tuple | list) and len(window) == 2) and window not in ("auto", "none", "minmax"):
        raise ValueError(f"window must be 'auto', 'none', 'minmax' or (center, width), got {window!r}")
    check_file(path)
    with _values_not_validated():
        try:
            ds = pydicom.dcmread(path, force=not _has_preamble(path))
        except Exception as err:  # pydicom's parser raises many types on damaged files
            raise file_error(path, err, f"not a readable DICOM file ({_short(err)})") from err
        try:
            _infer_transfer_syntax(ds)
            return _pixels_from_dataset(ds, path, window=window, frame=frame, invert=invert_monochrome1, salt=salt)
        except MMRadImageError:
            raise
        except Exception as err:  # elements are parsed when first read: a damaged one fails wherever that is
            raise MMRadImageError(path, f"damaged DICOM header ({type(err).__name__}: {_short(err)})") from err


@contextmanager
def _values_not_validated():
    """pydicom checks element values as it reads them and warns with the value itself (a PatientID too long for
    its VR, a malformed UID): such warnings would put identifiers into logs. mmrad reads only acquisition fields."""
    from pydicom import config

    mode = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.IGNORE
    try:
        yield
    finally:
        config.settings.reading_validation_mode = mode


def check_file(path: str | PathLike) -> None:
    """Raise :class:`MMRadImageError` unless ``path`` is an existing regular file (or a link to one).

    Opening a FIFO or a device would block or read forever: archives copied with their special files must not
    hang an ingest.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        raise file_error(path, err, f"cannot read file ({err.strerror or err})") from err
    if stat.S_ISDIR(mode):
        raise MMRadImageError(path, "is a directory, not a file")
    if not stat.S_ISREG(mode):
        raise MMRadImageError(path, "not a regular file (a FIFO, socket or device)")


def file_error(path: str | PathLike, err: BaseException, otherwise: str) -> MMRadImageError:
    """The error for a file that failed to open or stat: missing, a directory or not permitted, else ``otherwise``."""
    if isinstance(err, FileNotFoundError):
        return MMRadImageError(path, "file not found")
    if isinstance(err, IsADirectoryError):
        return MMRadImageError(path, "is a directory, not a file")
    if isinstance(err, PermissionError):
        return MMRadImageError(path, "permission denied")
    return MMRadImageError(path, otherwise)


def _has_preamble(path: str | PathLike) -> bool:
    with open(path, "rb") as f:
        head = f.read(132)
    return head[128:132] == b"DICM"


def _infer_transfer_syntax(ds) -> None:
    """A preamble-less file has no file meta: its transfer syntax is the encoding pydicom found while reading."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None:
        return
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = (
        ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    )


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text[:200]


def _pixels_from_dataset(ds, path, *, window: Window, frame: int, invert: bool, salt: str | None):
    from pydicom.pixels import apply_color_lut, pixel_array
    from pydicom.pixels.utils import get_nr_frames

    if not any(k in ds for k in _PIXEL_KEYWORDS):
        raise MMRadImageError(path, "DICOM file has no pixel data")
    try:
        photometric = str(ds.PhotometricInterpretation).strip().upper()
        rows, columns = int(ds.Rows), int(ds.Columns)
        bits_stored = int(ds.get("BitsStored") or ds.BitsAllocated)
        signed = int(ds.get("PixelRepresentation", 0)) == 1
        frames = int(get_nr_frames(ds, warn=False))
    except (AttributeError, TypeError, ValueError) as err:
        raise MMRadImageError(path, f"incomplete image header ({_short(err)})") from err
    if photometric not in GREY + COLOUR:
        raise MMRadImageError(path, f"unsupported photometric interpretation {photometric!r}")
    if rows == 0 or columns == 0:
        raise MMRadImageError(path, f"empty image ({rows}x{columns})")
    if not 0 <= frame < frames:
        raise MMRadImageError(path, f"frame {frame} out of range: the file has {frames} frame(s)")

    tsyntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    try:
        arr = pixel_array(ds, index=frame if frames > 1 else None)
    except (RuntimeError, NotImplementedError) as err:
        raise MMRadImageError(path, _codec_message(tsyntax, err)) from err
    except (ValueError, EOFError, OSError, TypeError, IndexError, KeyError, AttributeError) as err:
        message = _short(err)
        if isinstance(err, EOFError) or any(w in message.lower() for w in ("length", "truncat", "less than expected")):
            raise MMRadImageError(path, f"truncated or malformed pixel data ({message})") from err
        raise MMRadImageError(path, f"cannot decode pixel data ({message})") from err
    if arr.size == 0:
        raise MMRadImageError(path, "empty image (no pixels)")

    applied_window = None
    if photometric in GREY:
        if arr.ndim != 2:
            raise MMRadImageError(path, f"unexpected grey pixel array shape {arr.shape}")
        inverted = photometric == "MONOCHROME1" and invert
        pipeline = grey_pipeline(arr, ds, window, bits_stored, signed, inverted)
        out, applied_window = pipeline(arr), pipeline.window
    else:
        if photometric == "PALETTE COLOR":
            arr = apply_color_lut(arr, ds)
            top = 255.0 if arr.dtype == np.uint8 else 65535.0
        else:  # YBR_* are converted to RGB by the decoder
            top = float(2 ** int(ds.get("BitsStored", 8)) - 1)
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise MMRadImageError(path, f"unexpected colour pixel array shape {arr.shape}")
        out = np.clip(arr.astype(np.float32) / np.float32(top), 0.0, 1.0)

    out = np.ascontiguousarray(out, dtype=np.float32)
    if not np.isfinite(out).all():
        raise MMRadImageError(path, "pixel data contains NaN or infinite values")
    return out, _meta(ds, path, rows, columns, photometric, bits_stored, tsyntax, frames, applied_window, salt)


def _codec_message(tsyntax, err: BaseException) -> str:
    """Say whether the codec is missing (and which package adds it) or installed but failed on this file."""
    from pydicom.pixels.decoders.base import get_decoder

    name = getattr(tsyntax, "name", None) or str(tsyntax)
    try:
        available = get_decoder(tsyntax).is_available
    except (NotImplementedError, ValueError, TypeError):
        available = False
    if not available:
        packages = next((p for prefix, p in _CODEC_PACKAGES.items() if str(tsyntax).startswith(prefix)), None)
        hint = f"; install one with: pip install {packages}" if packages else ""
        return f"no decoder installed for transfer syntax {name} ({tsyntax}){hint}"
    return f"the {name} decoder failed on this file ({_short(err)})"


def _pixel_spacing(ds) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is None:
            continue
        try:
            spacing = (float(value[0]), float(value[1]))
        except (TypeError, ValueError, IndexError):
            continue
        if all(math.isfinite(s) and s > 0 for s in spacing):
            return spacing
    # no path in the message: archive paths often hold patient names, and logs travel further than the data
    logger.warning("a DICOM file without a valid pixel spacing: physical sizes (mm) are unknown for such images")
    return None


def _text(ds, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _meta(ds, path, rows, columns, photometric, bits_stored, tsyntax, frames, applied_window, salt) -> DicomMeta:
    study = _text(ds, "StudyInstanceUID") or _text(ds, "AccessionNumber")
    return DicomMeta(
        modality=_text(ds, "Modality"),
        view_position=_text(ds, "ViewPosition"),
        body_part=_text(ds, "BodyPartExamined"),
        rows=rows,
        columns=columns,
        pixel_spacing=_pixel_spacing(ds),
        photometric_interpretation=photometric,
        bits_stored=bits_stored,
        transfer_syntax=str(tsyntax) if tsyntax else None,
        number_of_frames=frames,
        window=applied_window,
        patient_key=hash_identifier(_text(ds, "PatientID"), salt),
        study_key=hash_identifier(study, salt),
    )


def decodable_transfer_syntaxes() -> dict[str, bool]:
    """Transfer syntax name -> whether an installed plugin can decode it (for ``mmrad info``)."""
    from pydicom.pixels.decoders.base import _PIXEL_DATA_DECODERS, get_decoder

    return {get_decoder(uid).UID.name: get_decoder(uid).is_available for uid in _PIXEL_DATA_DECODERS}


def write_dicom(
    path: str | PathLike,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    signed: bool = False,
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    compress: str | None = None,
    **tags,
) -> None:
    """Write integer pixels as a DICOM file (for the phantom corpus and tests).

    Args:
        path: output file.
        pixels: integer array (Rows, Columns), (Frames, Rows, Columns), or (Rows, Columns, 3) for RGB.
        photometric: "MONOCHROME1", "MONOCHROME2" or "RGB".
        bits_stored: defaults to the array dtype's bit width.
        signed: PixelRepresentation 1.
        rescale: (slope, intercept) written as RescaleSlope/RescaleIntercept.
        window: (center, width) written as WindowCenter/WindowWidth.
        compress: a transfer syntax UID to compress with (e.g. RLE Lossless), or None for uncompressed.
        **tags: extra dataset keywords (Modality="CR", PatientID="...", ...).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    pixels = np.asarray(pixels)
    if pixels.dtype.kind not in "ui":
        raise TypeError(f"write_dicom needs integer pixels, got {pixels.dtype}")
    colour = photometric == "RGB"
    frames = pixels.shape[0] if (pixels.ndim == 3 and not colour) else 1
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.PhotometricInterpretation = photometric
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = (pixels.shape[-3], pixels.shape[-2]) if colour else pixels.shape[-2:]
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = (f"{rescale[0]:g}", f"{rescale[1]:g}")
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = (f"{window[0]:g}", f"{window[1]:g}")
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    if compress is not None:
        ds.compress(compress, encoding_plugin="pydicom" if compress == "1.2.840.10008.1.2.5" else "")
    ds.save_as(path, enforce_file_format=True)
