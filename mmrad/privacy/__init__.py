"""Privacy: de-identification of report text and salted hashes of identifiers (:mod:`~mmrad.privacy.deid`)."""
