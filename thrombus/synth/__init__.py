"""Synthetic multi-center stroke cohort written as real DICOM series, with thrombus and infarct truth.

Real thrombus data cannot be shipped, so the demo and most tests run on this cohort: MNI152 anatomy
with skull and scalp, arteries and look-alike veins, microbleeds and calcifications, a low-contrast
thrombus with an infarct downstream in positive subjects, and centers that differ by vendor, grid,
orientation, noise, bias, contrast and the sequences they acquire. See `generate_cohort`.
"""

import importlib
from typing import Any

# Loaded on first use (PEP 562): `thrombus <any step>` builds its parser from synth.cli, and must not pay
# for numpy, scipy and the DICOM writer on every job's start-up.
_HOMES = {"CohortSummary": "cohort", "generate_cohort": "cohort", "Preset": "preset", "PresetError": "preset",
          "load_preset": "preset"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)

__all__ = ["CohortSummary", "Preset", "PresetError", "generate_cohort", "load_preset"]
