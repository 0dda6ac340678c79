"""Writing files safely: whole files and folders appear at once or not at all, and I/O errors name the target.

:func:`atomic_file` and :func:`staging_folder` write beside the target and move the result into place;
:func:`writing` turns an I/O error into an :class:`~mmrad.errors.OutputError` naming the file being written;
:func:`ensure_writable_dir` checks an output folder before long work; :func:`write_json_atomic` writes JSON (NaN as
null) through :func:`atomic_file`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from contextlib import contextmanager
from os import PathLike
from pathlib import Path

from mmrad.errors import OutputError, is_io_error


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


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON to a temporary file and rename it, so a crash never leaves half a file (NaN -> null)."""
    import numpy as np

    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, np.generic):
            return clean(value.item())
        return value

    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(clean(data), indent=1))
