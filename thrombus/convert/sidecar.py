"""Scrubbing patient identifiers from dcm2niix sidecars.

dcm2niix's own anonymisation (`-ba y`) drops the obvious fields, but identifiers also hide in free text
(ImageComments, ProtocolName typed by a technologist). Two passes: a list of fields that are never
kept, then any string value that contains an identifier read from the series' own headers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

#: Fields never kept: direct identifiers, dates and places that make re-identification easy.
DROPPED_FIELDS = frozenset({
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "PatientWeight",
    "PatientSize", "AccessionNumber", "StudyID", "StudyInstanceUID", "SeriesInstanceUID",
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "StationName",
    "DeviceSerialNumber", "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName",
    "AcquisitionDateTime", "AcquisitionDate", "StudyDate", "SeriesDate", "ContentDate",
    "StudyDescription", "ProcedureStepDescription", "PatientComments",
})

REMOVED = "[removed]"


def _contains(value: str, identifiers: Iterable[str]) -> bool:
    lowered = value.lower()
    return any(ident.lower() in lowered for ident in identifiers)


def scrub_value(value: Any, identifiers: frozenset[str]) -> Any:
    """A value with every string that contains an identifier replaced by a marker."""
    if isinstance(value, str):
        return REMOVED if _contains(value, identifiers) else value
    if isinstance(value, list):
        return [scrub_value(v, identifiers) for v in value]
    if isinstance(value, dict):
        return {k: scrub_value(v, identifiers) for k, v in value.items()}
    return value


def scrub_sidecar(sidecar: dict[str, Any], identifiers: Iterable[str]) -> dict[str, Any]:
    """A copy of `sidecar` without identifying fields or values."""
    idents = frozenset(i for i in identifiers if len(i) >= 3)
    return {key: scrub_value(value, idents) for key, value in sidecar.items() if key not in DROPPED_FIELDS}


def scrub_text(text: str, identifiers: Iterable[str]) -> str:
    """Free text (a console log) with identifiers replaced by a marker."""
    for ident in sorted((i for i in identifiers if len(i) >= 3), key=len, reverse=True):
        text = text.replace(ident, REMOVED)
    return text
