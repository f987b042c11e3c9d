"""The DICOM Segmentation of a mask, read back: its frames are the source's, its pixels the mask's voxels."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from thrombus.inference.dicomseg import SegmentationError, frame_positions, write_segmentation
from thrombus.samples import read_sheet


def _first_positive(cohort: Path) -> tuple[dict, Path]:
    """A thrombus-positive row of the sheet and the folder of its reference (susceptibility) series."""
    sheet = read_sheet(cohort / "samples.tsv")
    row = sheet[sheet["thrombus"] == "1"].iloc[0].to_dict()
    reference = "swi" if row["swi"] else "t2star"
    return row, Path(row["dicom_dir"]) / row[reference]


def _identifiers(cohort: Path, subject: str) -> set[bytes]:
    person = next(p for p in json.loads((cohort / "identifiers.json").read_text())["subjects"] if p["subject"] == subject)
    needles = {str(v) for k, v in person.items() if k != "subject" and len(str(v)) >= 4}
    needles |= {part for part in person["PatientName"].split("^") if len(part) >= 4}
    return {n.encode() for n in needles - {"SYNTH"}}


def test_a_mask_reads_back_on_its_source_frames(tiny_cohort: Path, tmp_path: Path) -> None:
    import highdicom as hd

    row, folder = _first_positive(tiny_cohort)
    image = nib.load(row["thrombus_mask"])
    mask = np.asarray(image.dataobj) > 0
    info = write_segmentation(row["thrombus_mask"], folder, tmp_path / "seg.dcm", row["subject"], row["center"], "test")
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    sources = {ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.iterdir()))}
    referenced = {item.ReferencedSOPInstanceUID for series in seg.ReferencedSeriesSequence
                  for item in series.ReferencedInstanceSequence}
    assert referenced == set(sources) and seg.NumberOfFrames == len(sources)
    frames = seg.pixel_array
    assert int(frames.sum()) == int(mask.sum()) == info["pixels"] > 0
    inverse = np.linalg.inv(image.affine)
    for frame, group in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        np.testing.assert_allclose(group.PlanePositionSequence[0].ImagePositionPatient,
                                   sources[uid].ImagePositionPatient, atol=1e-3)
        marked = frame_positions(sources[uid])[frame > 0]
        voxels = np.rint(marked @ inverse[:3, :3].T + inverse[:3, 3]).astype(int)
        assert mask[tuple(voxels.T)].all()  # every marked pixel lies on a mask voxel


@pytest.mark.bad_input
def test_an_empty_mask_gives_a_valid_object_without_identifiers(tiny_cohort: Path, tmp_path: Path) -> None:
    """Nothing found is a result too; the object names the pseudonym only, unless asked otherwise."""
    import highdicom as hd

    row, folder = _first_positive(tiny_cohort)
    image = nib.load(row["thrombus_mask"])
    nib.save(nib.Nifti1Image(np.zeros(image.shape, np.uint8), image.affine), tmp_path / "empty.nii.gz")
    write_segmentation(tmp_path / "empty.nii.gz", folder, tmp_path / "seg.dcm", row["subject"], row["center"], "test")
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert int(seg.pixel_array.sum()) == 0 and seg.NumberOfFrames == len(list(folder.iterdir()))
    assert str(seg.PatientName) == seg.PatientID == row["subject"]
    data = (tmp_path / "seg.dcm").read_bytes()
    needles = _identifiers(tiny_cohort, row["subject"])
    assert not [n for n in needles if n in data]
    write_segmentation(tmp_path / "empty.nii.gz", folder, tmp_path / "own.dcm", row["subject"], row["center"], "test",
                       original_identifiers=True)
    assert [n for n in needles if n in (tmp_path / "own.dcm").read_bytes()]


@pytest.mark.bad_input
def test_a_folder_changed_since_conversion_is_named(tiny_cohort: Path, tmp_path: Path) -> None:
    row, folder = _first_positive(tiny_cohort)
    with pytest.raises(SegmentationError, match=rf"subject {row['subject']}: the reference series that was converted"):
        write_segmentation(row["thrombus_mask"], folder, tmp_path / "seg.dcm", row["subject"], row["center"], "test",
                           series_uid_sha256="0" * 64)
    assert not (tmp_path / "seg.dcm").exists()
