"""Inference apps: zero-shot classification (:mod:`~mmrad.inference.zeroshot`) and its caches, inference inputs, and
grounding of phrases and reports (:mod:`~mmrad.inference.grounding`).
"""
