"""A BIDS dataset as input: `thrombus sheet --bids` writes the sheet, the convert step imports NIfTI."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from thrombus.bids_sheet import BidsError, sheet_from_bids, write_sheet
from thrombus.cli import main
from thrombus.convert import ConvertRequest, convert_subject
from thrombus.convert.nifti_source import NiftiSourceError
from thrombus.samples import SampleSheetError, link_sources, read_sheet, series_folder, subjects

AFFINE = np.diag([0.9, 0.9, 2.0, 1.0])


def _save(path: Path, data: np.ndarray, sidecar: dict | None = None, bvals: list[float] | None = None) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(np.float32), AFFINE), path)
    name = path.name.removesuffix(".nii.gz")
    if sidecar is not None:
        (path.parent / f"{name}.json").write_text(json.dumps(sidecar))
    if bvals is not None:
        (path.parent / f"{name}.bval").write_text(" ".join(f"{b:g}" for b in bvals))
    return data


@pytest.fixture
def dataset(tmp_path: Path) -> dict:
    """Two participants of two sites: 01 with SWI (acq-swi T2starw), FLAIR and a 4-D DWI with b-values and a
    sidecar carrying a patient's name; 02 with two sessions, the first with two T2* runs."""
    rng = np.random.default_rng(0)
    root = tmp_path / "ds"
    (root / "participants.tsv").parent.mkdir(parents=True)
    (root / "participants.tsv").write_text("participant_id\tsite\nsub-01\tLyon 1\nsub-02\tNantes\n")
    (root / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.9.0"}')
    shape = (12, 10, 6)
    images = {
        "swi": _save(root / "sub-01/anat/sub-01_acq-swi_T2starw.nii.gz", rng.uniform(50, 100, shape)),
        "flair": _save(root / "sub-01/anat/sub-01_FLAIR.nii.gz", rng.uniform(50, 100, shape)),
        # b=0 brighter than b=1000, as diffusion weighting only attenuates
        "dwi4d": _save(root / "sub-01/dwi/sub-01_dwi.nii.gz",
                       np.concatenate([rng.uniform(200, 300, (*shape, 1)), rng.uniform(50, 100, (*shape, 3))], axis=-1),
                       sidecar={"PatientName": "DOE^JANE", "EchoTime": 0.08}, bvals=[0, 1000, 1000, 1000]),
    }
    for session in ("1", "2"):
        _save(root / f"sub-02/ses-{session}/anat/sub-02_ses-{session}_run-1_T2starw.nii.gz", rng.uniform(50, 100, shape))
    images["t2star_run2"] = _save(root / "sub-02/ses-1/anat/sub-02_ses-1_run-2_T2starw.nii.gz", rng.uniform(50, 100, shape))
    (root / "derivatives/sub-01").mkdir(parents=True)  # skipped
    (root / "sub-01/anat/notes.txt").write_text("not an image")
    return {"root": root, "images": images}


def test_sheet_names_each_sequence_by_suffix_and_acquisition(dataset: dict, tmp_path: Path) -> None:
    sheet = sheet_from_bids(dataset["root"], center_column="site", relative_to=tmp_path)
    rows = sheet.set_index("subject")
    assert list(rows.index) == ["01", "02ses1", "02ses2"]
    assert rows.loc["01", "center"] == "Lyon1" and rows.loc["02ses1", "center"] == "Nantes"
    assert rows.loc["01", "swi"] == "anat/sub-01_acq-swi_T2starw.nii.gz" and rows.loc["01", "t2star"] == ""
    assert rows.loc["01", "dwi"] == rows.loc["01", "adc"] == "dwi/sub-01_dwi.nii.gz"  # ADC derived from the b-values
    assert rows.loc["01", "flair"] == "anat/sub-01_FLAIR.nii.gz"
    assert rows.loc["02ses1", "t2star"] == "anat/sub-02_ses-1_run-2_T2starw.nii.gz"  # the last run
    assert rows.loc["02ses1", "dicom_dir"] == "ds/sub-02/ses-1"  # relative: the dataset lies beside the sheet
    assert (rows["thrombus"] == "").all()  # new data: predicted, never trained on


def test_sheet_from_bids_feeds_the_sheet_reader_and_the_source_links(dataset: dict, tmp_path: Path) -> None:
    out = tmp_path / "samples.tsv"
    assert main(["sheet", "--bids", str(dataset["root"]), "--center", "X", "--out", str(out)]) == 0
    config = {"sequences": ["swi", "t2star", "dwi", "adc", "flair"], "reference_priority": ["swi", "t2star"]}
    rows = subjects(read_sheet(out), config)
    assert Path(series_folder(rows[0], "swi")) == dataset["root"] / "sub-01/anat/sub-01_acq-swi_T2starw.nii.gz"
    links = tmp_path / "links"
    link_sources(rows, root=links)
    assert (links / "X" / "01" / "swi").resolve() == (dataset["root"] / "sub-01/anat/sub-01_acq-swi_T2starw.nii.gz").resolve()
    before = out.read_text()
    assert main(["sheet", "--bids", str(dataset["root"]), "--center", "Y", "--out", str(out)]) != 0  # no --force
    assert out.read_text() == before


def test_nifti_import_keeps_voxels_derives_trace_and_adc_and_scrubs_the_sidecar(dataset: dict, tmp_path: Path) -> None:
    rows = sheet_from_bids(dataset["root"], center="X").set_index("subject")
    folder = Path(rows.loc["01", "dicom_dir"])
    requests = [ConvertRequest("01", "X", seq, folder, rows.loc["01", seq]) for seq in ("swi", "dwi", "adc", "flair")]
    record = convert_subject(requests, tmp_path / "out", tmp_path / "record.json")
    out = tmp_path / "out"
    np.testing.assert_array_equal(np.asarray(nib.load(out / "swi.nii.gz").dataobj), dataset["images"]["swi"].astype(np.float32))
    np.testing.assert_allclose(nib.load(out / "swi.nii.gz").affine, AFFINE)
    b1000 = dataset["images"]["dwi4d"][..., 1:].astype(np.float32)
    trace = np.asarray(nib.load(out / "dwi.nii.gz").dataobj)
    np.testing.assert_allclose(trace, np.exp(np.log(b1000).mean(axis=-1)), rtol=1e-4)
    adc = np.asarray(nib.load(out / "adc.nii.gz").dataobj)
    expected = np.log(dataset["images"]["dwi4d"][..., 0] / trace) / 1000 * 1e6
    np.testing.assert_allclose(adc, expected, rtol=1e-3, atol=1.0)
    sidecar = json.loads((out / "dwi.json").read_text())
    assert "PatientName" not in sidecar and "DOE" not in json.dumps(sidecar) and sidecar["EchoTime"] == 0.08
    assert "series_uid_sha256" not in sidecar["ThrombusConversion"]  # no UID known: voxels only
    assert record["params"]["swi"]["selection"] == "nifti" and record["qc"]["adc"]["note"].startswith("fallback: ADC")


@pytest.mark.bad_input
def test_a_nifti_without_orientation_is_refused_naming_it(tmp_path: Path) -> None:
    image = nib.Nifti1Image(np.ones((4, 4, 4), np.float32), None)
    image.header["qform_code"] = image.header["sform_code"] = 0
    nib.save(image, tmp_path / "sub-01_T2starw.nii.gz")
    request = ConvertRequest("01", "X", "t2star", tmp_path, "sub-01_T2starw.nii.gz")
    with pytest.raises(NiftiSourceError, match="subject 01, t2star: sub-01_T2starw.nii.gz has neither a qform nor an sform"):
        convert_subject([request], tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.bad_input
def test_a_4d_dwi_without_bvals_is_refused(tmp_path: Path) -> None:
    _save(tmp_path / "sub-01_dwi.nii.gz", np.ones((4, 4, 4, 3)))
    request = ConvertRequest("01", "X", "dwi", tmp_path, "sub-01_dwi.nii.gz")
    with pytest.raises(NiftiSourceError, match=r"is 4-D \(4, 4, 4, 3\) but has no .bval"):
        convert_subject([request], tmp_path / "out")


@pytest.mark.bad_input
def test_a_missing_nifti_and_a_folder_that_is_not_bids_are_named(tmp_path: Path) -> None:
    (tmp_path / "sheet.tsv").write_text("subject\tcenter\tdicom_dir\tswi\nS1\tX\t.\tgone_swi.nii.gz\n")
    config = {"sequences": ["swi"], "reference_priority": ["swi"]}
    with pytest.raises(SampleSheetError, match=r"S1, swi: NIfTI file .*gone_swi.nii.gz does not exist"):
        link_sources(subjects(read_sheet(tmp_path / "sheet.tsv"), config), root=tmp_path / "links")
    with pytest.raises(BidsError, match="no sub-\\* folder"):
        sheet_from_bids(tmp_path, center="X")


@pytest.mark.realdata
def test_isles_release_becomes_a_sheet_and_imports_unchanged(realdata: Path, tmp_path: Path) -> None:
    """ISLES 2022 as published (BIDS under rawdata/, lower-case suffixes): DWI, ADC and FLAIR found, and
    imported with their voxels and grids as given."""
    dataset = realdata / "nifti" / "isles22_sub-strokecase0009"
    sheet = sheet_from_bids(dataset, center="ISLES")
    write_sheet(sheet, tmp_path / "samples.tsv")
    row = read_sheet(tmp_path / "samples.tsv").iloc[0]
    assert row["subject"] == "strokecase0009" and row["swi"] == "" and row["t2star"] == ""
    requests = [ConvertRequest(row["subject"], "ISLES", seq, Path(row["dicom_dir"]), row[seq]) for seq in ("dwi", "adc", "flair")]
    convert_subject(requests, tmp_path / "out")
    for sequence in ("dwi", "adc", "flair"):
        source = nib.load(Path(row["dicom_dir"]) / row[sequence])
        imported = nib.load(tmp_path / "out" / f"{sequence}.nii.gz")
        assert imported.shape == source.shape
        np.testing.assert_allclose(imported.affine, source.affine, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(imported.dataobj), np.asarray(source.dataobj))
    assert json.loads((tmp_path / "out" / "dwi.json").read_text())["DiffusionBValue"] == 800
