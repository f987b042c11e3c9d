"""DICOM -> NIfTI for every sequence of one subject: the `convert` step of the workflow.

One job per subject rather than per sequence: at the scale of a thousand-subject cohort each
Snakemake job costs as much bookkeeping as a dcm2niix run, and the sequences of a subject are
always wanted together. The subject's folder is written whole or not at all (`atomic_folder`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from thrombus.convert.dcm2niix import ConversionError
from thrombus.convert.sequence import ConvertRequest, convert_sequence
from thrombus.io import PathLike, atomic_folder
from thrombus.provenance import StepRecord

log = logging.getLogger(__name__)


def _one_error(errors: list[Exception], subject: str, center: str) -> Exception:
    """The error to raise: the only one, or all of them in one message (each names its sequence)."""
    if len(errors) == 1:
        return errors[0]
    lines = "\n".join(f"  - {err}" for err in errors)
    return ConversionError(f"center {center}, subject {subject}: {len(errors)} sequences failed to convert:\n{lines}")


def fill_record(record: StepRecord, records: dict[str, dict[str, Any]]) -> StepRecord:
    """The subject's step record from its sequences' records, each section keyed by sequence."""
    for section in ("inputs", "params", "outputs", "qc"):
        setattr(record, section, {seq: records[seq][section] for seq in records})
    record.versions = {k: v for k, v in next(iter(records.values()))["versions"].items() if k not in ("thrombus", "python")}
    return record


def convert_subject(requests: Sequence[ConvertRequest], out_dir: PathLike, record_path: PathLike | None = None) -> dict[str, Any]:
    """Convert every requested sequence of one subject into `out_dir` as `<sequence>.nii.gz` + `.json`.

    Every sequence is tried even after one fails, so a single run reports all the broken series of
    a subject; nothing is left in `out_dir` unless every sequence converted.
    """
    if not requests:
        raise ValueError("convert_subject needs at least one sequence")
    if len({(r.subject, r.center) for r in requests}) != 1:
        raise ValueError("convert_subject converts the sequences of one subject at a time")
    out_dir = Path(out_dir)
    record = StepRecord("convert", subject=requests[0].subject, center=requests[0].center)  # its clock starts now
    records: dict[str, dict[str, Any]] = {}
    errors: list[Exception] = []
    with atomic_folder(out_dir) as staging:
        for number, request in enumerate(requests, start=1):
            try:
                records[request.sequence] = convert_sequence(
                    request, staging / f"{request.sequence}.nii.gz", staging / f"{request.sequence}.json"
                )
            except (ConversionError, OSError, ValueError) as err:  # SeriesError and VolumeError are ValueErrors
                errors.append(err)
                continue
            records[request.sequence]["outputs"]["nifti"] = str(out_dir / f"{request.sequence}.nii.gz")
            log.info("%s (%d/%d): %s", request.what, number, len(requests), records[request.sequence]["qc"]["note"])
        if errors:
            raise _one_error(errors, requests[0].subject, requests[0].center)
    fill_record(record, records)
    if record_path is not None:
        record.write(record_path)
    return record.as_dict()
