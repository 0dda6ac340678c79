"""Report understanding: sections and sentences (:mod:`~mmrad.reports.sections`), phrase matching, negation and
uncertainty cues, the rule labeler (:mod:`~mmrad.reports.labeler`) and labeling report files.
"""
