"""The context of a mention: negation, uncertainty and their scope.

The rules follow the NegEx family (Chapman et al. 2001; its pseudo-negations and scope terminators) and the
CheXpert labeler's idea of uncertainty as its own class, written here from scratch in plain regular expressions.

- The cues (negation, uncertainty, pseudo-triggers, clause ends, copulas, alternatives) and their lexicon are in
  :mod:`mmrad.reports.cues` (:func:`~mmrad.reports.cues.find_cues` reads them in one pass).
- :func:`resolve` decides the value of one mention from the cues of its sentence: the nearest trigger in scope
  wins; a scope runs through lists ("no effusion, pneumothorax or edema") and ends at a clause end, at a trigger
  with the other direction, 250 characters away, and (for subject-predicate mentions such as "heart ...
  enlarged") at a comma. A negated uncertainty ("no findings to suggest pneumonia") is a negation; double
  negations that mean uncertainty ("cannot exclude", "not ruled out") are cues of their own.
"""

from __future__ import annotations

import re
from bisect import bisect_left

from mmrad.reports.cues import Cue

POS, NEG, UNC = 1.0, 0.0, -1.0
MAX_SCOPE = 250  # characters between a trigger and a mention beyond which the trigger never applies


_WORD_RE = re.compile(r"[^\W_]+")


class Context:
    """The cues and mentions of one sentence, indexed so that deciding a mention looks only at its neighbourhood."""

    def __init__(self, text: str, start: int, end: int, cues: list[Cue], mentions: list[tuple[int, int]]):
        self.text = text
        self.cues = cues
        self.cue_starts = [c.start for c in cues]
        self.mention_starts = sorted(s for s, _ in mentions)
        self.wide = [k for k, c in enumerate(cues) if c.wide]
        self.span = (start, end)
        self.commas: list[int] | None = None  # found when first needed

    def comma_between(self, a: int, b: int) -> bool:
        if self.commas is None:
            self.commas = [m.start() for m in _COMMA_RE.finditer(self.text, *self.span)]
        k = bisect_left(self.commas, a)
        return k < len(self.commas) and self.commas[k] < b

    def mention_between(self, a: int, b: int) -> bool:
        k = bisect_left(self.mention_starts, a)
        return k < len(self.mention_starts) and self.mention_starts[k] < b

    def next_mention(self, a: int) -> int | None:
        k = bisect_left(self.mention_starts, a)
        return self.mention_starts[k] if k < len(self.mention_starts) else None


_COMMA_RE = re.compile(",")


def resolve(ctx: Context, start: int, end: int, clausal: bool) -> tuple[float, Cue | None]:
    """The value (POS, NEG or UNC) of the mention at ``ctx.text[start:end]`` and the cue that decided it (or None).

    Args:
        ctx: the sentence's cues and mentions.
        start, end: the mention, as offsets into the text.
        clausal: the mention is a subject-predicate phrase ("heart ... enlarged"); a comma ends its backward scope.
    """
    cues = ctx.cues
    first = bisect_left(ctx.cue_starts, start)
    k = first
    while k < len(cues) and cues[k].start < end:  # a trigger inside the mention ("heart is not enlarged")
        cue = cues[k]
        if cue.end <= end and cue.effect in ("neg", "unc"):
            return (NEG if cue.effect == "neg" else UNC), cue
        k += 1
    before = after = pseudo = None
    i = first - 1
    while i >= 0 and cues[i].end > start:
        i -= 1
    while i >= 0:
        cue = cues[i]
        if start - cue.end > MAX_SCOPE:
            break
        if cue.effect in ("stop", "copula") or (clausal and ctx.comma_between(cue.end, start)):
            before = _wide(ctx, i, start)
            break
        if cue.effect == "pseudo":  # "resolving pneumonia" stays positive, "could be resolving pneumonia" not
            if not cue.pre:
                break
            pseudo = pseudo or cue
        elif cue.effect in ("neg", "unc"):
            if cue.pre and not (pseudo and cue.effect == "neg"):  # "no ..., no change in effusion" stays positive
                before = cue
                if cue.effect == "unc" and _negated(ctx, i):
                    before = Cue(cue.start, cue.end, "neg", True, False)
            break
        i -= 1
    j = k  # the first cue starting at or after the mention's end
    while j < len(cues):
        cue = cues[j]
        if cue.effect == "stop" or cue.start - end > MAX_SCOPE:
            break
        if cue.effect in ("neg", "unc", "pseudo"):
            if cue.post and not (cue.pre and _leads_to_mention(ctx, cue)):
                after = cue
            break
        j += 1
    decided = [c for c in (before, after) if c is not None and c.effect != "pseudo"]
    for effect, value in (("unc", UNC), ("neg", NEG)):
        for cue in decided:
            if cue.effect == effect:
                return value, cue
    if before is None and after is None:
        alt = _alternative(ctx, start, end, first, k)
        if alt is not None:
            return UNC, alt
    return POS, pseudo or after


def _wide(ctx: Context, i: int, start: int) -> Cue | None:
    """A list-introducing uncertainty cue before ``cues[i]`` whose scope reaches ``start`` ("differential ... is")."""
    k = bisect_left(ctx.wide, i) - 1
    if k < 0:
        return None
    cue = ctx.cues[ctx.wide[k]]
    return None if any(ch in ctx.text[cue.end : start] for ch in ";:") else cue


def _negated(ctx: Context, i: int) -> bool:
    """Whether the uncertainty trigger ``cues[i]`` is itself negated ("no findings to suggest", "not suspicious")."""
    text, cues = ctx.text, ctx.cues
    cue = cues[i]
    for k in range(i - 1, max(-1, i - 20), -1):
        prev = cues[k]
        if prev.effect == "neg" and prev.pre:
            between = text[prev.end : cue.start]
            if cue.dependent:
                return ";" not in between and len(_WORD_RE.findall(between)) <= 12
            if any(ch in between for ch in ",;.:") or len(_WORD_RE.findall(between)) > 3:
                return False
            return not ctx.mention_between(prev.end, cue.start)
        if prev.effect != "alt" and not (cue.dependent and prev.dependent):  # "no X to suggest A or Y to suggest B"
            return False
    return False


def _leads_to_mention(ctx: Context, cue: Cue) -> bool:
    """Whether a two-way trigger is directly followed by a mention (then it belongs to that one)."""
    s = ctx.next_mention(cue.end)
    if s is None or s - cue.end > 80:
        return False
    between = ctx.text[cue.end : s]
    return not any(ch in between for ch in ",;.:") and len(_WORD_RE.findall(between)) <= 3


def _alternative(ctx: Context, start: int, end: int, first: int, after: int) -> Cue | None:
    """An "or"/"versus" right next to the mention ("atelectasis or scarring", "effusion versus thickening").

    ``first`` and ``after`` index the first cue starting at or after ``start`` and ``end``.
    """
    text, cues = ctx.text, ctx.cues
    nearby = [cues[k] for k in range(after, min(after + 4, len(cues)))]
    nearby += [cues[k] for k in range(first - 1, max(first - 5, -1), -1)]
    for cue in nearby:
        if cue.effect != "alt":
            continue
        if cue.start >= end:
            near, far = text[end : cue.start], text[cue.end : cue.end + 40]
        elif cue.end <= start:
            near, far = text[cue.end : start], text[max(0, cue.start - 40) : cue.start]
        else:
            continue
        if len(near) > 80:
            continue
        if not any(ch in near for ch in ",;.:") and len(_WORD_RE.findall(near)) <= 3 and _WORD_RE.search(far):
            return cue
    return None
