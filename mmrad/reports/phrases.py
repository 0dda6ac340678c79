"""Many phrases, one regular expression: how the labeler finds mentions and cues in one pass over a sentence.

A phrase is a list of words matched on word boundaries in lower-cased text (:func:`mmrad.reports.sections.lower_text`):
a space also matches a hyphen ("air space" matches "air-space"), a hyphen inside a word may also be a space or
nothing, the last word may take a plural "s"/"es" (``plural=True``), and the word ``...`` stands for a gap of up to
four words inside one clause ("heart ... enlarged" matches "heart size is mildly enlarged", not "heart normal and
aorta enlarged"). Phrases form a trie of words, and the words at each step a trie of characters, so that the regex
engine rejects a position after a character or two instead of trying every phrase in turn.
"""

from __future__ import annotations

import re

GAP = "..."
_SEP = r"(?:\s*-\s*|\s+)"
_GAP_STOP = r"(?:and|but|or|nor|versus|vs|with|without|however|although|though|which|while|whereas)\b"
_GAP_RE = rf"(?:\s+(?!{_GAP_STOP})[^\s.,;:!?()\[\]]+){{0,4}}?\s+"
_PLURAL = r"(?:e?s)?"


def phrase_tokens(phrase: str) -> tuple[str, ...]:
    """The words of a phrase (lower case); ``...`` is a gap."""
    return tuple(phrase.lower().split())


def compile_phrases(phrases: dict[tuple[str, ...], str], plural: bool = True) -> re.Pattern:
    """One regex matching any of ``phrases`` (lower-case words -> group name) in lower-cased text, longest first.

    The regex runs on :func:`mmrad.reports.sections.lower_text` of the text (case-sensitive matching is two to three
    times faster than ``re.IGNORECASE``, and ``lower_text`` keeps every offset).

    The words form a trie, and the words that share a position form a trie of characters, so that the regex engine
    rejects a position after a character or two instead of trying every phrase in turn. A match's ``lastgroup`` is
    the group name of the phrase that matched (an empty group placed at its end).
    """
    trie: dict = {}
    for words, group in phrases.items():
        if not words or words[0] == GAP or words[-1] == GAP:
            raise ValueError(f"a phrase cannot be empty or start or end with {GAP!r}: {' '.join(words)!r}")
        node = trie
        for w in words:
            node = node.setdefault(w, {})
        node[None] = group
    first = [(w, _continuation(trie[w], w, plural)) for w in trie if w is not None]
    parts = []
    wordy = [item for item in first if item[0][0].isalnum()]
    if wordy:
        parts.append(r"\b" + _chars(wordy))
    if len(wordy) < len(first):
        parts.append(_chars([item for item in first if not item[0][0].isalnum()]))
    return re.compile("|".join(parts))


def _continuation(node: dict, word: str, plural: bool) -> str:
    options = []
    children = [(w, _continuation(node[w], w, plural)) for w in node if w not in (None, GAP)]
    if children:
        options.append(_SEP + _chars(children))
    if GAP in node:
        gap = node[GAP]
        options.append(_GAP_RE + _chars([(w, _continuation(gap[w], w, plural)) for w in gap if w is not None]))
    if None in node:
        tail = _PLURAL if plural and word[-1].isalpha() else ""
        if word[-1].isalnum():
            tail += r"\b"
        options.append(f"{tail}(?P<{node[None]}>)")
    return options[0] if len(options) == 1 else "(?:" + "|".join(options) + ")"


def _chars(items: list[tuple[str, str]]) -> str:
    """A regex for words followed by their own continuation regexes, as a trie of characters."""
    trie: dict = {}
    for word, tail in items:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[None] = tail
    return _emit(trie)


def _emit(node: dict) -> str:
    options = []
    for ch in sorted(k for k in node if k is not None):
        head = r"[\s-]?" if ch == "-" else re.escape(ch)
        options.append(head + _emit(node[ch]))
    if None in node:  # a word that ends here; after the longer words that continue it
        options.append(node[None])
    return options[0] if len(options) == 1 else "(?:" + "|".join(options) + ")"
