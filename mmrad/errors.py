"""Exceptions that the CLI turns into one-line messages."""

from __future__ import annotations

import errno
import os
import re
import shutil
from contextlib import contextmanager
from os import PathLike
from pathlib import Path


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


@contextmanager
def writing(path: str | PathLike, staging: str | PathLike | None = None):
    """Turn an I/O error raised while writing ``path`` (or ``staging``, where it is prepared) into an
    :class:`OutputError` naming ``path``. An error about another file (an input that cannot be read) passes through.
    """
    try:
        yield
    except OutputError:
        raise
    except Exception as err:
        if not is_io_error(err):
            raise
        names = [n for n in (getattr(err, "filename", None), getattr(err, "filename2", None)) if n is not None]
        targets = [os.path.abspath(p) for p in (path, staging) if p is not None]
        inside = [n for n in map(os.path.abspath, names) for t in targets if n == t or n.startswith(t + os.sep)]
        if names and not inside:
            raise
        raise OutputError(path, err) from err


@contextmanager
def atomic_file(path: str | PathLike):
    """Yield a temporary path beside ``path`` to write the whole file to; when the block ends it replaces ``path``.
    A failure (a full disk, a crash) leaves ``path`` as it was and no temporary file; I/O errors name ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with writing(path):
        try:
            yield tmp
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


@contextmanager
def staging_folder(out: str | PathLike):
    """Yield a new, empty hidden sibling of the folder ``out`` to write a whole folder into; the caller moves its
    content into place at the end of the block. The sibling is removed whatever happens (a full disk, an error);
    I/O errors there or in ``out`` name ``out``."""
    out = Path(out)
    staging = out.parent / f".{out.name}.{os.getpid()}.tmp"
    with writing(out, staging):
        shutil.rmtree(staging, ignore_errors=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
        try:
            yield staging
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def ensure_writable_dir(folder: str | PathLike) -> None:
    """Create ``folder`` and check that files can be made in it, before long work whose result goes there."""
    with writing(folder):
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".mmrad-write-test.{os.getpid()}")
        with open(probe, "wb"):
            pass
        os.remove(probe)
