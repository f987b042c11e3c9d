"""The synthetic cohort: deterministic, convertible by dcm2niix to the grids its truth promises, with
the sample sheet, identifiers and motion records the rest of the pipeline relies on, and hard enough
(a thrombus darker than its surroundings but far from the darkest thing in the brain).

Runs on the `tiny` preset (3 centers x 2 subjects); the whole file takes about 20-40 s on 2 cores.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import yaml
from scipy import ndimage

from thrombus.samples import read_sheet
from thrombus.synth import PresetError, generate_cohort, load_preset
from thrombus.synth.preset import parse_preset

ROOT = Path(__file__).resolve().parents[1]
HEADER = "subject\tcenter\tdicom_dir\tswi\tt2star\tdwi\tadc\tflair\tt1\tthrombus\tthrombus_mask\tinfarct_mask"
DEFAULT_PATTERNS = {
    "swi": "swi|swan|swip",
    "t2star": r"t2\*|t2star|t2_star|ffe|hemo|gre",
    "dwi": r"^(?!.*(adc|apparent|colfa|tensor|exp|(^|[^a-z])fa([^a-z]|$))).*(diff|dwi|trace|dti)",
    "adc": "adc|apparent",
    "flair": "flair|dark.fluid|tirm",
    "t1": "t1|mprage|tfl",
}


def _dcm2niix() -> str:
    found = shutil.which("dcm2niix", path=str(Path(sys.executable).parent)) or shutil.which("dcm2niix")
    if found is None:
        pytest.skip("dcm2niix is not installed (pip install dcm2niix)")
    return found


def _patterns() -> dict[str, str]:
    """The workflow's default SeriesDescription patterns (config/config.yaml when present)."""
    config = ROOT / "config" / "config.yaml"
    if config.exists():
        patterns = yaml.safe_load(config.read_text()).get("series_patterns")
        if patterns:
            return patterns
    return DEFAULT_PATTERNS


def _checksums(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.suffix != ".png"}


@pytest.fixture(scope="module")
def cohort(tiny_cohort: Path) -> Path:
    """The session's tiny cohort (generated with 2 worker processes), only read here."""
    sheet = read_sheet(tiny_cohort / "samples.tsv")
    assert len(sheet) == 6 and sorted(set(sheet["center"])) == ["A", "B", "C"]
    return tiny_cohort


@pytest.fixture(scope="module")
def truths(cohort: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(cohort.glob("truth/*/*/truth.json"))]


