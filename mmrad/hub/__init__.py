"""Sharing: model cards (:mod:`~mmrad.hub.cards`) and pushing to the Hugging Face Hub with a PHI scan
(:mod:`~mmrad.hub.push`).
"""
