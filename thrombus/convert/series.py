"""Find and check DICOM series before dcm2niix sees them.

dcm2niix is permissive: a folder with two series mixed, a missing slice or a stray non-DICOM file
still yields NIfTI files, just wrong ones. These checks turn such folders into errors that name the
center, subject and folder, so a bad series stops its own job and nothing else.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from thrombus.errors import UserError

log = logging.getLogger(__name__)

#: Header fields read when scanning; pixel data is never loaded for a scan.
_SCAN_TAGS = [
    "SeriesInstanceUID", "SeriesDescription", "SeriesNumber", "ImageOrientationPatient",
    "ImagePositionPatient", "NumberOfFrames", "Rows", "Columns", "BitsAllocated", "SamplesPerPixel",
    "ImageType", "PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName",
    "PixelData",
]

#: Pixel data is read lazily (deferred): only its declared length and offset are needed.
_DEFER_BYTES = 1024
_UNDEFINED_LENGTH = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010

#: Files that sit in DICOM folders without being images; skipped silently.
_IGNORED_NAMES = {"DICOMDIR", "LOCKFILE", "VERSION", ".DS_Store", "Thumbs.db"}


class SeriesError(UserError, ValueError):
    """A DICOM series that cannot be converted as it is; the message says which and why."""


class NoSeriesMatch(SeriesError):
    """No series of the folder matches the sequence's pattern (under `auto`)."""


class NotAnImage(SeriesError):
    """A DICOM object without pixel data (a presentation state, a report, a vendor's private object).

    Exports hold them beside the images, sometimes under an image series' UID: they are skipped and
    listed in the step record, never converted and never a reason to refuse the series.
    """

    def __init__(self, message: str, path: Path, series_uid: str) -> None:
        super().__init__(message)
        self.path, self.series_uid = path, series_uid


@dataclass(frozen=True)
class DicomFile:
    """One DICOM file's header fields that matter for grouping and geometry checks."""

    path: Path
    series_uid: str
    description: str
    number: int | None
    orientation: tuple[float, ...] | None
    position: tuple[float, ...] | None
    frames: int
    image_type: tuple[str, ...]


@dataclass
class Series:
    """The files of one SeriesInstanceUID, plus the identifiers found in them (for scrubbing)."""

    uid: str
    description: str
    number: int | None
    files: list[DicomFile] = field(default_factory=list)
    identifiers: set[str] = field(default_factory=set)
    skipped: list[Path] = field(default_factory=list)

    @property
    def folder(self) -> Path:
        """The deepest folder holding all files of the series."""
        return Path(os.path.commonpath([str(f.path.parent) for f in self.files]))

    @property
    def enhanced(self) -> bool:
        """Multi-frame (enhanced) DICOM: one file holds many frames."""
        return any(f.frames > 1 for f in self.files)


def _identifier_strings(ds: pydicom.Dataset) -> set[str]:
    """Patient-identifying strings of a header, and their name parts, to hunt for in sidecars later."""
    found: set[str] = set()
    for tag in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName"):
        value = str(ds.get(tag, "") or "").strip()
        if not value:
            continue
        found.add(value)
        if tag == "PatientName":
            found.update(part for part in re.split(r"[\^ ]+", value) if len(part) >= 3)
    return found


def _float_tuple(value: object) -> tuple[float, ...] | None:
    if value is None:
        return None
    return tuple(round(float(v), 4) for v in value)  # type: ignore[union-attr]


def _check_complete(ds: pydicom.Dataset, path: Path, what: str) -> None:
    """A file cut short (an interrupted copy) declares more pixel bytes than it holds."""
    if _PIXEL_DATA not in ds:
        raise NotAnImage(f"{what}: {path} holds no pixel data; it is not an image", path, str(ds.SeriesInstanceUID))
    element = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    length, offset = getattr(element, "length", None), getattr(element, "value_tell", None)
    if length is None or offset is None or length == _UNDEFINED_LENGTH:
        return
    size = path.stat().st_size
    if offset + length > size:
        raise SeriesError(
            f"{what}: {path} is truncated ({size} bytes, its pixel data needs {offset + length}); copy the file again"
        )


