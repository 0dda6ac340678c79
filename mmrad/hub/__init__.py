"""Sharing: pushing a model folder to the Hugging Face Hub, private by default, after a scan for patient identifiers
(:mod:`~mmrad.hub.push`). The model card is part of the folder and written with it (:mod:`~mmrad.models.card`).
"""
