"""Pixel I/O: DICOM decoding with its grey-level pipeline (:mod:`~mmrad.io.dicom`, :mod:`~mmrad.io.voi`), any image
file (:mod:`~mmrad.io.images`) and the fast PNG codec of the image cache (:mod:`~mmrad.io.png`).
"""