def _is_gzip(path: Path) -> bool:
    """A file compressed on its own (some archives gzip each DICOM file): it starts with gzip's magic bytes."""
    try:
        with open(path, "rb") as handle:
            return handle.read(2) == b"\x1f\x8b"
    except OSError:
        return False


def read_header(path: Path, what: str) -> tuple[DicomFile, set[str]]:
    """Read one file's header; a non-DICOM, unreadable or truncated file raises SeriesError naming it."""
    if _is_gzip(path):
        raise SeriesError(f"{what}: {path} is gzip-compressed; decompress the series folder (`gzip -d -r <folder>`) "
                          "and run again")
    try:
        ds = pydicom.dcmread(path, defer_size=_DEFER_BYTES, specific_tags=_SCAN_TAGS)
    except (InvalidDicomError, OSError, ValueError, EOFError) as err:
        raise SeriesError(f"{what}: {path} is not a readable DICOM file ({err}); remove it from the series folder") from err
    if "SeriesInstanceUID" not in ds:
        raise SeriesError(f"{what}: {path} has no SeriesInstanceUID; it is not an image of a DICOM series")
    _check_complete(ds, path, what)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    number = ds.get("SeriesNumber")
    record = DicomFile(
        path=path,
        series_uid=str(ds.SeriesInstanceUID),
        description=str(ds.get("SeriesDescription", "") or ""),
        number=int(number) if number not in (None, "") else None,
        orientation=_float_tuple(ds.get("ImageOrientationPatient")),
        position=_float_tuple(ds.get("ImagePositionPatient")),
        frames=frames,
        image_type=tuple(str(v) for v in (ds.get("ImageType") or ())),
    )
    return record, _identifier_strings(ds)


def _walk(folder: Path) -> Iterable[Path]:
    """Every file under `folder`, following symlinked folders (a series linked into a subject's folder)
    but entering each real folder once, so a link loop cannot recurse forever."""
    seen: set[str] = set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        yield from (Path(root) / name for name in names)


def list_files(folder: Path, what: str, recursive: bool) -> list[Path]:
    """All candidate files in a folder; an absent or empty folder raises SeriesError."""
    if not folder.is_dir():
        raise SeriesError(f"{what}: DICOM folder {folder} does not exist; check the sample sheet")
    candidates = _walk(folder) if recursive else folder.iterdir()
    files = sorted(
        p for p in candidates
        if p.is_file() and p.name not in _IGNORED_NAMES and not p.name.startswith(".")
    )
    if not files:
        raise SeriesError(f"{what}: DICOM folder {folder} is empty")
    return files


def scan_series(folder: Path, what: str, recursive: bool = False) -> list[Series]:
    """Group the DICOM image files under `folder` by SeriesInstanceUID.

    Objects without pixel data are skipped: listed with the image series that shares their UID, left
    out (and logged) otherwise. A folder of such objects only is an error.
    """
    groups: dict[str, Series] = {}
    skipped: list[NotAnImage] = []
    for path in list_files(folder, what, recursive):
        try:
            record, identifiers = read_header(path, what)
        except NotAnImage as error:
            skipped.append(error)
            continue
        series = groups.setdefault(record.series_uid, Series(record.series_uid, record.description, record.number))
        series.files.append(record)
        series.identifiers |= identifiers
    for error in skipped:
        if error.series_uid in groups:
            groups[error.series_uid].skipped.append(error.path)
        else:
            log.info("%s: skipped %s, an object without pixel data outside every image series", what, error.path)
    if not groups:
        raise SeriesError(f"{what}: DICOM folder {folder} holds no image: its {len(skipped)} DICOM objects have no "
                          "pixel data (presentation states, reports, private objects); point the sample sheet at the images")
    return sorted(groups.values(), key=lambda s: (s.number if s.number is not None else -1, s.description))


def single_series(folder: Path, what: str) -> Series:
    """The one series in a folder; two series mixed together raise SeriesError listing both."""
    found = scan_series(folder, what, recursive=False)
    if len(found) > 1:
        listing = "; ".join(f"#{s.number} '{s.description}' ({len(s.files)} files)" for s in found)
        raise SeriesError(
            f"{what}: folder {folder} mixes {len(found)} series ({listing}); "
            "split them into one folder per series or point the sample sheet at the right one"
        )
    return found[0]


