"""DICOM -> NIfTI for every sequence of one subject: the `convert` step of the workflow.

One job per subject rather than per sequence: at the scale of a thousand-subject cohort each
Snakemake job costs as much bookkeeping as a dcm2niix run, and the sequences of a subject are
always wanted together. The subject's folder is written whole or not at all: every sequence is
converted into a staging folder beside it, renamed into place only when all of them succeeded.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from thrombus.convert.dcm2niix import ConversionError
from thrombus.convert.sequence import ConvertRequest, convert_sequence
from thrombus.io import PathLike
from thrombus.provenance import StepRecord

log = logging.getLogger(__name__)


def staging_folder(out_dir: Path) -> Path:
    """The hidden sibling the sequences are written to first (a fixed name, so a killed run's is reused)."""
    return out_dir.with_name(f".{out_dir.name}.partial")


def _fresh(folder: Path) -> Path:
    """`folder`, emptied of what an interrupted earlier attempt left."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def _one_error(errors: list[Exception], subject: str, center: str) -> Exception:
    """The error to raise: the only one, or all of them in one message (each names its sequence)."""
    if len(errors) == 1:
        return errors[0]
    lines = "\n".join(f"  - {err}" for err in errors)
    return ConversionError(f"center {center}, subject {subject}: {len(errors)} sequences failed to convert:\n{lines}")


def _publish(staging: Path, out_dir: Path) -> None:
    """Move the finished staging folder into place (Snakemake may have made an empty `out_dir` already)."""
    if out_dir.exists():
        if any(out_dir.iterdir()):
            raise FileExistsError(f"{out_dir} already holds files; remove it to convert the subject again")
        out_dir.rmdir()
    staging.rename(out_dir)


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
    staging = _fresh(staging_folder(out_dir))
    records: dict[str, dict[str, Any]] = {}
    errors: list[Exception] = []
    try:
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
        _publish(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    fill_record(record, records)
    if record_path is not None:
        record.write(record_path)
    return record.as_dict()
