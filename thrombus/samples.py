"""The sample sheet: reading it, checking what a JSON Schema cannot, and answering the workflow's
questions about it (which sequences a subject has, its reference, where its series are).

The workflow's input functions are thin wrappers around these, so the same answers are available to
the CLI and the tests without Snakemake.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from thrombus import SEQUENCES
from thrombus.errors import UserError

#: Columns of the sheet, in the order the generator writes them.
COLUMNS: tuple[str, ...] = ("subject", "center", "dicom_dir", *SEQUENCES, "thrombus", "thrombus_mask", "infarct_mask")
PATH_COLUMNS: tuple[str, ...] = ("dicom_dir", "thrombus_mask", "infarct_mask")


class SampleSheetError(UserError, ValueError):
    """A sample sheet that cannot be used; the message names the sheet, row and column."""


class ConfigError(UserError, ValueError):
    """A config value the schema lets through but that cannot work; the message names the key."""


def read_sheet(path: str | Path) -> pd.DataFrame:
    """Read the TSV with every cell as text (empty stays empty), paths made absolute from the sheet's folder."""
    path = Path(path)
    if not path.exists():
        raise SampleSheetError(f"sample sheet {path} does not exist; set `samples` in the config")
    sheet = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    sheet.columns = [c.strip() for c in sheet.columns]
    unknown = [c for c in sheet.columns if c not in COLUMNS]
    if unknown:
        raise SampleSheetError(
            f"sample sheet {path}: unknown column(s) {', '.join(unknown)}; "
            f"known columns are {', '.join(COLUMNS)} (sequences: {', '.join(SEQUENCES)})"
        )
    for column in COLUMNS:
        if column not in sheet.columns:
            sheet[column] = ""
    sheet = sheet[list(COLUMNS)].map(str.strip)
    for column in PATH_COLUMNS:
        sheet[column] = [_absolute(value, path.parent) for value in sheet[column]]
    return sheet


def _absolute(value: str, base: Path) -> str:
    if not value:
        return value
    candidate = Path(value).expanduser()
    return str(candidate if candidate.is_absolute() else (base / candidate).resolve())


#: Center names the workflow uses itself: the tables' pooled row and `folds: all` (case-insensitive).
RESERVED_CENTERS: frozenset[str] = frozenset({"all"})


def _refuse_shared_scans(sheet: pd.DataFrame, source: str) -> None:
    """Two labelled pseudonyms pointing at the same scans (one DICOM folder, the same series cells): the
    same patient twice, which would put one subject in training and its copy in the test set. A row
    without a label (new data to predict) may repeat a labelled one: it is never trained or scored on."""
    resolved = [os.path.realpath(d) if d else "" for d in sheet["dicom_dir"]]
    keys = [(folder, *(row[s] for s in SEQUENCES)) for folder, (_, row) in zip(resolved, sheet.iterrows())]
    first: dict[tuple[str, ...], int] = {}
    for position, key in enumerate(keys):
        if not key[0] or sheet.iloc[position]["thrombus"] not in ("0", "1"):
            continue
        if key in first:
            a, b = sheet.iloc[first[key]], sheet.iloc[position]
            raise SampleSheetError(
                f"{source}: subjects {a['subject']} (line {first[key] + 2}) and {b['subject']} (line {position + 2}) "
                f"point at the same scans ({b['dicom_dir']}, the same series): one patient under two pseudonyms "
                "would leak between training and test; keep one row"
            )
        first[key] = position


def check_sheet(sheet: pd.DataFrame, config: Mapping[str, Any], source: str = "sample sheet") -> pd.DataFrame:
    """Checks across rows and against the config; returns the sheet indexed by subject.

    Duplicate subjects (also across centers), subjects without any usable sequence, and subjects
    without any sequence of the reference priority list are errors that name the row.
    """
    duplicated = sheet[sheet["subject"].duplicated(keep=False)]
    if not duplicated.empty:
        listing = "; ".join(
            f"{subject} in rows {', '.join(str(i + 2) for i in rows.index)} (centers {', '.join(rows['center'])})"
            for subject, rows in duplicated.groupby("subject")
        )
        raise SampleSheetError(f"{source}: subject IDs must be unique across the sheet: {listing}")
    _refuse_shared_scans(sheet, source)
    wanted = list(config.get("sequences", SEQUENCES))
    for index, row in sheet.iterrows():
        line = f"{source}, line {int(index) + 2} (subject {row['subject']}, center {row['center']})"
        if str(row["center"]).lower() in RESERVED_CENTERS:
            raise SampleSheetError(f"{line}: the center name {row['center']!r} is reserved (the tables' row that pools "
                                   "every center, and `folds: all`); give the center another name")
        present = [s for s in wanted if row[s]]
        if not present:
            raise SampleSheetError(f"{line}: no series given for any of the sequences {', '.join(wanted)}")
        priority = reference_priority(config, row["center"])
        if not any(s in present for s in priority):
            raise SampleSheetError(
                f"{line}: none of the reference sequences {', '.join(priority)} is present "
                f"(it has {', '.join(present)}); add the series or extend reference_priority for this center"
            )
        if row["thrombus"] == "1" and row["thrombus_mask"] and not Path(row["thrombus_mask"]).exists():
            raise SampleSheetError(f"{line}: thrombus_mask {row['thrombus_mask']} does not exist")
    return sheet.set_index("subject", drop=False)


def center_setting(config: Mapping[str, Any], center: str, key: str) -> Any:
    """A per-center override of a global setting, else the global value."""
    return (config.get("centers") or {}).get(center, {}).get(key, config.get(key))