@pytest.fixture(scope="module")
def converted(cohort: Path, truths: list[dict], tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    """Every series converted the way the workflow does it: (subject, sequence) -> output folder."""
    binary = _dcm2niix()
    out = {}
    for truth in truths:
        for sequence, entry in truth["sequences"].items():
            folder = tmp_path_factory.mktemp(f"{truth['subject']}_{sequence}")
            series = cohort / "dicom" / truth["center"] / truth["subject"] / entry["series"]
            subprocess.run([binary, "-b", "y", "-z", "y", "-f", "%s", "-o", str(folder), str(series)],
                           check=True, capture_output=True)
            out[truth["subject"], sequence] = folder
    return out


def _nifti(folder: Path) -> nib.Nifti1Image:
    files = sorted(folder.glob("*.nii.gz"))
    assert len(files) == 1, f"dcm2niix wrote {files} in {folder}"
    return nib.load(files[0])


def test_same_seed_gives_identical_files_and_other_centers_do_not_matter(cohort: Path, tmp_path: Path) -> None:
    again = generate_cohort("tiny", tmp_path / "again", progress=False, threads=1)
    assert _checksums(cohort) == _checksums(again.out_dir)
    preset = yaml.safe_load((ROOT / "thrombus" / "data" / "synth" / "tiny.yaml").read_text())
    preset["centers"] = preset["centers"][:1]
    only_a = tmp_path / "only_a.yaml"
    only_a.write_text(yaml.safe_dump(preset))
    alone = _checksums(generate_cohort(only_a, tmp_path / "alone", progress=False).out_dir)
    full = _checksums(cohort)
    subject_files = [k for k in alone if k.startswith(("dicom/A/", "truth/A/"))]
    assert subject_files and all(alone[k] == full[k] for k in subject_files)
    other_seed = _checksums(generate_cohort(only_a, tmp_path / "seed", seed=7, progress=False).out_dir)
    assert all(other_seed.get(k) != full[k] for k in subject_files if k.endswith((".dcm", ".nii.gz")))


def test_every_series_converts_to_the_promised_grid(truths: list[dict], converted: dict) -> None:
    for truth in truths:
        for sequence, entry in truth["sequences"].items():
            image = _nifti(converted[truth["subject"], sequence])
            where = f"{truth['subject']} {sequence}"
            assert list(image.shape[:3]) == entry["shape"][:3], where
            assert np.allclose(image.header.get_zooms()[:3], entry["spacing_mm"], atol=1e-3), where
            assert "".join(nib.aff2axcodes(image.affine)) == entry["orientation"], where
            assert np.abs(image.affine - np.array(entry["affine"])).max() < 1e-3, where


def test_truth_masks_share_the_reference_grid(cohort: Path, truths: list[dict], converted: dict) -> None:
    for truth in truths:
        reference = _nifti(converted[truth["subject"], truth["reference"]])
        for name in ("thrombus", "infarct", "brain"):
            mask = nib.load(cohort / "truth" / truth["center"] / truth["subject"] / f"{name}.nii.gz")
            assert mask.shape == reference.shape[:3]
            assert np.abs(mask.affine - reference.affine).max() < 1e-3
            assert mask.get_data_dtype() == np.uint8
        brain = np.asarray(nib.load(cohort / "truth" / truth["center"] / truth["subject"] / "brain.nii.gz").dataobj)
        volume_ml = brain.sum() * np.prod(reference.header.get_zooms()[:3]) / 1000
        assert 1200 < volume_ml < 2300, f"{truth['subject']}: brain mask {volume_ml:.0f} ml"


def test_dwi_has_b0_and_b1000_in_one_series(truths: list[dict], converted: dict) -> None:
    dwi = [(t["subject"], converted[t["subject"], "dwi"]) for t in truths if "dwi" in t["sequences"]]
    assert dwi
    for subject, folder in dwi:
        assert _nifti(folder).shape[3] == 2, subject
        bval = next(folder.glob("*.bval")).read_text().split()
        assert [float(b) for b in bval] == [0.0, 1000.0], subject


def test_series_descriptions_match_exactly_one_default_pattern(cohort: Path) -> None:
    patterns = {name: re.compile(p, re.IGNORECASE) for name, p in _patterns().items()}
    descriptions = set()
    for name in ("tiny", "demo", "paper"):
        for center in load_preset(name).centers:
            for sequence, series in center.series.items():
                descriptions.add((sequence, series.description))
                if series.adc_description:
                    descriptions.add(("adc", series.adc_description))
    for path in cohort.glob("dicom/*/*/*/IM_0001.dcm"):
        header = pydicom.dcmread(path, stop_before_pixels=True)
        assert path.parent.name.startswith(f"{int(header.SeriesNumber):02d}_")
        descriptions.add((None, header.SeriesDescription))
    for sequence, description in descriptions:
        matched = [name for name, pattern in patterns.items() if pattern.search(description)]
        assert len(matched) == 1, f"{description!r} matches {matched}"
        assert sequence in (None, matched[0]), f"{description!r} is a {sequence} series but matches {matched[0]}"


def test_sample_sheet(cohort: Path, truths: list[dict]) -> None:
    lines = (cohort / "samples.tsv").read_text().splitlines()
    assert lines[0] == HEADER
    rows = [dict(zip(HEADER.split("\t"), line.split("\t"))) for line in lines[1:]]
    assert [r["subject"] for r in rows] == ["A001", "A002", "B001", "B002", "C001", "C002"]
    by_subject = {t["subject"]: t for t in truths}
    for row in rows:
        truth = by_subject[row["subject"]]
        assert re.fullmatch(r"[A-Za-z0-9]+", row["subject"]) and re.fullmatch(r"[A-Za-z0-9]+", row["center"])
        assert (cohort / row["dicom_dir"]).is_dir() and not Path(row["dicom_dir"]).is_absolute()
        assert row["thrombus"] == ("1" if truth["thrombus"]["present"] else "0")
        assert (cohort / row["thrombus_mask"]).exists() and (cohort / row["infarct_mask"]).exists()
        for sequence in ("swi", "t2star", "dwi", "adc", "flair", "t1"):
            cell = row[sequence]
            if sequence not in truth["sequences"]:
                assert cell == "", f"{row['subject']} {sequence}"
            elif row["center"] == "B":
                assert cell == "auto"
            else:
                assert cell == truth["sequences"][sequence]["series"] and (cohort / row["dicom_dir"] / cell).is_dir()
        assert truth["reference"] in truth["sequences"] and truth["reference"] not in truth["dropped"]
    assert {t["reference"] for t in truths if t["center"] == "C"} == {"t2star"}
    assert all("flair" not in t["sequences"] for t in truths if t["center"] == "B")


def test_identifiers_are_fake_recorded_and_never_the_pseudonym(cohort: Path) -> None:
    identifiers = json.loads((cohort / "identifiers.json").read_text())["subjects"]
    assert len(identifiers) == 6
    for entry in identifiers:
        header = pydicom.dcmread(next((cohort / "dicom").glob(f"*/{entry['subject']}/*/IM_0001.dcm")), stop_before_pixels=True)
        assert str(header.PatientName) == entry["PatientName"] and str(header.PatientName).startswith("SYNTH^")
        assert header.PatientID == entry["PatientID"] != entry["subject"]
        assert header.PatientBirthDate == entry["PatientBirthDate"]
        assert header.InstitutionName == entry["InstitutionName"]
        assert entry["subject"] not in (header.PatientID, str(header.PatientName), header.AccessionNumber)
        assert header.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert header.SOPClassUID == pydicom.uid.MRImageStorage


def test_negatives_have_empty_masks_and_positives_a_thrombus_and_infarct(cohort: Path, truths: list[dict]) -> None:
    for truth in truths:
        folder = cohort / "truth" / truth["center"] / truth["subject"]
        thrombus = np.asarray(nib.load(folder / "thrombus.nii.gz").dataobj)
        infarct = np.asarray(nib.load(folder / "infarct.nii.gz").dataobj)
        if truth["thrombus"]["present"]:
            assert thrombus.sum() == truth["thrombus"]["voxels"] > 0
            assert ndimage.label(thrombus, np.ones((3, 3, 3)))[1] == 1, "a thrombus is one 26-connected piece"
            assert 5.0 <= truth["thrombus"]["length_mm"] <= 27.0
            assert infarct.sum() > 0
        else:
            assert thrombus.sum() == 0 and infarct.sum() == 0


def test_thrombus_is_darker_than_its_neighbourhood_but_not_the_darkest(cohort: Path, truths: list[dict], converted: dict) -> None:
    positives = [t for t in truths if t["thrombus"]["present"]]
    assert {t["reference"] for t in positives} == {"swi", "t2star"}
    for truth in positives:
        reference = _nifti(converted[truth["subject"], truth["reference"]])
        image = reference.get_fdata()
        folder = cohort / "truth" / truth["center"] / truth["subject"]
        thrombus = np.asarray(nib.load(folder / "thrombus.nii.gz").dataobj) > 0
        brain = np.asarray(nib.load(folder / "brain.nii.gz").dataobj) > 0
        distance = ndimage.distance_transform_edt(~thrombus, sampling=reference.header.get_zooms()[:3])
        inside = image[thrombus].mean()
        assert inside < 0.95 * image[(distance > 2) & (distance <= 5)].mean(), truth["subject"]
        darker = int((image[brain & (distance > 5)] < inside).sum())
        assert darker > 20 * thrombus.sum(), f"{truth['subject']}: only {darker} brain voxels darker than the thrombus"


def _on_grid(mask_image: nib.Nifti1Image, target: nib.Nifti1Image, motion: np.ndarray) -> np.ndarray:
    """A reference-grid mask looked up (nearest voxel) on another series' grid, undoing that series' motion."""
    index = np.indices(target.shape[:3]).reshape(3, -1)
    world = target.affine[:3, :3] @ index + target.affine[:3, 3:4]
    reference_world = np.linalg.inv(motion) @ np.vstack([world, np.ones(world.shape[1])])
    voxel = np.rint(np.linalg.inv(mask_image.affine) @ reference_world)[:3].astype(int)
    data = np.asarray(mask_image.dataobj)
    inside = np.all((voxel >= 0) & (voxel < np.array(data.shape)[:, None]), axis=0)
    out = np.zeros(index.shape[1], bool)
    out[inside] = data[tuple(voxel[:, inside])] > 0
    return out.reshape(target.shape[:3])


def test_infarct_restricts_diffusion_where_truth_and_recorded_motion_put_it(cohort: Path, truths: list[dict],
                                                                            converted: dict) -> None:
    checked = 0
    for truth in truths:
        if not truth["thrombus"]["present"] or "dwi" not in truth["sequences"]:
            continue
        folder = cohort / "truth" / truth["center"] / truth["subject"]
        dwi = _nifti(converted[truth["subject"], "dwi"])
        adc = _nifti(converted[truth["subject"], "adc"]).get_fdata()
        motion = np.array(truth["sequences"]["dwi"]["motion"]["matrix_ras"])
        infarct = _on_grid(nib.load(folder / "infarct.nii.gz"), dwi, motion)
        brain = ndimage.binary_erosion(_on_grid(nib.load(folder / "brain.nii.gz"), dwi, motion), iterations=2)
        b1000 = dwi.get_fdata()[..., 1]
        normal = brain & ~ndimage.binary_dilation(infarct, iterations=3) & (adc > 500) & (adc < 1100)
        # Thick coarse tiny slices dilute the lesion's edge, so its brighter / darker half is compared.
        assert 1.3 < np.percentile(b1000[infarct], 75) / np.median(b1000[normal]) < 3.0, truth["subject"]
        assert 350 < np.percentile(adc[infarct], 25) < 620, truth["subject"]
        assert 650 < np.median(adc[normal]) < 900, truth["subject"]
        checked += 1
    assert checked >= 2


def test_recorded_motion_is_the_motion_applied(cohort: Path, truths: list[dict], converted: dict) -> None:
    """The reference brain mask, moved by the recorded motion, fits the DWI b1000 better than unmoved or moved back."""
    for truth in truths:
        if "dwi" not in truth["sequences"]:
            continue
        dwi = _nifti(converted[truth["subject"], "dwi"])
        b1000 = dwi.get_fdata()[..., 1].ravel()
        brain = nib.load(cohort / "truth" / truth["center"] / truth["subject"] / "brain.nii.gz")
        motion = np.array(truth["sequences"]["dwi"]["motion"]["matrix_ras"])
        fit = {name: np.corrcoef(_on_grid(brain, dwi, matrix).ravel(), b1000)[0, 1]
               for name, matrix in (("recorded", motion), ("none", np.eye(4)), ("inverse", np.linalg.inv(motion)))}
        assert fit["recorded"] > max(fit["none"], fit["inverse"]), f"{truth['subject']}: {fit}"


@pytest.mark.parametrize(("change", "key"), [
    (lambda p: p.update(colour="red"), "colour"),
    (lambda p: p["centers"][0].update(n_subjects=-2), "centers[0].n_subjects"),
    (lambda p: p["centers"][1]["sequences"]["swi"].update(slice_thickness=2), "centers[1].sequences.swi.slice_thickness"),
    (lambda p: p["centers"][2].update(vendor="Acme"), "centers[2].vendor"),
])
@pytest.mark.bad_input
def test_bad_preset_is_refused_naming_the_key(change, key: str) -> None:
    preset = yaml.safe_load((ROOT / "thrombus" / "data" / "synth" / "tiny.yaml").read_text())
    change(preset)
    with pytest.raises(PresetError, match=re.escape(key)):
        parse_preset(preset, "test.yaml")


@pytest.mark.bad_input
def test_a_foreign_non_empty_folder_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "patient.dcm").write_bytes(b"real data")
    with pytest.raises(FileExistsError, match="holds no synthetic cohort"):
        generate_cohort("tiny", tmp_path, progress=False)
    assert (tmp_path / "patient.dcm").read_bytes() == b"real data"


@pytest.mark.bad_input
def test_unknown_preset_name_is_refused() -> None:
    with pytest.raises(PresetError, match="neither a built-in preset"):
        load_preset("huge")


def test_one_subject_alone_is_the_same_as_in_the_whole_cohort(cohort: Path, tmp_path: Path) -> None:
    from thrombus.synth.preset import PresetError

    alone = generate_cohort("tiny", tmp_path / "one", progress=False, only=["B002"])
    assert alone.n_subjects == 1
    files = _checksums(alone.out_dir)
    full = _checksums(cohort)
    subject_files = [k for k in files if k.startswith(("dicom/", "truth/"))]
    assert subject_files and all(k.startswith(("dicom/B/B002/", "truth/B/B002/")) for k in subject_files)
    assert all(files[k] == full[k] for k in subject_files)
    with pytest.raises(PresetError, match="no subject Z001"):
        generate_cohort("tiny", tmp_path / "none", progress=False, only=["Z001"])
