"""Evaluation: the evaluate metric modules shipped with mmrad (:mod:`~mmrad.evaluation.metrics`), predictions
over a loader (:mod:`~mmrad.evaluation.predict`) and ``mmrad evaluate`` on a corpus (:mod:`~mmrad.evaluation.corpus`).
"""
