"""Corpus building: manifests (:mod:`~mmrad.corpus.manifest`), ingest (:mod:`~mmrad.corpus.ingest`), the decoded
image cache, patient-level splits and the on-disk corpus format (:mod:`~mmrad.corpus.format`).
"""
