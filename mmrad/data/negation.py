"""The context of a mention: negation, uncertainty and their scope.

The rules follow the NegEx family (Chapman et al. 2001; its pseudo-negations and scope terminators) and the
CheXpert labeler's idea of uncertainty as its own class, written here from scratch in plain regular expressions.

- :data:`CUES` lists the context words. A cue is a negation (``neg``) or uncertainty (``unc``) trigger with a scope
  before (``pre``: "no", "possible") or after (``post``: "has resolved", "cannot be excluded") the mention, a
  pseudo-trigger (``pseudo``: "no change in", "not only"; the mention stays positive), a clause end (``stop``:
  "but", "however", ";", "there is", positive predicates such as "is seen"), a copula (``copula``: "is", "are",
  which ends the forward scope of a pre-trigger only) or an alternative (``alt``: "or", "versus", which makes
  the two mentions around it uncertain). All cues are read in one pass (:func:`find_cues`).
- :func:`resolve` decides the value of one mention from the cues of its sentence: the nearest trigger in scope
  wins; a scope runs through lists ("no effusion, pneumothorax or edema") and ends at a clause end, at a trigger
  with the other direction, 250 characters away, and (for subject-predicate mentions such as "heart ...
  enlarged") at a comma. A negated uncertainty ("no findings to suggest pneumonia") is a negation; double
  negations that mean uncertainty ("cannot exclude", "not ruled out") are cues of their own.
- Uncertainty cues are speculative ("may represent", "possible", "suggestive of") unless listed in :data:`HEDGES`
  ("probable", "likely", "borderline"), which qualify a finding the report names.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from typing import NamedTuple

from mmrad.data.phrases import compile_phrases, phrase_tokens

POS, NEG, UNC = 1.0, 0.0, -1.0
MAX_SCOPE = 250  # characters between a trigger and a mention beyond which the trigger never applies

# effect -> direction -> phrases. "both" triggers apply before and after the mention.
CUES: dict[str, dict[str, list[str]]] = {
    "neg": {
        "pre": [
            "no", "not", "without", "negative for", "free of", "clear of", "absence of", "absent", "no evidence of",
            "no evidence for", "no evidence to", "no signs of", "no sign of", "no findings of",
            "no radiographic evidence of", "no radiographic evidence for", "without evidence of", "no convincing",
            "lack of", "lacks", "rather than", "instead of", "resolution of", "interval resolution of",
            "near resolution of", "removal of",
            "nor", "neither", "never", "none", "nothing", "no longer", "rules out", "ruled out",
            "exclude", "excludes", "excluding", "denies", "resolved", "no definite", "no definitive", "no new",
            "no visible", "no visualized", "no identifiable", "no demonstrable", "do not demonstrate",
            "does not demonstrate", "did not demonstrate", "do not show", "does not show", "did not show",
            "do not reveal", "does not reveal", "not demonstrate", "not show", "not reveal", "without any",
        ],
        "post": [
            "not seen", "not identified", "not present", "not visualized", "not appreciated", "not evident",
            "not demonstrated", "not noted", "not detected", "not visible", "not apparent", "not observed",
            "not clearly seen", "not definitely seen", "not shown", "no longer seen",
            "no longer present", "no longer visualized", "no longer identified", "no longer evident",
            "no longer apparent", "no longer demonstrated", "no longer noted", "no longer visible",
            "has resolved", "have resolved", "had resolved", "has cleared", "have cleared", "cleared",
            "has been removed", "have been removed", "removed", "was removed", "were removed", "absent",
            "is absent", "are absent", "excluded", "ruled out", "resolved", "has disappeared", "disappeared",
            "is negative", "are negative", "negative", "gone", "has been withdrawn", "withdrawn",
        ],
    },
    "unc": {
        "pre": [
            "possible", "possibly", "probable", "probably", "likely", "most likely", "more likely", "less likely",
            "may represent", "may reflect", "may be", "may indicate", "might represent", "could represent",
            "could reflect", "could be", "can represent", "likely represents", "likely reflects", "may have",
            "suspicious for", "suspicious of", "suspect", "suspected", "suspicion of", "suspicion for", "concern for",
            "concerning for", "concerning", "worrisome for", "worrisome", "questionable", "question of", "question",
            "questioned", "?", "suggest", "suggests", "suggested", "suggesting", "suggestive of", "suggestion of",
            "to suggest", "to indicate", "indicative of", "that would suggest", "which would suggest",
            "to account for", "cannot exclude", "can not exclude", "can't exclude", "cannot rule out",
            "can not rule out", "can't rule out", "not exclude", "does not exclude", "do not exclude",
            "differential", "differential diagnosis", "differential considerations", "ddx", "consider",
            "considered", "considerations include", "r/o", "rule out", "evaluate for", "to evaluate for",
            "to exclude", "borderline", "equivocal", "indeterminate", "uncertain", "unclear", "not certain whether",
            "not certain if", "not clear whether", "not clear if", "not sure whether", "unclear whether", "unclear if",
            "uncertain whether", "uncertain if", "question whether", "question if", "presumed", "presumably",
            "presumptive", "perhaps", "apparent", "vague", "may", "might", "could", "either",
            "raises the possibility of", "correlate for", "correlate clinically for", "clinical correlation for",
            "maybe", "most suggestive of", "strongly suggestive of", "highly suggestive of", "favor", "favoring",
            "favored", "may be due to", "may be secondary to", "may be related to", "could be due to",
            "could be secondary to", "could be related to", "might be due to", "possibly due to",
            "possibly related to", "possibly secondary to", "likely due to", "likely related to",
            "likely secondary to", "probably due to", "probably related to",
        ],
        "post": [
            "cannot be excluded", "can not be excluded", "can't be excluded", "not excluded", "not ruled out",
            "cannot be ruled out", "can not be ruled out", "not entirely excluded", "not completely excluded",
            "not be excluded", "not be ruled out", "is suspected", "are suspected", "suspected", "is possible",
            "are possible", "is questioned", "is likely", "are likely", "is probable", "is not excluded",
            "is questionable", "not well seen", "not well visualized", "is not well seen", "is uncertain",
            "is not certain", "would be difficult to exclude", "difficult to exclude", "difficult to entirely exclude",
            "is considered", "is a possibility", "a possibility", "is a consideration", "?", "could be", "may be",
            "might be", "may", "might", "could", "likely", "most likely", "probable", "possible",
        ],
    },
    "pseudo": {
        "pre": [
            "no change in", "no change of", "no significant change in", "no interval change in",
            "no interval change of",
            "no significant interval change in", "no significant interval change of", "no appreciable change in",
            "no substantial change in", "no increase in", "no significant increase in", "no decrease in",
            "without change in", "without change of", "without significant change in", "without significant change of",
            "without interval change in", "without interval change of", "without significant interval change in",
            "without significant interval change of", "not only", "no worsening of", "not necessarily",
            "gram negative", "not drain", "not cause", "nearly resolved", "almost resolved",
            "partially resolved", "incompletely resolved", "not completely resolved", "not fully resolved",
            "resolving", "near complete resolution of", "partial resolution of", "incomplete resolution of",
            "no change", "no significant change", "no interval change",
        ],
        "post": [
            "has not resolved", "have not resolved", "not resolved", "not completely resolved",
            "not fully resolved", "has not cleared", "not cleared", "partially resolved", "nearly resolved",
            "almost resolved", "incompletely resolved", "is resolving", "are resolving", "resolving",
            "not changed", "has not changed", "no change", "without change", "not been removed",
            "not significantly changed",
        ],
    },
    "stop": {
        "both": [
            ";", ":", "but", "however", "although", "though", "while", "whereas", "yet", "except", "except for",
            "aside from", "apart from", "other than", "with the exception of", "otherwise", "nevertheless",
            "which", "who", "because", "since", "given", "as well as", "also", "additionally", "in addition",
            "there is", "there are", "there was", "there were", "there has been", "there have been",
            "show", "shows", "showing", "demonstrate", "demonstrates", "reveal", "reveals", "revealed",
            "persists", "persist", "remains", "remain", "again seen", "again noted", "is seen", "are seen",
            "is noted", "are noted", "is present", "are present", "is identified", "are identified",
            "representing", "represents", "represent", "reflecting", "reflects", "(", ")",
        ],
    },
    # past participles and adjectives that end a clause as predicates ("no effusion seen, ...") but not when they
    # modify the next word ("no visible pneumothorax"); find_cues keeps them only before a function word or a mark
    "pred": {
        "both": [
            "seen", "noted", "present", "identified", "demonstrated", "visualized", "visible", "evident",
            "observed", "appreciated", "detected", "shown",
        ],
    },
    # phrases read as one unit so that their words are not cues ("previously seen effusion")
    "skip": {
        "both": [
            "previously seen", "previously noted", "previously demonstrated", "previously described",
            "previously identified", "previously visualized", "previously present", "seen previously",
            "noted previously",
        ],
    },
    "copula": {"both": ["is", "are", "was", "were", "be", "been", "being", "has", "have", "had", "appear",
                        "appears", "appeared", "seem", "seems", "measures", "measuring"]},
    "alt": {"both": ["or", "versus", "vs", "vs.", "and/or", "or possibly"]},
}  # fmt: skip
# words after which a "pred" cue still ends a clause
_FUNCTION_WORDS = frozenset((
    "in", "at", "on", "within", "along", "over", "and", "or", "but", "with", "without", "bilaterally", "again",
    "previously", "to", "by", "from", "the", "throughout", "involving", "near", "of", "as", "since", "here", "there",
    "now", "today", "currently", "anteriorly", "posteriorly", "laterally", "medially", "inferiorly", "superiorly",
    "centrally", "peripherally",
))  # fmt: skip


# uncertainty cues that qualify the phrase before them ("no opacity to suggest pneumonia"): a negation of that
# phrase, lists included, negates them too
DEPENDENT = frozenset(
    tuple(p.split())
    for p in (
        "suggest", "suggests", "suggesting", "suggestive of", "to suggest", "to indicate", "indicative of",
        "that would suggest", "which would suggest", "suspicious for", "suspicious of", "concerning for",
        "worrisome for", "concern for", "to account for",
    )
)  # fmt: skip
# uncertainty cues that introduce a list of alternatives: their scope runs to the end of the sentence (or ';')
WIDE = frozenset(
    tuple(p.split())
    for p in (
        "differential", "differential diagnosis", "differential considerations", "ddx", "considerations include",
        "differential diagnosis includes", "differential includes",
    )
)  # fmt: skip


# uncertainty cues that qualify the certainty of a named finding rather than propose an interpretation; every other
# uncertainty cue is speculative ("may represent", "possible", "suggestive of", "cannot exclude")
HEDGES = frozenset(
    tuple(p.split())
    for p in (
        "probable", "probably", "likely", "most likely", "more likely", "less likely", "likely represents",
        "likely reflects", "is likely", "are likely", "is probable", "borderline", "questionable", "is questionable",
        "question", "question of", "questioned", "is questioned", "?", "presumed", "presumably", "presumptive",
        "apparent", "vague", "equivocal", "indeterminate", "either", "most suggestive of", "strongly suggestive of",
        "highly suggestive of", "favor", "favoring", "favored", "likely due to", "likely related to",
        "likely secondary to", "probably due to", "probably related to",
    )
)  # fmt: skip


class Cue(NamedTuple):  # a tuple: built for every cue of every sentence, so it must be cheap
    start: int
    end: int
    effect: str  # neg | unc | pseudo | stop | copula | alt
    pre: bool  # applies to mentions after it
    post: bool  # applies to mentions before it
    dependent: bool = False  # an uncertainty cue that a negation of the phrase before it negates (DEPENDENT)
    wide: bool = False  # an uncertainty cue whose scope is the rest of the sentence (WIDE)
    speculative: bool = False  # an uncertainty cue that proposes an interpretation (not in HEDGES)


def _build_cue_regex() -> tuple[re.Pattern, dict[str, tuple]]:
    merged: dict[tuple[str, ...], tuple[str, bool, bool]] = {}
    for effect, by_direction in CUES.items():
        for direction, phrases in by_direction.items():
            for phrase in phrases:
                words = phrase_tokens(phrase)
                old = merged.get(words)
                pre = direction in ("pre", "both") or bool(old and old[1])
                post = direction in ("post", "both") or bool(old and old[2])
                if old and old[0] != effect:
                    raise ValueError(f"cue {phrase!r} has two effects: {old[0]} and {effect}")
                merged[words] = (effect, pre, post)
    groups = {words: f"c{i}" for i, words in enumerate(merged)}
    table = {
        groups[words]: (*value, words in DEPENDENT, words in WIDE, value[0] == "unc" and words not in HEDGES)
        for words, value in merged.items()
    }
    return compile_phrases(groups, plural=False), table


_CUE_RE, _CUE_TABLE = _build_cue_regex()


def find_cues(text: str, start: int, end: int) -> list[Cue]:
    """The cues in ``text[start:end]``, in order, with offsets into ``text`` (lower-cased, see ``lower_text``)."""
    table = _CUE_TABLE
    out: list[Cue] = []
    for m in _CUE_RE.finditer(text, start, end):
        effect, pre, post, dependent, wide, speculative = table[m.lastgroup]
        if effect == "skip":
            continue
        if effect == "pred":
            nxt = _NEXT_WORD_RE.match(text, m.end(), end)
            if nxt and nxt.group(1).lower() not in _FUNCTION_WORDS:
                continue  # attributive: "visible pneumothorax", "identified mass"
            effect = "stop"
        if effect in ("stop", "copula") and out and _governs_clause(text, out[-1], m.start()):
            continue  # "not clear whether there is ...": the trigger governs the clause that follows
        out.append(Cue(m.start(), m.end(), effect, pre, post, dependent, wide, speculative))
    return out


_COMPLEMENTIZER = re.compile(r"\b(?:whether|if|that)$")


def _governs_clause(text: str, cue: Cue, next_start: int) -> bool:
    """A trigger ending in "whether"/"if"/"that" right before ``next_start`` (its scope is the next clause)."""
    if cue.effect not in ("neg", "unc") or not cue.pre or text[cue.end : next_start].strip():
        return False
    return _COMPLEMENTIZER.search(text, cue.start, cue.end) is not None


_NEXT_WORD_RE = re.compile(r"[ \t\r\n]*([^\W\d_]+)")


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
