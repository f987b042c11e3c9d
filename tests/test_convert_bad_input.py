"""Bad DICOM folders fail their own job with the center, subject and folder named, and leave no output."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from thrombus.convert import ConversionError, ConvertRequest, SeriesError, convert_sequence, convert_subject
from thrombus.samples import read_sheet


@pytest.fixture
def subject(tiny_cohort: Path, tmp_path: Path) -> tuple[str, str, Path, dict[str, str]]:
    """A private copy of the first subject of the tiny cohort: (subject, center, dicom_dir, series folders)."""
    sheet = read_sheet(tiny_cohort / "samples.tsv")
    row = sheet[(sheet["swi"] != "") & (sheet["swi"] != "auto")].iloc[0]
    dicom_dir = tmp_path / "dicom"
    shutil.copytree(row["dicom_dir"], dicom_dir)
    series = {s: row[s] for s in ("swi", "dwi", "adc", "flair", "t2star", "t1") if row[s]}
    return row["subject"], row["center"], dicom_dir, series


def _slices(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


def _remove_middle_slice(folder: Path, other: Path) -> None:
    files = _slices(folder)
    files[len(files) // 2].unlink()


def _mix_in_other_series(folder: Path, other: Path) -> None:
    shutil.copy(_slices(other)[0], folder / "ZZ_from_other_series.dcm")


def _add_text_file(folder: Path, other: Path) -> None:
    (folder / "notes.dcm").write_text("not an image\n")


def _truncate_a_file(folder: Path, other: Path) -> None:
    victim = _slices(folder)[1]
    with open(victim, "r+b") as handle:
        handle.truncate(victim.stat().st_size // 2)


def _empty_folder(folder: Path, other: Path) -> None:
    for path in _slices(folder):
        path.unlink()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_remove_middle_slice, "a slice is missing"),
        (_mix_in_other_series, "mixes 2 series"),
        (_add_text_file, "is not a readable DICOM file"),
        (_truncate_a_file, "is truncated"),
        (_empty_folder, "is empty"),
    ],
)
@pytest.mark.bad_input
def test_bad_series_is_refused_naming_subject_and_folder(
    subject: tuple[str, str, Path, dict[str, str]], tmp_path: Path, damage: Callable[[Path, Path], None], message: str
) -> None:
    name, center, dicom_dir, series = subject
    folder = dicom_dir / series["swi"]
    damage(folder, dicom_dir / series["dwi"])
    out = tmp_path / "out" / "swi.nii.gz"
    with pytest.raises(SeriesError) as raised:
        convert_sequence(ConvertRequest(name, center, "swi", dicom_dir, series["swi"]), out, out.with_suffix(".json"))
    text = str(raised.value)
    assert message in text
    assert f"center {center}, subject {name}, swi" in text
    assert str(folder) in text
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.bad_input
def test_missing_folder_is_refused(subject: tuple[str, str, Path, dict[str, str]], tmp_path: Path) -> None:
    name, center, dicom_dir, _ = subject
    with pytest.raises(SeriesError, match="does not exist; check the sample sheet"):
        convert_sequence(ConvertRequest(name, center, "swi", dicom_dir, "99_nothing"), tmp_path / "a.nii.gz", tmp_path / "a.json")


def test_auto_finds_the_series_by_pattern(subject: tuple[str, str, Path, dict[str, str]], tmp_path: Path) -> None:
    from conftest import REPO
    import yaml

    patterns = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["series_patterns"]
    name, center, dicom_dir, series = subject
    record = convert_sequence(
        ConvertRequest(name, center, "swi", dicom_dir, "auto", patterns), tmp_path / "a.nii.gz", tmp_path / "a.json"
    )
    assert Path(record["inputs"]["series_folder"]).name == series["swi"]


@pytest.mark.bad_input
def test_ambiguous_pattern_is_refused(subject: tuple[str, str, Path, dict[str, str]], tmp_path: Path) -> None:
    name, center, dicom_dir, _ = subject
    patterns = {"swi": ".", "dwi": "diff"}
    with pytest.raises(SeriesError, match="match"):
        convert_sequence(ConvertRequest(name, center, "swi", dicom_dir, "auto", patterns), tmp_path / "a.nii.gz", tmp_path / "a.json")


def _requests(subject: tuple[str, str, Path, dict[str, str]]) -> list[ConvertRequest]:
    name, center, dicom_dir, series = subject
    return [ConvertRequest(name, center, sequence, dicom_dir, folder) for sequence, folder in series.items()]


def test_a_subject_is_converted_whole_into_its_folder(subject: tuple[str, str, Path, dict[str, str]],
                                                      tmp_path: Path) -> None:
    out = tmp_path / "results" / subject[0]
    out.mkdir(parents=True)  # Snakemake may make the folder of a directory output before the job runs
    record = convert_subject(_requests(subject), out, tmp_path / "record.json")
    names = {p.name for p in out.iterdir()}
    assert names == {f"{s}{ext}" for s in subject[3] for ext in (".nii.gz", ".json")}
    assert set(record["outputs"]) == set(subject[3])
    assert record["outputs"]["swi"]["nifti"] == str(out / "swi.nii.gz")
    assert not list(out.parent.glob(".*")), "the staging folder was left behind"


@pytest.mark.bad_input
def test_one_bad_sequence_leaves_the_subject_unconverted_and_every_failure_is_named(
    subject: tuple[str, str, Path, dict[str, str]], tmp_path: Path
) -> None:
    name, center, dicom_dir, series = subject
    _remove_middle_slice(dicom_dir / series["swi"], dicom_dir / series["dwi"])
    out = tmp_path / "results" / name
    with pytest.raises(SeriesError, match=f"center {center}, subject {name}, swi"):
        convert_subject(_requests(subject), out)
    assert not out.exists() and not list(out.parent.glob(".*"))
    _empty_folder(dicom_dir / series["flair"], dicom_dir / series["dwi"])
    with pytest.raises(ConversionError) as raised:  # two broken series: one run names both
        convert_subject(_requests(subject), out)
    text = str(raised.value)
    assert "2 sequences failed" in text and "a slice is missing" in text and "is empty" in text
    assert str(dicom_dir / series["swi"]) in text and str(dicom_dir / series["flair"]) in text
    assert not out.exists()


def test_a_killed_attempts_staging_folder_is_replaced(subject: tuple[str, str, Path, dict[str, str]],
                                                      tmp_path: Path) -> None:
    from thrombus.io import staging_folder

    out = tmp_path / "results" / subject[0]
    leftover = staging_folder(out)
    leftover.mkdir(parents=True)
    (leftover / "swi.nii.gz").write_bytes(b"half written")
    convert_subject(_requests(subject)[:1], out)
    assert not leftover.exists() and {p.name for p in out.iterdir()} == {"swi.nii.gz", "swi.json"}


# --- real exports: what dcm2niix converts is converted ------------------------------------------------


def _without_pixels(source: Path, target: Path, series_uid: str | None = None, modality: str = "PR") -> None:
    """A DICOM object without pixel data made from `source`'s header (a presentation state, a private object)."""
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(source)
    del ds.PixelData
    ds.Modality, ds.SOPInstanceUID = modality, generate_uid()
    if series_uid is not None:
        ds.SeriesInstanceUID = series_uid
    ds.save_as(target)


