"""Synthetic multi-center stroke cohort written as real DICOM series, with thrombus and infarct truth.

Real thrombus data cannot be shipped, so the demo and most tests run on this cohort: MNI152 anatomy
with skull and scalp, arteries and look-alike veins, microbleeds and calcifications, a low-contrast
thrombus with an infarct downstream in positive subjects, and centers that differ by vendor, grid,
orientation, noise, bias, contrast and the sequences they acquire. See `generate_cohort`.
"""

from thrombus.synth.cohort import CohortSummary, generate_cohort
from thrombus.synth.preset import Preset, PresetError, load_preset

__all__ = ["CohortSummary", "Preset", "PresetError", "generate_cohort", "load_preset"]
