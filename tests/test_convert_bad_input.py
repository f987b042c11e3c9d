"""Bad DICOM folders fail their own job with the center, subject and folder named, and leave no output."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from thrombus.convert import ConvertRequest, SeriesError, convert_sequence
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
