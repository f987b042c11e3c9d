"""Preprocessing steps between DICOM conversion and training: skull stripping, co-registration,
harmonisation (one module per step, named as its Snakemake rule file).

Two steps have swappable backends, one module each, chosen by the config: brain extraction
(`extractors/`, `skullstrip.backend`) and the registration's optimisation (`registrators/`,
`register.backend`). Adding a backend means adding its module there (the interface is in the package's
docstring) and its name to the config schema's enum (`workflow/schemas/config.schema.yaml`); nothing
else names them, and the tests check that the enum and the modules agree.

Kept import-light on purpose: the heavy dependencies (torch, ANTs) are imported inside the functions
that need them, so `import thrombus.preprocess` costs nothing for the rules that do not use them.
"""
