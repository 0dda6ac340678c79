"""Exceptions that the CLI turns into one-line messages."""

from __future__ import annotations

import errno
import os
import re
from os import PathLike


class MMRadError(Exception):
    """Base class of errors caused by the user's input rather than by a bug."""


class MMRadImageError(MMRadError, ValueError):
    """An image file that cannot be turned into pixels; names the file and the reason."""

    def __init__(self, path: str | PathLike | None, reason: str):
        self.path = None if path is None else str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}" if self.path else reason)


class UnsafeFileError(MMRadError, ValueError):
    """A weights file that would run code when loaded (a pickle holding more than tensors): refused, never loaded."""


class OutputError(MMRadError, OSError):
    """An output that could not be written (disk full, no permission, read-only file system); names the path."""

    def __init__(self, path: str | PathLike, err: BaseException):
        self.path = str(path)
        self.reason = os_error_reason(err)
        super().__init__(
            getattr(err, "errno", None) or _errno_in_text(err), f"cannot write {self.path}: {self.reason}"
        )

    def __str__(self) -> str:
        return f"cannot write {self.path}: {self.reason}"


# what users should read for the errors they meet when writing (os.strerror's wording is terse)
_REASONS = {
    errno.ENOSPC: "no space left on device (the disk is full)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied (the folder is not writable)",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "a file of that name is in the way",
    errno.EISDIR: "it is a folder",
    errno.ENAMETOOLONG: "the name is too long",
}


def _errno_in_text(err: BaseException) -> int | None:
    # safetensors' Rust writer raises SafetensorError('... I/O error: No space left on device (os error 28)')
    match = re.search(r"os error (\d+)", str(err))
    return int(match.group(1)) if match else None


def os_error_reason(err: BaseException) -> str:
    """A short reason for an I/O error, e.g. 'no space left on device (the disk is full)'."""
    if isinstance(err, OutputError):
        return err.reason
    code = getattr(err, "errno", None) or _errno_in_text(err)
    if code in _REASONS:
        return _REASONS[code]
    if code:
        return os.strerror(code).lower()
    return " ".join(str(err).split()) or type(err).__name__


def is_io_error(err: BaseException) -> bool:
    """An OSError, or a library's wrapper of one (safetensors)."""
    return isinstance(err, OSError) or (type(err).__name__ == "SafetensorError" and "I/O error" in str(err))
