"""Crash-safe training checkpoints.

A checkpoint is written by ``accelerator.save_state`` into a hidden temporary folder, completed with
``trainer_state.json`` and a ``COMPLETE`` marker (both fsynced), and only then renamed to ``step_XXXXXXXX``. A rename
within one file system is atomic, so a process killed at any moment leaves either the previous checkpoints or the
new complete one; :func:`latest_checkpoint` ignores anything else and stale temporary folders are removed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

from mmrad.files import writing

logger = logging.getLogger(__name__)

PREFIX = "step_"
MARKER = "COMPLETE"
STATE_FILE = "trainer_state.json"
_PATTERN = re.compile(rf"^{PREFIX}(\d{{8}})$")


def checkpoint_path(root: str | Path, step: int) -> Path:
    return Path(root) / f"{PREFIX}{step:08d}"


def _fsync_write(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def complete_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _PATTERN.match(child.name)
        if match and child.is_dir() and (child / MARKER).is_file() and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def latest_checkpoint(root: str | Path) -> Path | None:
    checkpoints = complete_checkpoints(root)
    return checkpoints[-1] if checkpoints else None


def read_trainer_state(checkpoint: str | Path) -> dict:
    with open(Path(checkpoint) / STATE_FILE, encoding="utf-8") as f:
        return json.load(f)


def save_checkpoint(accelerator, root: str | Path, step: int, trainer_state: dict, keep_last: int) -> Path:
    """Save model, optimiser, scheduler and RNG states plus ``trainer_state`` atomically; keep the last k."""
    root = Path(root)
    final = checkpoint_path(root, step)
    tmp = root / f".tmp_{final.name}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        with writing(root):
            accelerator.save_state(str(tmp), safe_serialization=True)
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                _fsync_write(tmp / STATE_FILE, json.dumps({**trainer_state, "step": step}, indent=1))
                for path in tmp.rglob("*"):
                    if path.is_file():
                        with open(path, "rb") as f:
                            os.fsync(f.fileno())
                _fsync_write(tmp / MARKER, "ok\n")
                _fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk: give the space of the partial checkpoint back
        raise
    if accelerator.is_main_process:
        if final.exists():  # the same step saved again (e.g. the final step after a periodic save)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        for old in complete_checkpoints(root)[:-keep_last]:
            (old / MARKER).unlink(missing_ok=True)  # a kill during the delete leaves no half folder marked complete
            shutil.rmtree(old, ignore_errors=True)
        logger.info("saved checkpoint %s", final.name)
    accelerator.wait_for_everyone()
    return final


def remove_partial_checkpoints(root: str | Path) -> list[Path]:
    """Delete temporary folders left by a process killed while saving; returns what was removed."""
    root = Path(root)
    removed = []
    if root.is_dir():
        for child in root.iterdir():
            incomplete = _PATTERN.match(child.name) and not (child / MARKER).is_file()
            if child.name.startswith(f".tmp_{PREFIX}") or incomplete:
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child)
    if removed:
        logger.warning("removed %d incomplete checkpoint folder(s) left by an interrupted save", len(removed))
    return removed