def test_objects_without_pixel_data_are_skipped_and_listed(subject: tuple[str, str, Path, dict[str, str]],
                                                          tmp_path: Path) -> None:
    """A vendor's full export: a presentation state under the image series' UID and a private object of its own."""
    import pydicom

    name, center, dicom_dir, series = subject
    folder = dicom_dir / series["swi"]
    first = _slices(folder)[0]
    _without_pixels(first, folder / "PS_0001")  # same series UID
    _without_pixels(first, folder / "XX_0001", series_uid=pydicom.uid.generate_uid(), modality="OT")
    out = tmp_path / "out" / "swi.nii.gz"
    record = convert_sequence(ConvertRequest(name, center, "swi", dicom_dir, series["swi"]), out, out.with_suffix(".json"))
    assert out.is_file() and record["inputs"]["n_files"] == len(_slices(folder)) - 2
    assert record["qc"]["checks"] == ["skipped 1 object(s) of the series without pixel data: PS_0001"]


@pytest.mark.bad_input
def test_a_folder_of_objects_without_pixel_data_only_is_refused(subject: tuple[str, str, Path, dict[str, str]],
                                                               tmp_path: Path) -> None:
    name, center, dicom_dir, series = subject
    folder = dicom_dir / series["swi"]
    for path in _slices(folder):
        _without_pixels(path, path)
    with pytest.raises(SeriesError, match=r"holds no image: its \d+ DICOM objects have no pixel data"):
        convert_sequence(ConvertRequest(name, center, "swi", dicom_dir, series["swi"]), tmp_path / "a.nii.gz", tmp_path / "a.json")


