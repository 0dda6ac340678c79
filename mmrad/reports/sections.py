"""Radiology report structure: sections and sentences, with character offsets into the original text.

:func:`parse_report` splits a free-text report into sections (FINDINGS, IMPRESSION, INDICATION, COMPARISON,
TECHNIQUE, or OTHER) and sentences. Offsets always point into the text given, so that any sentence (and any span the
labeler reports) can be shown in place: ``report.text[s.start:s.end] == s.text``.

Section headers are recognised in any case when they end with ':' or '-' (``IMPRESSION:``, ``Findings -``), or
stand alone on their own line. ``HISTORY`` and similar headers map to INDICATION, ``CONCLUSION`` to IMPRESSION.
Text before the first header is FINDINGS when the report has no FINDINGS header (so a report without headers is
one FINDINGS section), else OTHER.

Sentences end at '.', '!' or '?' followed by a space or the end of the text (not after abbreviations such as
"Dr.", "e.g.", "approx.", "vs." and not inside decimals such as "2.5 cm"), at blank lines, before numbered or
bulleted list items ("1. ... 2. ..."), and at a line break followed by a capitalised word when the line before
does not continue the sentence. List markers are not part of the sentence text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

SECTION_NAMES = ("FINDINGS", "IMPRESSION", "INDICATION", "COMPARISON", "TECHNIQUE", "OTHER")

# header text (lower case, single spaces) -> section name
_HEADERS = {
    "FINDINGS": ["findings", "finding", "chest findings", "report", "body"],
    "IMPRESSION": ["impression", "impressions", "conclusion", "conclusions", "summary", "interpretation", "opinion",
                   "diagnosis", "final impression"],
    "INDICATION": ["indication", "indications", "history", "clinical history", "clinical indication",
                   "clinical indications", "clinical information", "clinical data", "clinical details", "clinical",
                   "reason for exam", "reason for examination", "reason for study", "reason for request", "reason",
                   "medical history", "patient history", "hx"],
    "COMPARISON": ["comparison", "comparisons", "prior", "priors", "prior study", "prior studies", "prior exam",
                   "prior exams", "compared with", "compared to"],
    "TECHNIQUE": ["technique", "techniques", "procedure", "exam", "examination", "study", "views", "view",
                  "type of exam", "type of examination"],
    "OTHER": ["recommendation", "recommendations", "notification", "notifications", "addendum", "wet read",
              "final report", "preliminary report", "attestation", "electronically signed by", "signed by",
              "dictated by", "communication"],
}  # fmt: skip
_HEADER_NAME = {h: name for name, heads in _HEADERS.items() for h in heads}


def _trie_regex(phrases: list[str]) -> str:
    """One regex for many phrases (spaces or tabs between words), as a trie of characters: fast to reject."""
    trie: dict = {}
    for phrase in phrases:
        node = trie
        for ch in " ".join(phrase.split()):
            node = node.setdefault(ch, {})
        node[""] = {}

    def emit(node: dict) -> str:
        options = [
            (r"[ \t]+" if ch == " " else re.escape(ch)) + emit(child) for ch, child in sorted(node.items()) if ch
        ]
        if "" in node:
            options.append("")
        return options[0] if len(options) == 1 else "(?:" + "|".join(options) + ")"

    return emit(trie)


# a known header word at a word start; _section_spans checks what comes before (line start or sentence end) and
# after (':' or '-', or the end of the line)
_HEADER_WORD_RE = re.compile(rf"\b{_trie_regex(list(_HEADER_NAME))}\b")  # runs on lower-cased text
_HEADER_MARK_RE = re.compile(r"[ \t]{0,8}(?::|[ \t]-+(?=[ \t])|-+(?=[ \t]))")
_HEADER_ALONE_RE = re.compile(r"[ \t]{0,8}:?[ \t]*(?=\r?\n|$)")

# words that never end a sentence when followed by '.' (unless the text ends there)
_ABBREVIATIONS = frozenset((
    "dr", "mr", "mrs", "ms", "prof", "vs", "e.g", "i.e", "eg", "ie", "approx", "appx", "cf", "viz", "resp", "incl",
    "esp",
))  # fmt: skip
# abbreviations that are also sentence ends: a boundary unless the next word starts in lower case or with a digit
_ABBREV_AMBIGUOUS = frozenset((
    "etc", "al", "fig", "figs", "st", "pt", "pts", "hx", "dx", "ddx", "yr", "yrs", "jr", "sr", "no", "nos",
))  # fmt: skip

# sentence ends: '.', '!', '?' (runs of them, optional closing quotes/brackets) before whitespace or the end
_END_RE = re.compile(r"[.!?]+['\")\]]*(?=\s|$)|[.!?](?=[A-Z][a-z])")  # _sentence_spans checks what precedes
_WORD_BEFORE_RE = re.compile(r"(?<![A-Za-z.])([A-Za-z][A-Za-z.]*)$")
_BLANK_LINE_RE = re.compile(r"\n[ \t]*\r?\n\s*")
# a list item at the start of a line: "1.", "2)", "-", "*", "•"
_LINE_ITEM_RE = re.compile(r"\n[ \t]*(?:\d{1,2}[.)]|[-*•·])[ \t]+(?=\S)")
# an inline numbered item: "... disease 2. Stable ..." (accepted when it continues a numbering)
_INLINE_NUMBER_RE = re.compile(r"(\d{1,2})[.)][ \t]+(?=[^\W\d_])")  # after a space or at the start
_LINE_BREAK_RE = re.compile(r"\n[ \t]*(?=[A-Z][a-z])")
_CONTINUES_RE = re.compile(
    r"(?:[,\-/(&]|\b(?:and|or|of|the|a|an|with|without|to|in|on|at|for|by|is|are|was|were|be|no|not|from|than"
    r"|as|into|over|under|left|right|mild|small|large|moderate|severe|possible|likely|including)\b)\s*$",
    re.IGNORECASE,
)
_MARKER_RE = re.compile(r"(?:\d{1,2}[.)]|[-*•·])[ \t]+(?=\S)")
_HAS_WORD_RE = re.compile(r"[^\W\d_]")


@dataclass
class Sentence:
    text: str  # == report.text[start:end]
    start: int
    end: int
    section: str


@dataclass
class Section:
    name: str  # one of SECTION_NAMES
    start: int  # content span (the header itself excluded), stripped of surrounding whitespace
    end: int
    text: str  # == report.text[start:end]


@dataclass
class Report:
    text: str
    sections: list[Section] = field(default_factory=list)
    sentences: list[Sentence] = field(default_factory=list)

    def section(self, name: str) -> str:
        """The text of section ``name`` (several sections of that name joined by blank lines); "" if absent."""
        return "\n\n".join(s.text for s in self.sections if s.name == name.upper())

    @property
    def findings(self) -> str:
        return self.section("FINDINGS")

    @property
    def impression(self) -> str:
        return self.section("IMPRESSION")

    def sentences_in(self, names: tuple[str, ...] | list[str]) -> list[Sentence]:
        """The sentences of the named sections, in text order."""
        wanted = {n.upper() for n in names}
        return [s for s in self.sentences if s.section in wanted]


def parse_report(text: str | None) -> Report:
    """Split a report into sections and sentences.

    Args:
        text: the report; ``None`` or "" give an empty report.

    Returns:
        A :class:`Report` whose sections and sentences carry offsets into ``text``.

    Raises:
        TypeError: ``text`` is neither a string nor None.
    """
    if text is None:
        return Report(text="")
    if not isinstance(text, str):
        raise TypeError(f"a report must be a str or None, got {type(text).__name__}")
    report = Report(text=text)
    for name, start, end in _section_spans(text):
        start, end = _strip(text, start, end)
        if start >= end:
            continue
        report.sections.append(Section(name, start, end, text[start:end]))
        for s, e in _sentence_spans(text, start, end):
            report.sentences.append(Sentence(text[s:e], s, e, name))
    return report


def _section_spans(text: str) -> list[tuple[str, int, int]]:
    headers = []  # (header start, content start, name)
    for m in _HEADER_WORD_RE.finditer(lower_text(text)):
        start = k = m.start()
        while k > 0 and text[k - 1] in " \t" and start - k < 8:
            k -= 1
        line_start = k == 0 or text[k - 1] in "\r\n"
        after_sentence = not line_start and text[k - 1] in ".!?" and 1 <= start - k <= 2
        mark = _HEADER_MARK_RE.match(text, m.end()) if line_start or after_sentence else None
        if mark is None and line_start:
            mark = _HEADER_ALONE_RE.match(text, m.end())
        if mark is not None:
            headers.append((start, mark.end(), _HEADER_NAME[" ".join(m.group().lower().split())]))
    if not headers:
        return [("FINDINGS", 0, len(text))]
    spans = []
    has_findings = any(name == "FINDINGS" for _, _, name in headers)
    if text[: headers[0][0]].strip():
        spans.append(("OTHER" if has_findings else "FINDINGS", 0, headers[0][0]))
    for i, (_, content, name) in enumerate(headers):
        end = headers[i + 1][0] if i + 1 < len(headers) else len(text)
        spans.append((name, content, end))
    return spans


def lower_text(text: str) -> str:
    """``text.lower()`` with the same length, so that offsets stay valid (a character whose lower case is longer,
    such as "İ", is kept as it is)."""
    low = text.lower()
    if len(low) == len(text):
        return low
    return "".join(c if len(c.lower()) != 1 else c.lower() for c in text)


def _strip(text: str, start: int, end: int) -> tuple[int, int]:
    part = text[start:end]
    stripped = part.lstrip()
    if not stripped:
        return start, start
    return start + len(part) - len(stripped), start + len(part.rstrip())


def _sentence_spans(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Sentence spans within ``text[start:end]``, stripped of whitespace and leading list markers."""
    cuts = {start, end}  # positions where a sentence may begin or end
    chunk = text[start:end]
    markers = set()  # end offsets (in chunk) of numbered-list markers such as "2." (not sentence ends)
    previous = 0
    for m in _INLINE_NUMBER_RE.finditer(chunk):
        k = m.start()
        if k > 0 and not chunk[k - 1].isspace():
            continue
        while k > 0 and chunk[k - 1] in " \t":
            k -= 1
        number = int(m.group(1))
        if k == 0 or chunk[k - 1] in ".!?:;\r\n" or number == previous + 1 > 1:
            cuts.add(start + m.start())
            markers.add(m.start() + len(m.group(1)) + 1)
            previous = number
    for m in _END_RE.finditer(chunk):
        k, e = m.start(), m.end()
        if k == 0 or chunk[k - 1].isspace():
            continue  # "? pneumonia", " . "
        if (
            e < len(chunk)
            and not chunk[e].isspace()
            and not (k >= 2 and chunk[k - 2 : k].isalpha() and chunk[k - 2 : k].islower())
        ):
            continue  # "clear.Heart" ends a sentence, "U.S" does not
        if e not in markers and not _is_abbreviation(chunk, k, e):
            cuts.add(start + e)
    for regex in (_BLANK_LINE_RE, _LINE_ITEM_RE):
        for m in regex.finditer(chunk):
            cuts.add(start + m.start())
    for m in _LINE_BREAK_RE.finditer(chunk):
        if not _CONTINUES_RE.search(chunk, max(0, m.start() - 40), m.start()):
            cuts.add(start + m.start())
    spans = []
    bounds = sorted(cuts)
    for s, e in zip(bounds, bounds[1:], strict=False):
        s, e = _strip(text, s, e)
        marker = _MARKER_RE.match(text, s, e)
        if marker:
            s = marker.end()
        if s < e and _HAS_WORD_RE.search(text, s, e):
            spans.append((s, e))
    return spans


def _is_abbreviation(chunk: str, dot: int, after: int) -> bool:
    """Whether the '.' at ``chunk[dot]`` ends an abbreviation (or an initial) rather than a sentence."""
    if chunk[dot] != "." or after - dot != 1:  # "!", "?", "..", ".)" always end a sentence
        return False
    m = _WORD_BEFORE_RE.search(chunk, max(0, dot - 12), dot)
    if not m:
        return False
    word = m.group(1).lower()
    nxt = chunk[after : after + 40].lstrip()[:1]
    if not nxt:
        return False
    if word in _ABBREVIATIONS or "." in word:  # "Dr.", "vs.", "e.g.", "p.o."
        return True
    if word in _ABBREV_AMBIGUOUS or len(word) == 1:  # "etc.", "No. 5", initials
        return nxt.islower() or nxt.isdigit()
    return False
