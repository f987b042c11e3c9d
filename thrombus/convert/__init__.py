"""DICOM -> NIfTI conversion (workflow step `convert`): find the series, check it, run dcm2niix,
pick or derive the sequence's image, scrub identifiers, write atomically; a subject's sequences
together (`convert_subject`)."""

import importlib
from typing import Any

# Loaded on first use (PEP 562): `thrombus <any step>` builds its parser from convert.cli, and must not
# pay for pydicom and nibabel on every job's start-up.
_HOMES = {
    "ConversionError": "dcm2niix", "AUTO": "sequence", "ConvertRequest": "sequence", "convert_sequence": "sequence",
    "SeriesError": "series", "convert_subject": "subject",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)


__all__ = ["AUTO", "ConversionError", "ConvertRequest", "SeriesError", "convert_sequence", "convert_subject"]
