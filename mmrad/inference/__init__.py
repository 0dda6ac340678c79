"""Inference apps: zero-shot classification (:mod:`~mmrad.inference.zeroshot`), its caches, prompt banks and
grounding of phrases and reports (:mod:`~mmrad.inference.grounding`).
"""
