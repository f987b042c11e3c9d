"""Preprocessing steps between DICOM conversion and training: skull stripping, co-registration,
harmonisation (one module per step, named as its Snakemake rule file).

Kept import-light on purpose: the heavy dependencies (torch, ANTs) are imported inside the functions
that need them, so `import thrombus.preprocess` costs nothing for the rules that do not use them.
"""
