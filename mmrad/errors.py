"""Exceptions that the CLI turns into one-line messages."""

from __future__ import annotations

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
