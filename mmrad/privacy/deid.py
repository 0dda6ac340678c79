"""Patient privacy: salted hashing of identifiers and de-identification of report text.

Raw identifiers (patient IDs, accession numbers, study UIDs) never leave the ingest step: every cache, log and
upload holds only :func:`hash_identifier` keys. The salt comes from ``MMRAD_SALT`` when set, else from a random
salt created once per user under ``~/.config/mmrad/salt`` (mode 0600), so keys are stable across runs on one
machine but cannot be recomputed from a guessed MRN without the salt.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from functools import lru_cache
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


# ---------------------------------------------------------------------------------------------- report text

_MONTHS = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?"
    r"|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
_NAME = r"[A-Z][A-Za-z'\-]+(?:[ \t]*,[ \t]*[A-Z][a-z'\-]+)?(?:[ \t]+[A-Z](?:\.|\b))?(?:[ \t]+[A-Z][a-z'\-]+){0,2}\b"
_TITLES = r"Dr|Mr|Mrs|Ms|Prof|Doctor"
_HEADER_NAME_FIELDS = (
    r"patient(?:\s+name)?|name|pt(?:\s+name)?|dictated\s+by|signed\s+by|electronically\s+signed\s+by|attending"
    r"|referring(?:\s+(?:physician|doctor|provider|clinician))?|ordering(?:\s+(?:physician|provider))?"
    r"|radiologist|reported\s+by|read\s+by|transcribed\s+by|physician|provider|technologist|resident"
)
_ID_FIELDS = (
    r"mrn|medical\s+record(?:\s+(?:number|no\.?|#))?|record\s+(?:number|no\.?|#)|patient\s+id|pt\s+id|id"
    r"|accession(?:\s+(?:number|no\.?|#))?|acc(?:\.|\s*#)?|encounter(?:\s+(?:number|no\.?|#))?|ssn|visit\s+(?:number|#)"
    r"|exam\s+(?:number|#)|study\s+id|order\s+(?:number|#)"
)

# (pattern, placeholder) in the order they apply; every pattern is case-insensitive unless it starts with (?-i).
# Runs of repeatable characters are bounded or kept within one line, so that the time stays linear in the length
# of the text (an unbounded run tried from every position is quadratic: 20,000 blank lines took 37 s).
_RULES: list[tuple[str, str]] = [
    (r"\b[\w.+-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63})+\b", "[EMAIL]"),
    # header fields with names: "Patient: Jane Doe", "Dictated by: Dr. John Smith", or the name on the next line
    # (unless that line is another "HEADER:")
    (
        rf"(?im)^([ \t]*(?:{_HEADER_NAME_FIELDS})[ \t]*[:#-][ \t]*(?:\n(?![ \t]*[a-z][a-z ]*:)[ \t]*)?)"
        r"(?:(?:dr|mr|mrs|ms|prof)\.?[ \t]+)?[^\n]*$",
        r"\1[NAME]",
    ),
    # identifier fields: "MRN: 12345678", "Accession #: A-998877"
    (rf"(?i)\b((?:{_ID_FIELDS})\s*(?:[:#]|number|no\.?)\s*)[A-Z0-9][A-Z0-9\-/]*\d[A-Z0-9\-/]*", r"\1[ID]"),
    # dates: 2019-03-04, 03/04/2019, 3-4-19, 4 March 2019, March 4th, 2019, Mar. 2019
    (r"\b\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\b", "[DATE]"),
    (r"\b\d{1,2}[-/.]\d{1,2}[-/.](?:\d{4}|\d{2})\b", "[DATE]"),
    (rf"(?i)\b\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTHS}\.?,?\s+\d{{2,4}}\b", "[DATE]"),
    (rf"(?i)\b{_MONTHS}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}\b", "[DATE]"),
    (rf"(?i)\b{_MONTHS}\.?\s+\d{{4}}\b", "[DATE]"),
    # phone numbers: (555) 123-4567, 555-123-4567, +1 555 123 4567, ext. 1234
    (r"(?:\+?1[\s.-]?)?\(?\b\d{3}\)?[\s.-]\d{3}[\s.-]\d{4}\b(?:\s*(?:x|ext\.?)\s*\d{1,5})?", "[PHONE]"),
    # social security numbers and other long digit runs (6+ digits are not measurements)
    (r"\b\d{3}-\d{2}-\d{4}\b", "[ID]"),
    (r"\b\d{6,}\b", "[ID]"),
    # titled names in running text and salutations: "Dr. Smith", "Dear Mrs. Jane Doe,"
    (rf"(?-i:\b({_TITLES})(\.?)[ \t]+{_NAME})", r"\1\2 [NAME]"),
    (rf"(?-i:\b(Dear|Hello|Hi|Attn:?|Attention:?)[ \t]+(?!(?:{_TITLES})\b){_NAME})", r"\1 [NAME]"),
]


@lru_cache(maxsize=1)
def _compiled_rules() -> list[tuple[re.Pattern, str]]:
    return [(re.compile(pattern, re.IGNORECASE if "(?" not in pattern[:4] else 0), repl) for pattern, repl in _RULES]


def deidentify_text(text: str) -> str:
    """Replace identifiers in free report text with placeholders, keeping the clinical content.

    Names in header fields ("Patient:", "Dictated by:", "Referring physician:") and after titles or salutations
    ("Dr. Smith", "Dear Jane Doe") become ``[NAME]``; MRN/accession/ID fields, SSNs and digit runs of 6 or more
    become ``[ID]``; dates ``[DATE]``; phone numbers ``[PHONE]``; e-mail addresses ``[EMAIL]``. Measurements such as
    "2.5 cm", "T12" or "5 mm" are kept. Rule-based: it removes the identifier patterns reports carry, it is not a
    guarantee for arbitrary text.
    """
    if not isinstance(text, str):
        raise TypeError(f"deidentify_text needs a str, got {type(text).__name__}")
    for pattern, repl in _compiled_rules():
        text = pattern.sub(repl, text)
    return text