@pytest.mark.bad_input
def test_gzipped_files_ask_to_be_decompressed(subject: tuple[str, str, Path, dict[str, str]], tmp_path: Path) -> None:
    import gzip

    name, center, dicom_dir, series = subject
    victim = _slices(dicom_dir / series["swi"])[2]
    victim.with_name(victim.name + ".gz").write_bytes(gzip.compress(victim.read_bytes()))
    victim.unlink()
    with pytest.raises(SeriesError, match=r"\.gz is gzip-compressed; decompress the series folder"):
        convert_sequence(ConvertRequest(name, center, "swi", dicom_dir, series["swi"]), tmp_path / "a.nii.gz", tmp_path / "a.json")


def test_a_symlinked_series_folder_is_found_under_auto(subject: tuple[str, str, Path, dict[str, str]],
                                                      tmp_path: Path) -> None:
    """A subject folder assembled from links to the archive's series folders (a loop among them too)."""
    from conftest import REPO
    import yaml

    patterns = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["series_patterns"]
    name, center, dicom_dir, series = subject
    linked = tmp_path / "linked"
    linked.mkdir()
    for folder in series.values():
        (linked / folder).symlink_to(dicom_dir / folder, target_is_directory=True)
    (linked / "loop").symlink_to(linked, target_is_directory=True)
    record = convert_sequence(ConvertRequest(name, center, "swi", linked, "auto", patterns), tmp_path / "a.nii.gz",
                              tmp_path / "a.json")
    assert Path(record["inputs"]["series_folder"]).name == series["swi"]


def test_slices_placed_by_private_tags_are_left_to_dcm2niix(subject: tuple[str, str, Path, dict[str, str]]) -> None:
    """Files without the standard position tags (UIH keeps them in a private sequence): not refused by our checks."""
    import dataclasses

    from thrombus.convert.series import check_slices, single_series

    name, center, dicom_dir, series = subject
    found = single_series(dicom_dir / series["swi"], "swi")
    assert check_slices(found, "swi") == []
    found.files = [dataclasses.replace(f, position=None) for f in found.files]
    (note,) = check_slices(found, "swi")
    assert note.startswith(f"slice checks left to dcm2niix: {len(found.files)} of {len(found.files)} files lack")


def test_dti_series_descriptions_match_the_dwi_pattern_and_their_derived_maps_do_not() -> None:
    import re

    from conftest import REPO
    import yaml

    patterns = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["series_patterns"]
    dwi, adc = re.compile(patterns["dwi"], re.IGNORECASE), re.compile(patterns["adc"], re.IGNORECASE)
    for description in ("DTI_30dir", "AX DTI 25 DIR", "ep2d_diff_mddw_20_p2", "DWI_SS_b1000", "ep2d_diff_tra_TRACEW"):
        assert dwi.search(description) and not adc.search(description), description
    for description in ("DTI_30dir_ADC", "DTI_30dir_FA", "DTI_30dir_ColFA", "DTI_30dir_TENSOR", "FA map DTI", "DTI_30dir_EXP"):
        assert not dwi.search(description), description


def test_adc_auto_without_a_scanner_adc_is_derived_from_the_dwi_series(subject: tuple[str, str, Path, dict[str, str]],
                                                                      tmp_path: Path) -> None:
    from conftest import REPO
    import yaml

    patterns = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["series_patterns"]
    name, center, dicom_dir, series = subject
    shutil.rmtree(dicom_dir / series["adc"])
    record = convert_sequence(ConvertRequest(name, center, "adc", dicom_dir, "auto", patterns), tmp_path / "adc.nii.gz",
                              tmp_path / "adc.json")
    assert Path(record["inputs"]["series_folder"]).name == series["dwi"]
    assert record["qc"]["note"].startswith("fallback: ADC computed here from b=0 and b=")
    with pytest.raises(SeriesError, match="no series in .* matches the adc pattern"):
        convert_sequence(ConvertRequest(name, center, "adc", dicom_dir, "auto", patterns, derive_adc=False),
                         tmp_path / "b.nii.gz", tmp_path / "b.json")
