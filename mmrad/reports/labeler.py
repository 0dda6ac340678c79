"""A fast rule-based report labeler: mentions, negation and uncertainty -> 1 / 0 / -1 / NaN per finding.

Pure Python and regular expressions; no parser, no Java. The steps, per sentence of the labeled sections:

1. **Mentions.** All phrases of the vocabulary (``mentions``, and the optional ``uncertain_mentions`` and
   ``negative_mentions`` of each finding) and its ``exclusions`` are compiled into one regex, read in one pass.
   A match of an exclusion ("pericardial effusion") hides the mentions inside it for that finding only.
2. **Context.** The cues of the sentence (negation, uncertainty, pseudo-negation, clause ends; see
   :mod:`mmrad.reports.cues` and :mod:`mmrad.reports.negation`) give each mention a value: 1 positive, 0
   negative, -1 uncertain.
   An ``uncertain_mentions`` phrase ("blunting of the costophrenic angle" for an effusion) is at most -1;
   a ``negative_mentions`` phrase ("heart size is normal") says 0 when it is affirmed.
3. **Aggregation** over all mentions of a finding, as in CheXpert: positive if any mention is positive, else
   uncertain if any is uncertain, else negative if any is negative, else NaN (not mentioned). A finding with
   ``rule: no_finding`` (CheXpert's No Finding) is 1 when no other finding except those in its ``ignore`` list is
   positive or uncertain, else NaN.

Which sections are read: FINDINGS and IMPRESSION when the report has either, else every section except
INDICATION, COMPARISON and TECHNIQUE ("r/o pneumonia" in an indication is a question, not a finding).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmrad.config.labels import Vocabulary, load_vocabulary
from mmrad.reports.cues import find_cues
from mmrad.reports.negation import NEG, POS, UNC, Context, resolve
from mmrad.reports.phrases import GAP, compile_phrases, phrase_tokens
from mmrad.reports.sections import lower_text, parse_report

logger = logging.getLogger(__name__)

NAN = float("nan")
DEFAULT_SECTIONS = ("FINDINGS", "IMPRESSION")
UNLABELED_SECTIONS = ("INDICATION", "COMPARISON", "TECHNIQUE")
SPECULATION = ("uncertain", "absent")
_KINDS = ("mentions", "uncertain_mentions", "negative_mentions", "exclusions")
_RANK = {POS: 3, UNC: 2, NEG: 1}  # aggregation: positive > uncertain > negative


@dataclass
class Evidence:
    finding: str
    value: float  # 1.0 / 0.0 / -1.0
    sentence: str
    start: int  # the sentence, as offsets into the labeled text
    end: int
    mention_start: int  # the mention, as offsets into the labeled text
    mention_end: int
    mention: str = ""  # the mention's text
    cue: str | None = None  # the trigger that decided the value ("no", "may represent", ...), if any


@dataclass
class LabelResult:
    labels: dict[str, float]  # finding -> 1.0 / 0.0 / -1.0 / nan, in vocabulary order
    evidence: dict[str, list[Evidence]] = field(default_factory=dict)  # finding -> the mentions that decided it

    def as_array(self, names: list[str] | None = None) -> np.ndarray:
        """The labels as a float32 vector (NaN = not mentioned), in vocabulary order or in the order of ``names``."""
        names = list(self.labels) if names is None else names
        unknown = [n for n in names if n not in self.labels]
        if unknown:
            raise KeyError(f"unknown finding(s) {unknown}; known: {list(self.labels)}")
        return np.array([self.labels[n] for n in names], dtype=np.float32)


@dataclass(frozen=True)
class _Entry:
    finding: int  # index into label_names
    kind: str  # one of _KINDS


class ReportLabeler:
    """Label free-text reports with a finding vocabulary.

    Args:
        vocabulary: ``"chexpert"`` (default), ``"nih14"``, a YAML file, or a loaded
            :class:`~mmrad.config.labels.Vocabulary`.
        sections: the sections labeled when the report has any of them; otherwise every section but INDICATION,
            COMPARISON and TECHNIQUE is labeled.
        speculation: the label of a finding that is only proposed as an interpretation ("may represent
            pneumonia", "possible effusion", "suggestive of emphysema", "cannot exclude a pneumothorax"):
            ``"uncertain"`` (-1, the CheXpert convention) or ``"absent"`` (0, the convention of the OpenI gold
            labels, where such hedged findings are not indexed); None (default) takes the vocabulary's convention
            (``speculation:`` in its YAML: ``uncertain`` for chexpert, ``absent`` for nih14). Hedges that qualify
            a named finding ("probable", "likely", "borderline") and alternatives ("atelectasis or scarring") stay
            -1 either way.
    """

    def __init__(
        self,
        vocabulary: str | Path | Vocabulary = "chexpert",
        sections: Iterable[str] = DEFAULT_SECTIONS,
        speculation: str | None = None,
    ):
        self.vocabulary = vocabulary if isinstance(vocabulary, Vocabulary) else load_vocabulary(vocabulary)
        speculation = speculation or self.vocabulary.speculation
        if speculation not in SPECULATION:
            raise ValueError(f"speculation must be one of {SPECULATION}, got {speculation!r}")
        self.sections = tuple(s.upper() for s in sections)
        self.speculation = speculation
        self.label_names: list[str] = self.vocabulary.names
        self._rules: dict[int, list[int]] = {}  # no_finding finding -> findings it looks at
        phrases: dict[tuple[str, ...], list[_Entry]] = {}
        for index, (name, finding) in enumerate(self.vocabulary.findings.items()):
            lists = {"mentions": finding.mentions, "exclusions": finding.exclusions}
            for kind in ("uncertain_mentions", "negative_mentions"):
                lists[kind] = _string_list(finding.extra.get(kind, []), f"{name}.{kind}")
            for kind, items in lists.items():
                for phrase in items:
                    words = phrase_tokens(phrase)
                    if words:
                        phrases.setdefault(words, []).append(_Entry(index, kind))
            rule = finding.extra.get("rule")
            if rule == "no_finding":
                ignore = set(_string_list(finding.extra.get("ignore", []), f"{name}.ignore"))
                unknown = ignore - set(self.label_names)
                if unknown:
                    raise ValueError(f"vocabulary {self.vocabulary.name!r}: {name}.ignore names unknown {unknown}")
                self._rules[index] = [i for i, n in enumerate(self.label_names) if n not in ignore and i != index]
            elif rule is not None:
                raise ValueError(f"vocabulary {self.vocabulary.name!r}: {name}.rule {rule!r} is not 'no_finding'")
        groups = {words: f"p{i}" for i, words in enumerate(phrases)}
        # group -> (the entries it names, the findings it excludes, whether it is a subject-predicate phrase)
        self._groups: dict[str, tuple[list[_Entry], frozenset[int], bool]] = {}
        for words, group in groups.items():
            excluded = frozenset(e.finding for e in phrases[words] if e.kind == "exclusions")
            kept = [e for e in phrases[words] if e.kind != "exclusions" and e.finding not in excluded]
            self._groups[group] = (kept, excluded, GAP in words)
        self._regex = compile_phrases(groups)
        mention_groups = {w: g for w, g in groups.items() if any(e.kind != "exclusions" for e in phrases[w])}
        self._mention_regex = compile_phrases(mention_groups) if mention_groups else None

    def __repr__(self) -> str:
        return (
            f"ReportLabeler(vocabulary={self.vocabulary.name!r}, findings={len(self.label_names)}, "
            f"speculation={self.speculation!r})"
        )

    # ------------------------------------------------------------------------------------------------------------

    def label(self, text: str | None) -> LabelResult:
        """Label one report (sections are parsed) or a single sentence.

        Args:
            text: the report; None or "" give all NaN.

        Returns:
            A :class:`LabelResult` whose evidence offsets index ``text``.

        Raises:
            TypeError: ``text`` is neither a string nor None.
        """
        report = parse_report(text)
        names = self.label_names
        best: list[float] = [NAN] * len(names)
        evidence: list[list[Evidence]] = [[] for _ in names]
        wanted = self.sections if any(s.name in self.sections for s in report.sections) else None
        sentences = [
            s
            for s in report.sentences
            if (s.section in wanted if wanted is not None else s.section not in UNLABELED_SECTIONS)
        ]
        text = report.text
        low = lower_text(text) if sentences else text  # the regexes read lower-cased text; offsets are the same
        speculation_absent = self.speculation == "absent"
        for sentence in sentences:
            hits = self._mentions(low, sentence.start, sentence.end)
            if not hits:
                continue
            cues = find_cues(low, sentence.start, sentence.end)
            ctx = Context(low, sentence.start, sentence.end, cues, [(s, e) for s, e, _, _ in hits])
            for start, end, entries, clausal in hits:
                value, cue = resolve(ctx, start, end, clausal)
                if value == UNC and speculation_absent and cue is not None and cue.speculative:
                    value = NEG
                for entry in entries:
                    v = _value(entry.kind, value)
                    if v is None:
                        continue
                    i = entry.finding
                    old = best[i]
                    if old != old or _RANK[v] > _RANK[old]:  # NaN or a weaker value
                        best[i] = v
                        evidence[i] = []
                    if v == best[i]:
                        evidence[i].append(
                            Evidence(
                                names[i], v, sentence.text, sentence.start, sentence.end, start, end,
                                text[start:end], text[cue.start : cue.end] if cue is not None else None,
                            )
                        )  # fmt: skip
        if sentences:
            for i, looked_at in self._rules.items():
                if not any(best[j] in (POS, UNC) for j in looked_at):
                    best[i], evidence[i] = POS, []
        return LabelResult(dict(zip(names, best, strict=True)), dict(zip(names, evidence, strict=True)))

    def label_many(
        self,
        texts: Iterable[str | None],
        *,
        num_workers: int = 1,
        progress: bool = False,
        chunksize: int = 256,
        evidence: bool = True,
    ) -> list[LabelResult]:
        """Label many reports, in order.

        Args:
            texts: the reports (None or "" give all NaN).
            num_workers: processes labeling in parallel (``chunksize`` reports a task); 1 labels in this process.
            progress: show a progress bar (tqdm, on stderr).
            evidence: keep the evidence; ``False`` returns empty evidence lists, which makes workers cheaper.
        """
        return list(
            self.label_iter(texts, num_workers=num_workers, progress=progress, chunksize=chunksize, evidence=evidence)
        )

    def label_iter(
        self,
        texts: Iterable[str | None],
        *,
        num_workers: int = 1,
        progress: bool = False,
        chunksize: int = 256,
        evidence: bool = True,
    ) -> Iterator[LabelResult]:
        """Like :meth:`label_many`, but yields the results in order as they come: a caller that keeps only what it
        needs of each result (``as_array``) holds a few chunks of results at a time instead of one per report.

        The worker processes (``num_workers > 1``) live until the iterator is exhausted or closed.
        """
        texts = list(texts)
        bar = _progress_bar(len(texts), progress)
        try:
            if num_workers <= 1 or len(texts) < 2 * chunksize:
                for text in texts:
                    result = self.label(text)
                    if not evidence:
                        result.evidence = {name: [] for name in self.label_names}
                    if bar is not None:
                        bar.update(1)
                    yield result
            else:
                yield from self._label_in_workers(texts, num_workers, chunksize, evidence, bar)
        finally:
            if bar is not None:
                bar.close()

    def _label_in_workers(self, texts: list, num_workers: int, chunksize: int, evidence: bool, bar):
        import multiprocessing as mp

        global _WORKER
        chunks = [texts[i : i + chunksize] for i in range(0, len(texts), chunksize)]
        if "fork" in mp.get_all_start_methods():  # workers inherit this labeler: no pickling, no recompiling
            ctx, init, initargs = mp.get_context("fork"), None, ()
            _WORKER = self
        else:
            ctx, init, initargs = (
                mp.get_context(),
                _init_worker,
                (self.vocabulary, self.sections, self.speculation),
            )
        try:
            with ctx.Pool(num_workers, initializer=init, initargs=initargs) as pool:
                for packed in pool.imap(_label_chunk if evidence else _label_chunk_no_evidence, chunks):
                    if bar is not None:
                        bar.update(len(packed))
                    for p in packed:
                        yield self._unpack(p)
        finally:
            _WORKER = None

    def _unpack(self, packed: tuple[list[float], list[tuple]]) -> LabelResult:
        values, evidence = packed
        names = self.label_names
        per_finding: dict[str, list[Evidence]] = {name: [] for name in names}
        for i, *fields in evidence:
            per_finding[names[i]].append(Evidence(names[i], *fields))
        return LabelResult(dict(zip(names, values, strict=True)), per_finding)

    # ------------------------------------------------------------------------------------------------------------

    def _mentions(self, text: str, start: int, end: int) -> list[tuple[int, int, list[_Entry], bool]]:
        hits = []
        groups = self._groups
        for m in self._regex.finditer(text, start, end):
            kept, excluded, clausal = groups[m.lastgroup]
            if kept:
                hits.append((m.start(), m.end(), kept, clausal))
            if excluded and self._mention_regex is not None:  # mentions of other findings inside an exclusion
                for inner in self._mention_regex.finditer(text, m.start(), m.end()):
                    entries, _, inner_clausal = groups[inner.lastgroup]
                    keep = [e for e in entries if e.finding not in excluded]
                    if keep and (inner.start(), inner.end()) != (m.start(), m.end()):
                        hits.append((inner.start(), inner.end(), keep, inner_clausal))
        return hits


def _value(kind: str, value: float) -> float | None:
    if kind == "mentions":
        return value
    if kind == "uncertain_mentions":
        return NEG if value == NEG else UNC
    if kind == "negative_mentions":
        return NEG if value == POS else None
    return None


def _string_list(value, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"vocabulary key {where} must be a list of strings")
    return value


def _progress_bar(total: int, show: bool):
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="labeling", unit="report", mininterval=0.5)


_WORKER: ReportLabeler | None = None  # the labeler of a worker process


def _init_worker(vocabulary: Vocabulary, sections: tuple[str, ...], speculation: str) -> None:
    global _WORKER
    _WORKER = ReportLabeler(vocabulary, sections, speculation)


def _label_chunk(texts: list[str | None]) -> list[tuple[list[float], list[tuple]]]:
    """Label reports in a worker and return them as plain tuples (five times cheaper to pickle than dataclasses)."""
    assert _WORKER is not None
    index = {name: i for i, name in enumerate(_WORKER.label_names)}
    out = []
    for text in texts:
        result = _WORKER.label(text)
        evidence = [
            (index[e.finding], e.value, e.sentence, e.start, e.end, e.mention_start, e.mention_end, e.mention, e.cue)
            for evs in result.evidence.values()
            for e in evs
        ]
        out.append((list(result.labels.values()), evidence))
    return out


def _label_chunk_no_evidence(texts: list[str | None]) -> list[tuple[list[float], list[tuple]]]:
    assert _WORKER is not None
    return [(list(_WORKER.label(text).labels.values()), []) for text in texts]
