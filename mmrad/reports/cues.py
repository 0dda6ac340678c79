"""The context words of a sentence: negation, uncertainty, pseudo-trigger and clause-end cues, found in one pass.

The lexicon follows the NegEx family (Chapman et al. 2001; its pseudo-negations and scope terminators) and the
CheXpert labeler's idea of uncertainty as its own class, written here from scratch in plain regular expressions.
:mod:`mmrad.reports.negation` decides a mention's value from the cues this module finds.

- :data:`CUES` lists the context words. A cue is a negation (``neg``) or uncertainty (``unc``) trigger with a scope
  before (``pre``: "no", "possible") or after (``post``: "has resolved", "cannot be excluded") the mention, a
  pseudo-trigger (``pseudo``: "no change in", "not only"; the mention stays positive), a clause end (``stop``:
  "but", "however", ";", "there is", positive predicates such as "is seen"), a copula (``copula``: "is", "are",
  which ends the forward scope of a pre-trigger only) or an alternative (``alt``: "or", "versus", which makes
  the two mentions around it uncertain). All cues are read in one pass (:func:`find_cues`).
- Uncertainty cues are speculative ("may represent", "possible", "suggestive of") unless listed in :data:`HEDGES`
  ("probable", "likely", "borderline"), which qualify a finding the report names.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from mmrad.reports.phrases import compile_phrases, phrase_tokens

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
