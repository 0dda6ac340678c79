"""Salted hashing of patient and study identifiers.

Raw identifiers (patient IDs, accession numbers, study UIDs) never leave the ingest step: every cache, log and
upload holds only :func:`hash_identifier` keys. The salt comes from ``MMRAD_SALT`` when set, else from a random
salt created once per user under ``~/.config/mmrad/salt`` (mode 0600), so keys are stable across runs on one
machine but cannot be recomputed from a guessed MRN without the salt.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

KEY_LENGTH = 16  # hex characters kept from the HMAC-SHA256


def _salt_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "mmrad" / "salt"


def default_salt() -> str:
    """The salt from ``MMRAD_SALT``, else the per-user salt file (created on first use)."""
    env = os.environ.get("MMRAD_SALT")
    if env:
        return env
    path = _salt_file()
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        salt = secrets.token_hex(16)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(salt)
        return salt
    except FileExistsError:  # another process created it between our read and write
        return path.read_text(encoding="utf-8").strip()


def hash_identifier(value: object, salt: str | None = None) -> str | None:
    """HMAC-SHA256 of an identifier, as ``KEY_LENGTH`` hex characters; None/empty stays None."""
    if value is None:
        return None
    text = str(value).strip()
    if not text:
        return None
    key = (salt if salt is not None else default_salt()).encode("utf-8")
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()[:KEY_LENGTH]
