"""The config and sample-sheet schemas refuse broken input at start-up, naming the key or the row."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO, snakemake, write_config
from thrombus.samples import COLUMNS

HEADER = "\t".join(COLUMNS)


def _sheet(path: Path, *rows: str, header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _row(subject: str = "A001", center: str = "A", swi: str = "01_SWI", thrombus: str = "1") -> str:
    values = {c: "" for c in COLUMNS}
    values.update(subject=subject, center=center, dicom_dir=f"dicom/{subject}", swi=swi, dwi="02_DWI", thrombus=thrombus)
    return "\t".join(values[c] for c in COLUMNS)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    _sheet(tmp_path / "samples.tsv", _row(), _row("B001", "B"))
    for subject in ("A001", "B001"):
        for series in ("01_SWI", "02_DWI"):
            (tmp_path / "dicom" / subject / series).mkdir(parents=True)
    return tmp_path


def _dry_run(workdir: Path, **config: object) -> tuple[int, str]:
    cfg = write_config(workdir / "config.yaml", samples=str(workdir / "samples.tsv"), **config)
    done = snakemake(workdir, "-n", "--configfile", str(cfg), timeout=120)
    return done.returncode, done.stdout + done.stderr


def test_valid_sheet_builds_the_dag(workdir: Path) -> None:
    code, output = _dry_run(workdir)
    assert code == 0, output
    assert "convert" in output


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"seed": -1}, "seed"),
        ({"sequences": ["swi", "perfusion"]}, "perfusion"),
        ({"reference_priority": []}, "reference_priority"),
        ({"colour": "blue"}, "colour"),
        ({"series_patterns": {"swi": "swi("}}, "series_patterns.swi"),
        ({"centers": {"A": {"reference_priority": ["pet"]}}}, "pet"),
        ({"tables": {"t": {"experiments": ["nosuchexperiment"]}}}, "nosuchexperiment"),
        ({"experiments": {"x": {"split": "loco", "model": {"architecture": "resnet50"}}}}, "resnet50"),
        ({"experiments": {"x": {"split": "loco", "train": {"iterationz": 3}}}}, "iterationz"),
        ({"experiments": {"x": {"split": "loco", "folds": [7]}}, "tables": {"t": {"experiments": ["x"]}}}, "folds"),
        ({"evaluation": {"subsets": {"s": ["perfusion"]}}, "tables": {"t": {"experiments": ["loco_gmd"], "subsets": ["s"]}}}, "perfusion"),
        ({"tables": {"t": {"experiments": ["loco_gmd"], "subsets": ["no_such_subset"]}}}, "no_such_subset"),
        ({"train": {"iterations": 0}}, "iterations"),
        ({"train": {"slab_depth": 4}}, "slab_depth"),
    ],
)
@pytest.mark.bad_input
def test_broken_config_is_refused_naming_the_key(workdir: Path, config: dict, expected: str) -> None:
    code, output = _dry_run(workdir, **config)
    assert code != 0
    assert expected in output


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ((_row("A-01"),), "row 0"),
        ((_row(thrombus="2"),), "'2' is not one of"),
        ((_row(), _row("A001", "B")), "A001 in rows 2, 3 (centers A, B)"),
        ((_row(), _row()), "A001 in rows 2, 3 (centers A, A)"),
        ((_row(swi=""),), "line 2 (subject A001, center A): none of the reference sequences swi, t2star"),
        ((_row(center="all"),), "line 2 (subject A001, center all): the center name 'all' is reserved"),
        ((_row(), _row("A002").replace("dicom/A002", "dicom/A001")),
         "subjects A001 (line 2) and A002 (line 3) point at the same scans"),
        ((_row(), _row("A009")), "center A, subject A009, swi: DICOM folder"),
    ],
)
@pytest.mark.bad_input
def test_broken_sheet_is_refused_naming_the_row(workdir: Path, rows: tuple[str, ...], expected: str) -> None:
    _sheet(workdir / "samples.tsv", *rows)
    code, output = _dry_run(workdir)
    assert code != 0
    assert expected in output


@pytest.mark.bad_input
def test_unknown_column_is_refused(workdir: Path) -> None:
    _sheet(workdir / "samples.tsv", _row() + "\tx", header=HEADER + "\tswj")
    code, output = _dry_run(workdir)
    assert code != 0
    assert "unknown column(s) swj" in output


@pytest.mark.bad_input
def test_missing_sheet_names_the_key(workdir: Path) -> None:
    cfg = write_config(workdir / "config.yaml", samples=str(workdir / "nowhere.tsv"))
    done = snakemake(workdir, "-n", "--configfile", str(cfg), timeout=120)
    assert done.returncode != 0
    assert "nowhere.tsv does not exist; set `samples` in the config" in done.stdout + done.stderr


def test_example_sheet_has_the_generator_columns() -> None:
    header = (REPO / "config" / "samples.tsv").read_text().splitlines()[0].split("\t")
    assert tuple(header) == COLUMNS


def test_the_train_schema_admits_every_training_option_and_each_loss_the_code_knows() -> None:
    """A new option or loss of TrainOptions must also be added to the schema, or the workflow refuses it."""
    import dataclasses

    import yaml

    from thrombus.training.options import LOSSES, OPTIMIZERS, TrainOptions

    train = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())["definitions"]["train"]["properties"]
    missing = {field.name for field in dataclasses.fields(TrainOptions)} - set(train)
    assert not missing, f"config.schema.yaml's train section lacks {sorted(missing)}"
    assert train["loss"]["enum"] == list(LOSSES) and train["optimizer"]["enum"] == list(OPTIMIZERS)
