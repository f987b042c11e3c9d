"""A predicted thrombus mask as a DICOM Segmentation over the reference series, for PACS viewers.

Radiologists look at results in their PACS viewer, over the images they came from. A DICOM SEG object
(highdicom) that references the reference series' SOP instances opens there as an overlay. The mask
lives on the NIfTI grid of the reference sequence; each source frame is filled by looking up, for
every pixel centre, the mask voxel at that scanner position, so the object needs no assumption about
how dcm2niix ordered or flipped slices.

Identifiers follow the conversion's rule: the object carries the pseudonym as patient name and ID and
no birth date, accession number, referring physician or institution, unless the caller asks for the
source's identifiers (a site that sends the object back into its own PACS, where the patient must match).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from thrombus.errors import UserError
from thrombus.io import PathLike, atomic_path

log = logging.getLogger(__name__)

#: Patient and study attributes blanked in pseudonymised objects (PatientName and PatientID get the pseudonym).
BLANKED = ("PatientBirthDate", "AccessionNumber", "ReferringPhysicianName", "StudyID", "PatientSex", "PatientAge")
#: Attributes removed from pseudonymised objects: they can name the place or the person.
REMOVED = ("InstitutionName", "InstitutionAddress", "StationName", "OtherPatientIDs", "PatientComments",
           "InstitutionalDepartmentName", "OperatorsName", "PerformingPhysicianName")


class SegmentationError(UserError, ValueError):
    """A source series that a DICOM Segmentation cannot be built over; the message names subject and folder."""


def reference_datasets(folder: Path, series_uid_sha256: str | None, what: str) -> tuple[list[Any], set[str]]:
    """The headers of the reference series under `folder` (the one whose UID hashes to the conversion's
    fingerprint, or the only one there), ordered along the slice normal, and the identifying strings
    found in them."""
    import pydicom

    from thrombus.convert.fingerprints import uid_fingerprint
    from thrombus.convert.series import scan_series

    found = scan_series(folder, what, recursive=True)
    chosen = [s for s in found if series_uid_sha256 and uid_fingerprint(s.uid) == series_uid_sha256]
    if not chosen and len(found) == 1 and not series_uid_sha256:
        chosen = found
    if len(chosen) != 1:
        raise SegmentationError(f"{what}: the reference series that was converted is not among the {len(found)} "
                                f"series under {folder}; was the DICOM folder changed after conversion?")
    (series,) = chosen
    if series.enhanced:
        raise SegmentationError(f"{what}: the reference series in {series.folder} is multi-frame (enhanced) DICOM; "
                                "DICOM SEG output is built over single-frame series only")
    datasets = [pydicom.dcmread(f.path, stop_before_pixels=True) for f in series.files]
    normal = np.cross(*np.reshape(np.asarray(datasets[0].ImageOrientationPatient, dtype=float), (2, 3)))
    ordered = sorted(datasets, key=lambda ds: float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=float))))
    return ordered, set(series.identifiers)


def frame_positions(ds: Any) -> np.ndarray:
    """Scanner RAS position (mm) of every pixel centre of a single-frame image, shape (rows, columns, 3)."""
    orientation = np.asarray(ds.ImageOrientationPatient, dtype=float)
    along_row, along_column = orientation[:3], orientation[3:]
    row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    rows, columns = np.meshgrid(np.arange(int(ds.Rows)), np.arange(int(ds.Columns)), indexing="ij")
    lps = (np.asarray(ds.ImagePositionPatient, dtype=float)
           + columns[..., None] * column_spacing * along_row + rows[..., None] * row_spacing * along_column)
    return lps * np.array([-1.0, -1.0, 1.0])  # DICOM's LPS to NIfTI's RAS


def mask_on_frames(mask: np.ndarray, affine: np.ndarray, datasets: Sequence[Any]) -> np.ndarray:
    """The mask looked up at every pixel centre of every frame (nearest voxel; outside the grid: empty)."""
    inverse = np.linalg.inv(affine)
    frames = np.zeros((len(datasets), int(datasets[0].Rows), int(datasets[0].Columns)), dtype=bool)
    for index, ds in enumerate(datasets):
        positions = frame_positions(ds)
        voxels = np.rint(positions @ inverse[:3, :3].T + inverse[:3, 3]).astype(int)
        inside = np.all((voxels >= 0) & (voxels < np.asarray(mask.shape[:3])), axis=-1)
        picked = voxels[inside]
        frames[index][inside] = mask[picked[:, 0], picked[:, 1], picked[:, 2]] > 0
    return frames


def _pseudonymise(seg: Any, subject: str, identifiers: set[str]) -> None:
    """Pseudonym as patient name and ID; the attributes above blanked or removed at every level (highdicom
    copies the source's equipment into ContributingEquipmentSequence); any other text holding an
    identifier of the source emptied."""
    from thrombus.convert.sidecar import REMOVED as MARKER
    from thrombus.convert.sidecar import scrub_text

    seg.PatientName = subject
    seg.PatientID = subject
    for keyword in BLANKED:
        if keyword in seg:
            setattr(seg, keyword, "")

    def clean(dataset: Any) -> None:
        for keyword in REMOVED:
            if keyword in dataset:
                delattr(dataset, keyword)
        for element in dataset:
            if element.VR == "SQ":
                for item in element.value:
                    clean(item)
            elif element.VR not in ("UI", "OB", "OW") and isinstance(element.value, str) and element.keyword not in ("PatientName", "PatientID"):
                if MARKER in scrub_text(element.value, identifiers):
                    element.value = ""

    clean(seg)


def build_segmentation(datasets: Sequence[Any], frames: np.ndarray, subject: str, software: str,
                       identifiers: set[str], original_identifiers: bool = False) -> Any:
    """A binary SEG with one segment, "thrombus", made by this software (an empty mask gives a valid
    object with empty frames)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label="thrombus",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Thrombus,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="thrombus UpAttLLSTM", version=software, family=codes.cid7162.ArtificialIntelligence,
        ),
    )
    seg = hd.seg.Segmentation(
        source_images=list(datasets), pixel_array=frames.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=[segment],
        series_instance_uid=hd.UID(), series_number=9901, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="thrombus", manufacturer_model_name="thrombus", software_versions=software,
        device_serial_number="none", series_description="thrombus segmentation (research use)",
        omit_empty_frames=False,
    )
    if not original_identifiers:
        _pseudonymise(seg, subject, identifiers)
    return seg


def write_segmentation(
    mask_path: PathLike, sources: PathLike, out: PathLike, subject: str, center: str, software: str,
    series_uid_sha256: str | None = None, original_identifiers: bool = False,
) -> dict[str, Any]:
    """The `dicom_seg` step: mask NIfTI + the reference series' folder -> SEG file (written atomically)."""
    import nibabel as nib

    what = f"center {center}, subject {subject}"
    datasets, identifiers = reference_datasets(Path(sources), series_uid_sha256, what)
    image = nib.load(str(mask_path))
    frames = mask_on_frames(np.asarray(image.dataobj), image.affine, datasets)
    seg = build_segmentation(datasets, frames, subject, software, identifiers, original_identifiers)
    with atomic_path(out, suffix=".dcm") as tmp:
        seg.save_as(tmp)
    log.info("%s: DICOM SEG over %d frames, %d pixels marked: %s", what, len(datasets), int(frames.sum()), out)
    return {"frames": len(datasets), "pixels": int(frames.sum()), "out": str(out)}
