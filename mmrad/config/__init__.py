"""Configuration: the typed dataclasses saved with a model (:mod:`~mmrad.config.schema`), the YAML and ``--set``
machinery (:mod:`~mmrad.config.yamlio`) and the finding vocabularies (:mod:`~mmrad.config.labels`).
"""
