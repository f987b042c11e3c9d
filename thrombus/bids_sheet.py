"""`thrombus sheet --bids DIR`: a sample sheet from a BIDS dataset, so that a group whose scans are
already converted (ISLES 2022 is published this way) runs the pipeline without going back to DICOM.

Each subject, or each session of a subject that has several, becomes one row; each sequence cell names a
NIfTI file relative to the row's folder, which the `convert` step imports as is
(`thrombus.convert.nifti_source`). Files are recognised by their BIDS suffix and `acq` entity, case-
insensitively, at any depth under the subject (datatype folders `anat/`, `dwi/`, `swi/` or none, as in
the ISLES release): SWI as `_swi` (BEP004) or `_T2starw` with `acq-swi`; T2* as `_T2starw`/`_T2star`; DWI
as `_dwi` (a 4-D series is reduced to its trace, with its `.bval`); ADC as `_adc`; FLAIR as `_FLAIR`; T1
as `_T1w`. Where a sequence has several runs, the last run is taken and the choice is said. Labels stay
empty (new data to predict); the label columns can be filled in afterwards.

pybids would answer the same queries, at the cost of a database build per dataset and a dependency for
one directory walk; the rules above are the whole of what is needed.
"""

from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from thrombus import SEQUENCES
from thrombus.convert.nifti_source import companion
from thrombus.errors import UserError
from thrombus.io import PathLike, write_text
from thrombus.samples import COLUMNS, NIFTI_SUFFIXES

log = logging.getLogger(__name__)

_ENTITY = re.compile(r"^([a-zA-Z0-9]+)-([a-zA-Z0-9]+)$")


class BidsError(UserError, ValueError):
    """A folder that cannot be read as a BIDS dataset; the message names it."""


@dataclass(frozen=True)
class BidsFile:
    """One NIfTI image of the dataset, with the entities of its name."""

    path: Path
    entities: dict[str, str]
    suffix: str

    @property
    def row_key(self) -> tuple[str, str]:
        return self.entities["sub"], self.entities.get("ses", "")


def parse_name(path: Path) -> BidsFile | None:
    """Entities and suffix of a BIDS image name, or None for a name that is not one."""
    name = path.name
    stem = next((name[: -len(s)] for s in sorted(NIFTI_SUFFIXES, key=len, reverse=True) if name.lower().endswith(s)), None)
    if stem is None:
        return None
    *pairs, suffix = stem.split("_")
    entities = {}
    for pair in pairs:
        match = _ENTITY.match(pair)
        if not match:
            return None
        entities[match.group(1)] = match.group(2)
    if "sub" not in entities or not suffix:
        return None
    return BidsFile(path, entities, suffix)


def sequence_of(image: BidsFile) -> str | None:
    """The pipeline's sequence a BIDS image is, by suffix and `acq` (module docstring), or None."""
    suffix, acq = image.suffix.lower(), image.entities.get("acq", "").lower()
    if suffix == "swi" or (suffix == "t2starw" and "swi" in acq):
        return "swi"
    return {"t2starw": "t2star", "t2star": "t2star", "dwi": "dwi", "adc": "adc", "flair": "flair", "t1w": "t1"}.get(suffix)


def dataset_root(folder: PathLike) -> Path:
    """The folder holding the `sub-*` folders: the dataset itself, or its `rawdata/` (BIDS 1.7 layout)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BidsError(f"BIDS dataset {folder} is not a folder")
    for candidate in (folder, folder / "rawdata"):
        if candidate.is_dir() and any(p.is_dir() and p.name.startswith("sub-") for p in candidate.iterdir()):
            return candidate
    raise BidsError(f"BIDS dataset {folder}: no sub-* folder in it or in its rawdata/; is it a BIDS dataset?")


def find_images(root: Path) -> list[BidsFile]:
    """Every recognised image under the subjects' folders (derivatives and hidden folders skipped)."""
    found = []
    for subject in sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("sub-")):
        for dirpath, dirnames, filenames in os.walk(subject):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "derivatives")
            for name in sorted(filenames):
                image = parse_name(Path(dirpath) / name)
                if image is not None and f"sub-{image.entities['sub']}" == subject.name:
                    found.append(image)
    return found


def _run_number(image: BidsFile) -> int:
    return int(image.entities.get("run", "0") or 0)