def match_series(
    series: Iterable[Series], patterns: Mapping[str, str], sequence: str, what: str, folder: Path
) -> Series:
    """Pick the series of `sequence` by SeriesDescription pattern (case-insensitive regex search).

    A series must match exactly one sequence's pattern and the sequence exactly one series: anything
    else is ambiguous, and guessing would silently feed the wrong contrast to the model.
    """
    if sequence not in patterns:
        raise SeriesError(f"{what}: no series_patterns entry for sequence '{sequence}' in the config")
    compiled = {name: re.compile(pattern, re.IGNORECASE) for name, pattern in patterns.items()}
    hits = []
    for candidate in series:
        matched = [name for name, rx in compiled.items() if rx.search(candidate.description)]
        if sequence in matched:
            if len(matched) > 1:
                raise SeriesError(
                    f"{what}: series '{candidate.description}' in {folder} matches the patterns of "
                    f"{', '.join(matched)}; make the series_patterns of this center more specific"
                )
            hits.append(candidate)
    if not hits:
        seen = ", ".join(f"'{s.description}'" for s in series) or "none"
        raise NoSeriesMatch(
            f"{what}: no series in {folder} matches the {sequence} pattern '{patterns[sequence]}' "
            f"(series found: {seen}); fix the pattern or give the folder in the sample sheet"
        )
    if len(hits) > 1:
        listing = ", ".join(f"#{s.number} '{s.description}'" for s in hits)
        raise SeriesError(
            f"{what}: {len(hits)} series in {folder} match the {sequence} pattern ({listing}); "
            "name the right series folder in the sample sheet"
        )
    return hits[0]


def check_slices(series: Series, what: str) -> list[str]:
    """Refuse a classic series with a missing slice or an uneven number of images per slice position.

    Positions are projected on the slice normal; a gap wider than 1.5 times the median spacing, or a
    position holding fewer images than the others (a volume of a DWI series lost a slice), is a missing
    slice. Enhanced (multi-frame) files carry their own frame geometry and are left to dcm2niix, and so
    are series whose files lack the standard position tags: some vendors (UIH) keep them in private
    sequences that dcm2niix reads, and a check stricter than the converter would refuse a good series.
    Returns notes for the step record on what was not checked.
    """
    if series.enhanced:
        return []
    unplaced = [r.path for r in series.files if r.orientation is None or r.position is None]
    if unplaced:
        return [f"slice checks left to dcm2niix: {len(unplaced)} of {len(series.files)} files lack "
                "ImagePositionPatient/ImageOrientationPatient (e.g. " + unplaced[0].name + ")"]
    by_orientation: dict[tuple[float, ...], list[DicomFile]] = defaultdict(list)
    for record in series.files:
        by_orientation[record.orientation].append(record)
    for orientation, records in by_orientation.items():
        if len(records) < 2:
            continue
        row, col = np.array(orientation[:3]), np.array(orientation[3:6])
        normal = np.cross(row, col)
        distances = np.round([float(np.dot(normal, r.position)) for r in records], 2)
        counts = Counter(distances.tolist())
        positions = np.array(sorted(counts))
        if len(set(counts.values())) > 1:
            expected = max(counts.values())
            short = [f"{p:.2f} mm" for p in positions if counts[p] < expected]
            raise SeriesError(
                f"{what}: series '{series.description}' in {series.folder} has {expected} images at most "
                f"slice positions but fewer at {', '.join(short[:5])}: a slice is missing; re-export the series"
            )
        if len(positions) < 3:
            continue
        steps = np.diff(positions)
        median = float(np.median(steps))
        gaps = np.nonzero(steps > 1.5 * median)[0]
        if median > 0 and gaps.size:
            where = ", ".join(f"{positions[i]:.2f}-{positions[i + 1]:.2f} mm" for i in gaps[:5])
            raise SeriesError(
                f"{what}: series '{series.description}' in {series.folder} has a gap in its slice positions "
                f"({where}; spacing {median:.2f} mm elsewhere): a slice is missing; re-export the series"
            )
    return []
