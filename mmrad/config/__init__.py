"""Configuration: the typed dataclasses saved with a model (:mod:`~mmrad.config.schema`), the YAML and ``--set``
machinery (:mod:`~mmrad.config.yamlio`), the finding vocabularies (:mod:`~mmrad.config.labels`) and the prompt banks
of zero-shot phrasings (:mod:`~mmrad.config.prompts`).
"""