def _choose(images: list[BidsFile], what: str) -> BidsFile:
    """The last run of a sequence; several images of one run (other `acq`, `rec`) are ambiguous."""
    last = max(_run_number(i) for i in images)
    latest = [i for i in images if _run_number(i) == last]
    if len(latest) > 1:
        names = ", ".join(i.path.name for i in latest)
        raise BidsError(f"{what}: several images could be it ({names}); keep one, or write the sheet's cell by hand")
    if len(images) > 1:
        log.warning("%s: %d runs, taking %s", what, len(images), latest[0].path.name)
    return latest[0]


def _pseudonym(subject: str, session: str, sessions: int) -> str:
    return subject if sessions == 1 else f"{subject}ses{session}"


def _centers(root: Path, column: str | None) -> dict[str, str]:
    """participant label -> center, from participants.tsv's `column` when given."""
    if column is None:
        return {}
    table_path = root / "participants.tsv"
    if not table_path.exists():
        raise BidsError(f"--center-column {column}: {table_path} does not exist")
    table = pd.read_csv(table_path, sep="\t", dtype=str, keep_default_na=False)
    if column not in table.columns or "participant_id" not in table.columns:
        raise BidsError(f"{table_path}: needs the columns participant_id and {column} (has {', '.join(table.columns)})")
    return {row["participant_id"].removeprefix("sub-"): re.sub(r"[^A-Za-z0-9]", "", row[column]) for _, row in table.iterrows()}


def sheet_from_bids(folder: PathLike, center: str | None = None, center_column: str | None = None,
                    sequences: Iterable[str] = SEQUENCES, relative_to: PathLike | None = None) -> pd.DataFrame:
    """The sample sheet of a BIDS dataset (module docstring); paths relative to `relative_to` when given."""
    root = dataset_root(folder)
    if center is None and center_column is None:
        raise BidsError("a sheet from BIDS needs the center: --center NAME, or --center-column COLUMN of participants.tsv")
    centers = _centers(root, center_column)
    wanted = set(sequences)
    grouped: dict[tuple[str, str], dict[str, list[BidsFile]]] = defaultdict(lambda: defaultdict(list))
    for image in find_images(root):
        sequence = sequence_of(image)
        if sequence in wanted:
            grouped[image.row_key][sequence].append(image)
    if not grouped:
        raise BidsError(f"BIDS dataset {folder}: no image with a suffix the pipeline reads "
                        "(_swi, _T2starw, _dwi, _adc, _FLAIR, _T1w)")
    sessions = defaultdict(set)
    for subject, session in grouped:
        sessions[subject].add(session)
    rows = []
    for (subject, session), by_sequence in sorted(grouped.items()):
        row_dir = root / f"sub-{subject}" / (f"ses-{session}" if session else "")
        what = f"BIDS sub-{subject}" + (f" ses-{session}" if session else "")
        row = {column: "" for column in COLUMNS}
        row.update(subject=_pseudonym(subject, session, len(sessions[subject])),
                   center=centers.get(subject, center or ""), dicom_dir=_shown(row_dir, relative_to))
        if not row["center"]:
            raise BidsError(f"{what}: no center in participants.tsv's {center_column} column")
        for sequence, images in by_sequence.items():
            row[sequence] = _choose(images, f"{what}, {sequence}").path.relative_to(row_dir).as_posix()
        if not row["adc"] and row["dwi"] and _has_bvals(row_dir / row["dwi"]) and "adc" in wanted:
            row["adc"] = row["dwi"]  # no ADC map: the convert step derives one from the DWI series' b-values
        rows.append(row)
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _has_bvals(image: Path) -> bool:
    return companion(image, ".bval").exists()


def _shown(path: Path, relative_to: PathLike | None) -> str:
    """Relative to the sheet's folder when the dataset lies inside it (a moved project keeps it), else absolute."""
    path = path.resolve()
    if relative_to is not None and path.is_relative_to(Path(relative_to).resolve()):
        return os.path.relpath(path, Path(relative_to).resolve())
    return str(path)


def write_sheet(sheet: pd.DataFrame, out: PathLike) -> Path:
    """Write the sheet as TSV; empty columns the generator also leaves out are kept for clarity."""
    return write_text(out, sheet.to_csv(sep="\t", index=False))