def reference_priority(config: Mapping[str, Any], center: str) -> list[str]:
    return list(center_setting(config, center, "reference_priority") or ())


def series_patterns(config: Mapping[str, Any], center: str) -> dict[str, str]:
    """Global patterns with the center's overrides laid on top."""
    patterns = dict(config.get("series_patterns") or {})
    patterns.update((config.get("centers") or {}).get(center, {}).get("series_patterns") or {})
    return patterns


@dataclass(frozen=True)
class Subject:
    """One row of the sheet, as the steps see it."""

    subject: str
    center: str
    dicom_dir: str
    series: dict[str, str]
    thrombus: str
    thrombus_mask: str
    infarct_mask: str

    @property
    def sequences(self) -> list[str]:
        return list(self.series)

    def reference(self, priority: Sequence[str]) -> str:
        """The first sequence of the priority list that this subject has."""
        for sequence in priority:
            if sequence in self.series:
                return sequence
        raise SampleSheetError(f"subject {self.subject}: none of {', '.join(priority)} present")


def subjects(sheet: pd.DataFrame, config: Mapping[str, Any]) -> list[Subject]:
    """The subjects of the sheet, restricted to `config['center']` when it is set."""
    wanted = list(config.get("sequences", SEQUENCES))
    only = config.get("center")
    rows = []
    for _, row in sheet.iterrows():
        if only and row["center"] != only:
            continue
        series = {s: row[s] for s in wanted if row[s]}
        rows.append(Subject(row["subject"], row["center"], row["dicom_dir"], series, row["thrombus"], row["thrombus_mask"], row["infarct_mask"]))
    if only and not rows:
        centers = ", ".join(sorted(set(sheet["center"])))
        raise SampleSheetError(f"center '{only}' is not in the sample sheet (centers: {centers})")
    return rows


#: A sequence cell naming a file with one of these endings is a NIfTI image (a BIDS dataset), imported as is.
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: str | Path) -> bool:
    """Whether `path` (or the file a source link points at) is a NIfTI file."""
    real = Path(os.path.realpath(path))
    return real.is_file() and real.name.lower().endswith(NIFTI_SUFFIXES)


def series_folder(subject: Subject, sequence: str) -> str:
    """What a sequence's conversion reads: its series folder (or NIfTI file), or the subject's folder for `auto`."""
    value = subject.series[sequence]
    if value == "auto":
        return subject.dicom_dir
    path = Path(value)
    return str(path if path.is_absolute() else Path(subject.dicom_dir) / path)


#: Where the workflow links each subject's DICOM sources: `<root>/<center>/<subject>/<sequence>`, a link to
#: the sequence's series folder (or, for `auto`, the subject's folder). Jobs, records and Snakemake's logs
#: then name the pseudonym's link, never the source path, which often carries the patient's name and ID;
#: and a project moved with its links does not rerun, since no source path is a rule parameter.
SOURCES_ROOT = "results/dicom"


def source_link(subject: Subject, sequence: str, root: str | Path = SOURCES_ROOT) -> Path:
    return Path(root) / subject.center / subject.subject / sequence


def link_sources(subjects: Iterable[Subject], root: str | Path = SOURCES_ROOT, source: str = "the sample sheet") -> None:
    """Point each subject's source links at its folders; a link already resolving there is left alone,
    so that its time stamp (which Snakemake compares with the conversion's) changes only with the sheet."""
    for subject in subjects:
        for sequence in subject.sequences:
            target = Path(series_folder(subject, sequence))
            if not (target.is_dir() or is_nifti(target)):
                what = "NIfTI file" if target.name.lower().endswith(NIFTI_SUFFIXES) else "DICOM folder"
                raise SampleSheetError(
                    f"{source}: center {subject.center}, subject {subject.subject}, {sequence}: {what} "
                    f"{target} does not exist; check the sample sheet"
                )
            _point(source_link(subject, sequence, root), target)


def portable_path(path: str | Path) -> str:
    """`path` relative to the working folder when it lies inside it, else absolute."""
    absolute = Path(os.path.abspath(path))
    return os.path.relpath(absolute) if absolute.is_relative_to(Path.cwd()) else str(absolute)


def _point(link: Path, target: Path) -> None:
    """Make `link` a symlink to `target` atomically: relative when the target lies under the working
    folder (a moved project keeps it), absolute otherwise."""
    if link.is_symlink() and os.path.realpath(link) == os.path.realpath(target):
        return
    if link.exists() and not link.is_symlink():
        raise SampleSheetError(f"{link} exists and is not a link; the workflow keeps its DICOM links there: move it away")
    link.parent.mkdir(parents=True, exist_ok=True)
    absolute = Path(os.path.abspath(target))
    inside = absolute.is_relative_to(Path.cwd())
    value = os.path.relpath(absolute, link.parent.absolute()) if inside else str(absolute)
    temporary = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)
    os.symlink(value, temporary)
    os.replace(temporary, link)


def check_patterns(config: Mapping[str, Any]) -> None:
    """Compile every series pattern now, so a typo fails at start-up and not in the 300th job."""
    blocks = {"series_patterns": config.get("series_patterns") or {}}
    for center, settings in (config.get("centers") or {}).items():
        blocks[f"centers.{center}.series_patterns"] = (settings or {}).get("series_patterns") or {}
    for where, patterns in blocks.items():
        for sequence, pattern in patterns.items():
            try:
                re.compile(pattern)
            except re.error as err:
                raise ConfigError(f"config {where}.{sequence}: '{pattern}' is not a valid regular expression ({err})") from err
