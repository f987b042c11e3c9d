"""The glue the workflow rules call: predict a fold, evaluate it, assemble the tables, and their CLIs.

A tiny cohort is built on disk as the workflow leaves it: a sample sheet of six labelled subjects in
two centers, their harmonised stacks under `<root>/results/harmonise/<center>/<subject>/`, reference
masks on the stack grid, a leave-one-center-out split file and an untrained tiny checkpoint with its
postprocessing.json (only the plumbing is tested, so the weights need not mean anything).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from test_inference import HARMONISE, SHAPE, make_stack, untrained_checkpoint, write_stack
from thrombus.cli import main
from thrombus.evaluation.assemble import SMOKE_ITERATIONS, TableRequest, assemble_table
from thrombus.evaluation.fold import evaluate_fold, read_folds, write_fold
from thrombus.evaluation.tables import MATCHING_RULE
from thrombus.inference.fold import FoldRequest, predict_fold, subject_folder
from thrombus.inference.postprocess import Postprocessing
from thrombus.io import read_json, write_json
from thrombus.samples import read_sheet, subjects
from thrombus.training.card import CheckpointError
from thrombus.training.splits import SplitOptions, ensure_splits, labelled_subjects

#: (subject, center, thrombus-positive); A003 has an empty reference file, B002 none at all.
COHORT = (
    ("A001", "A", True), ("A002", "A", True), ("A003", "A", False),
    ("B001", "B", True), ("B002", "B", False), ("B003", "B", True),
)
CENTER_OF = {subject: center for subject, center, _ in COHORT}
#: Deliberately not in alphabetical order, so the tables' row order can be checked against it.
SUBSETS = {"no_flair": ["flair"], "all": []}
AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])


@dataclass(frozen=True)
class World:
    root: Path
    sheet: Path
    splits: Path
    checkpoint: Path
    postprocessing: Path
    truth: dict[str, Path]

    def stack_dir(self, subject: str, root: Path | None = None) -> Path:
        return (root or self.root) / "results" / "harmonise" / CENTER_OF[subject] / subject

    def predictions(self, fold: int) -> Path:
        """Where the workflow (and the overlays of `assemble_table`) put a fold's predictions."""
        return self.root / "results" / "heldout" / "loco" / f"fold{fold}"

    def request(self, fold: int, out_dir: Path, **changes: object) -> FoldRequest:
        values = {"sheet": self.sheet, "splits": self.splits, "fold": fold, "stacks_root": self.root,
                  "checkpoint": self.checkpoint, "postprocessing": self.postprocessing, "harmonise": HARMONISE,
                  "subsets": SUBSETS, "out_dir": out_dir, "threads": 1, "device": "cpu"}
        return FoldRequest(**{**values, **changes})


def write_sheet(path: Path, truth: dict[str, Path], masks: dict[str, str] | None = None) -> Path:
    """The sample sheet; `masks` replaces the thrombus_mask cell of some subjects."""
    masks = masks or {}
    lines = ["subject\tcenter\tdicom_dir\tswi\tthrombus\tthrombus_mask"]
    for subject, center, positive in COHORT:
        mask = masks.get(subject, str(truth[subject]) if subject in truth else "")
        lines.append(f"{subject}\t{center}\tdicom/{subject}\tauto\t{int(positive)}\t{mask}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("work")
    truth = {}
    for index, (subject, center, positive) in enumerate(COHORT):
        stack, mask = make_stack(100 + index, positive)
        folder = root / "results" / "harmonise" / center / subject
        write_stack(folder, stack, affine=AFFINE)
        if subject != "B002":
            truth[subject] = root / "truth" / f"{subject}.nii.gz"
            truth[subject].parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(mask, AFFINE), truth[subject])
    sheet = write_sheet(root / "samples.tsv", truth)
    splits = root / "results" / "splits" / "loco.json"
    ensure_splits(splits, labelled_subjects(subjects(read_sheet(sheet), {})), "loco", 1, SplitOptions())
    model = root / "results" / "models" / "loco" / "fold0"
    checkpoint = untrained_checkpoint(model / "best.pt")
    postprocessing = write_json(model / "postprocessing.json", Postprocessing(0.5, 0).to_dict())
    return World(root, sheet, splits, checkpoint, postprocessing, truth)


@pytest.fixture(scope="module")
def predicted(world: World) -> dict[int, dict]:
    """Both folds predicted with both subsets, where the workflow puts them."""
    return {fold: predict_fold(world.request(fold, world.predictions(fold))) for fold in (0, 1)}


def test_splits_hold_out_one_center_per_fold(world: World) -> None:
    folds = read_json(world.splits)["folds"]
    assert [fold["test"] for fold in folds] == [["A001", "A002", "A003"], ["B001", "B002", "B003"]]


# --- predict_fold -------------------------------------------------------------------------------------------


def test_predict_fold_writes_every_subject_and_subset_in_place(world: World, predicted: dict[int, dict]) -> None:
    for fold, listing in predicted.items():
        out = world.predictions(fold)
        assert read_json(out / "predictions.json") == json.loads(json.dumps(listing))
        test = read_json(world.splits)["folds"][fold]["test"]
        expected = {(subset, subject) for subset in SUBSETS for subject in test}
        assert {(p["subset"], p["subject"]) for p in listing["predictions"]} == expected
        assert len(listing["predictions"]) == len(expected)
        assert all(p["status"] == "ok" and p["center"] == CENTER_OF[p["subject"]] for p in listing["predictions"])
        assert listing["subsets"] == SUBSETS and listing["fold"] == fold
        for subset, subject in expected:
            folder = out / subset / CENTER_OF[subject] / subject
            assert folder == subject_folder(out, subset, CENTER_OF[subject], subject)
            record = read_json(folder / "record.json")
            assert record["outputs"] == {"probability": str(folder / "probability.nii.gz"), "mask": str(folder / "mask.nii.gz")}
            for path in record["outputs"].values():
                image = nib.load(path)
                assert image.shape == SHAPE
                np.testing.assert_allclose(image.affine, AFFINE)
            assert record["subject"] == subject and record["center"] == CENTER_OF[subject]
            flair = 0 if subset == "no_flair" else 1
            assert record["availability"] == {"susceptibility": 1, "dwi": 1, "adc": 1, "flair": flair}
            assert record["dropped_by_request"] == (["flair"] if subset == "no_flair" else [])
            assert record["threshold"] == 0.5 and record["postprocessing"]["source"] == str(world.postprocessing)
        assert sorted(p.name for p in out.iterdir()) == sorted(["predictions.json", *SUBSETS])
    leftovers = [p.name for p in world.predictions(0).parent.iterdir() if p.name.startswith(".")]
    assert leftovers == [], f"staging folders left beside the output: {leftovers}"
    # Removing FLAIR changes what the model sees.
    a = nib.load(world.predictions(0) / "all" / "A" / "A001" / "probability.nii.gz").get_fdata()
    b = nib.load(world.predictions(0) / "no_flair" / "A" / "A001" / "probability.nii.gz").get_fdata()
    assert not np.allclose(a, b)


def _no_summary(folder: Path) -> None:
    (folder / "stack.json").unlink()


def _all_zero(folder: Path) -> None:
    image = nib.load(folder / "stack.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(image.shape, dtype=np.float32), image.affine), folder / "stack.nii.gz")


def _truncated(folder: Path) -> None:
    data = (folder / "stack.nii.gz").read_bytes()
    (folder / "stack.nii.gz").write_bytes(data[: len(data) // 2])


def _not_gzip(folder: Path) -> None:
    (folder / "stack.nii.gz").write_bytes(b"this is not a NIfTI file" * 20)


@pytest.mark.parametrize("breakage", [_no_summary, _all_zero, _truncated, _not_gzip], ids=lambda f: f.__name__.strip("_"))
@pytest.mark.bad_input
def test_a_broken_stack_fails_its_subject_only(world: World, tmp_path: Path, breakage) -> None:  # type: ignore[no-untyped-def]
    stacks = tmp_path / "stacks"
    shutil.copytree(world.root / "results" / "harmonise", stacks / "results" / "harmonise")
    breakage(world.stack_dir("A002", stacks))
    out = tmp_path / "predict" / "fold0"
    listing = predict_fold(world.request(0, out, stacks_root=stacks, subsets={"all": []}))
    by_subject = {p["subject"]: p for p in listing["predictions"]}
    assert set(by_subject) == {"A001", "A002", "A003"}
    assert by_subject["A002"]["status"] == "failed" and "A002" in by_subject["A002"]["error"], by_subject["A002"]
    assert read_json(out / "predictions.json") == json.loads(json.dumps(listing))
    for subject in ("A001", "A003"):
        assert by_subject[subject]["status"] == "ok"
        assert (out / "all" / "A" / subject / "mask.nii.gz").exists()
    assert not (out / "all" / "A" / "A002").exists()
    assert [p.name for p in out.parent.iterdir()] == ["fold0"]


def test_a_subset_that_leaves_a_subject_the_same_channels_reuses_its_prediction(world: World, tmp_path: Path) -> None:
    """A002 has no FLAIR: removing it changes nothing, so no_flair copies the prediction of `all` (and says so);
    the subjects with FLAIR are predicted again, and the copy is what a prediction of its own gives."""
    stacks = tmp_path / "stacks"
    shutil.copytree(world.root / "results" / "harmonise", stacks / "results" / "harmonise")
    folder = world.stack_dir("A002", stacks)
    image = nib.load(folder / "stack.nii.gz")
    data = np.asarray(image.dataobj).copy()
    data[..., 3] = 0
    write_stack(folder, data, availability=[1, 1, 1, 0], affine=image.affine)
    out = tmp_path / "predict" / "fold0"
    listing = predict_fold(world.request(0, out, stacks_root=stacks))
    assert all(p["status"] == "ok" for p in listing["predictions"])
    records = {(subset, subject): read_json(out / subset / "A" / subject / "record.json") for subset in SUBSETS
               for subject in ("A001", "A002", "A003")}
    assert records[("no_flair", "A002")]["same_prediction_as_subset"] == "all"
    assert records[("no_flair", "A002")]["outputs"]["mask"] == str(out / "no_flair" / "A" / "A002" / "mask.nii.gz")
    assert all("same_prediction_as_subset" not in records[key] for key in records if key != ("no_flair", "A002"))
    copied = np.asarray(nib.load(out / "no_flair" / "A" / "A002" / "probability.nii.gz").dataobj)
    np.testing.assert_array_equal(copied, np.asarray(nib.load(out / "all" / "A" / "A002" / "probability.nii.gz").dataobj))
    alone = tmp_path / "alone" / "fold0"
    predict_fold(world.request(0, alone, stacks_root=stacks, subsets={"no_flair": ["flair"]}))
    np.testing.assert_array_equal(copied, np.asarray(nib.load(alone / "no_flair" / "A" / "A002" / "probability.nii.gz").dataobj))
    with_flair = [np.asarray(nib.load(out / subset / "A" / "A001" / "probability.nii.gz").dataobj) for subset in SUBSETS]
    assert not np.array_equal(*with_flair), "A001 has FLAIR: its two subsets are two predictions"


@pytest.mark.bad_input
def test_a_stack_harmonised_with_other_channels_fails_the_whole_fold(world: World, tmp_path: Path) -> None:
    """Harmonisation writes every configured channel (zero-filled when missing): a stack with other channels is stale."""
    stacks = tmp_path / "stacks"
    shutil.copytree(world.root / "results" / "harmonise", stacks / "results" / "harmonise")
    folder = world.stack_dir("A002", stacks)
    image = nib.load(folder / "stack.nii.gz")
    write_stack(folder, np.asarray(image.dataobj)[..., :3], ("susceptibility", "dwi", "adc"), affine=image.affine)
    out = tmp_path / "predict" / "fold0"
    with pytest.raises(CheckpointError, match=r"best\.pt.*A002.*lacks \['flair'\]"):
        predict_fold(world.request(0, out, stacks_root=stacks))
    assert not out.exists() and list(out.parent.iterdir()) == []


@pytest.mark.bad_input
def test_a_checkpoint_harmonised_otherwise_fails_the_whole_fold(world: World, tmp_path: Path) -> None:
    other = untrained_checkpoint(tmp_path / "histogram.pt", harmonise={**HARMONISE, "method": "histogram"})
    out = tmp_path / "predict" / "fold0"
    with pytest.raises(CheckpointError, match=r"histogram\.pt.*harmonise\.method"):
        predict_fold(world.request(0, out, checkpoint=other))
    assert not out.exists()
    assert list(out.parent.iterdir()) == [], "no staging folder is left behind"
    # The command reports it as one error and exits 1, again without an output folder.
    code = main(["predict-fold", "--sheet", str(world.sheet), "--stacks-root", str(world.root), "--splits", str(world.splits),
                 "--fold", "0", "--checkpoint", str(other), "--harmonise", json.dumps(HARMONISE), "--out-dir", str(out),
                 "--device", "cpu"])
    assert code == 1 and not out.exists()
    # The same checkpoint and harmonisation agree: predicted.
    predict_fold(world.request(0, out, checkpoint=other, harmonise={**HARMONISE, "method": "histogram"}, subsets={"all": []}))
    assert (out / "all" / "A" / "A001" / "mask.nii.gz").exists()


# --- evaluate_fold ------------------------------------------------------------------------------------------


@pytest.mark.bad_input
def test_evaluate_fold_scores_the_good_subjects_and_names_the_bad_ones(world: World, predicted: dict, tmp_path: Path) -> None:
    predictions = tmp_path / "fold0"
    shutil.copytree(world.predictions(0), predictions)
    # A001's no_flair mask off the reference grid (shifted by 5 mm).
    misplaced = predictions / "no_flair" / "A" / "A001" / "mask.nii.gz"
    image = nib.load(misplaced)
    shifted = AFFINE.copy()
    shifted[0, 3] = 5.0
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), shifted), misplaced)
    # A003's no_flair prediction failed upstream.
    listing = read_json(predictions / "predictions.json")
    for entry in listing["predictions"]:
        if (entry["subset"], entry["subject"]) == ("no_flair", "A003"):
            entry.update(status="failed", error="subject A003: something broke")
    write_json(predictions / "predictions.json", listing)
    # A002 is positive but its reference file is gone.
    missing = tmp_path / "gone" / "A002.nii.gz"
    sheet = write_sheet(tmp_path / "samples.tsv", world.truth, {"A002": str(missing)})

    result = evaluate_fold(sheet, predictions, "loco", 0, {"empty_penalty_mm": None})

    assert {(r["subset"], r["subject"]) for r in result.rows} == {("all", "A001"), ("all", "A003")}
    for row in result.rows:
        assert (row["experiment"], row["fold"], row["center"]) == ("loco", 0, "A")
        assert row["positive"] == (1 if row["subject"] == "A001" else 0)
    failures = {(f["subset"], f["subject"]): f for f in result.failures}
    assert set(failures) == {("no_flair", "A001"), ("all", "A002"), ("no_flair", "A002"), ("no_flair", "A003")}
    grid = failures[("no_flair", "A001")]
    assert grid["step"] == "evaluate" and "A001" in grid["error"] and str(misplaced) in grid["error"]
    assert "reference grid" in grid["error"]
    for subset in SUBSETS:
        gone = failures[(subset, "A002")]
        assert gone["step"] == "evaluate" and "A002" in gone["error"] and str(missing) in gone["error"]
    assert failures[("no_flair", "A003")] == {"experiment": "loco", "fold": 0, "subset": "no_flair", "center": "A",
                                              "subject": "A003", "step": "predict", "error": "subject A003: something broke"}

    table, record = tmp_path / "eval" / "fold0.tsv", tmp_path / "eval" / "fold0.json"
    write_fold(result, table, record, {"experiment": "loco", "fold": 0, "iterations": 10})
    written = pd.read_csv(table, sep="\t")
    assert list(written[["subset", "subject"]].itertuples(index=False, name=None)) == [("all", "A001"), ("all", "A003")]
    saved = read_json(record)
    assert saved["rows"] == 2 and saved["iterations"] == 10 and len(saved["failures"]) == 4
    assert read_folds([table], ["no_flair"]).empty and len(read_folds([table], ["all", "no_flair"])) == 2


def test_a_fold_with_nothing_scored_still_writes_a_readable_table(tmp_path: Path) -> None:
    from thrombus.evaluation.fold import FoldEvaluation

    table = tmp_path / "fold0.tsv"
    write_fold(FoldEvaluation(rows=[], failures=[{"subject": "X"}]), table, tmp_path / "fold0.json", {})
    assert read_folds([table], ["all"]).empty


def test_read_folds_keeps_identifiers_as_written(tmp_path: Path) -> None:
    """Centers and subjects are text in the sheet ("01", "007"); the per-fold TSV must not turn them into numbers."""
    from thrombus.evaluation.fold import FoldEvaluation

    row = {"experiment": "loco", "fold": 0, "subset": "all", "center": "01", "subject": "007", "dice": 0.5}
    table = tmp_path / "fold0.tsv"
    write_fold(FoldEvaluation(rows=[row], failures=[]), table, tmp_path / "fold0.json", {})
    rows = read_folds([table], ["all"])
    assert rows[["center", "subject"]].values.tolist() == [["01", "007"]]
    assert rows["fold"].tolist() == [0] and rows["dice"].tolist() == [0.5]


# --- assemble_table -----------------------------------------------------------------------------------------


def evaluate_all(world: World, out: Path, iterations: int, experiments: tuple[str, ...] = ("loco", "abl")) -> tuple[list[Path], list[Path]]:
    """Per-fold TSVs and records of `experiments` (all from the same predictions); A002's reference is missing."""
    sheet = write_sheet(out / "samples.tsv", world.truth, {"A002": str(out / "gone.nii.gz")})
    tables, records = [], []
    for experiment in experiments:
        for fold in (0, 1):
            result = evaluate_fold(sheet, world.predictions(fold), experiment, fold, {})
            table, record = out / experiment / f"fold{fold}.tsv", out / experiment / f"fold{fold}.json"
            write_fold(result, table, record, {"experiment": experiment, "fold": fold, "iterations": iterations, "device": "cpu"})
            tables.append(table)
            records.append(record)
    return tables, records


def table_request(world: World, tables: list[Path], records: list[Path], out: Path, **changes: object) -> TableRequest:
    values = {"name": "ablation", "title": "Sequence ablation", "experiments": ["loco", "abl"], "subsets": list(SUBSETS),
              "evaluations": tables, "records": records, "sheet": world.sheet, "stacks_root": world.root, "out_dir": out}
    return TableRequest(**{**values, **changes})


def test_assemble_table_orders_rows_states_failures_and_is_reproducible(world: World, predicted: dict, tmp_path: Path) -> None:
    tables, records = evaluate_all(world, tmp_path / "evaluation", iterations=SMOKE_ITERATIONS)
    out = tmp_path / "tables"
    written = assemble_table(table_request(world, tables, records, out))
    names = {path.relative_to(out).as_posix() for path in written}
    assert names == {"ablation.csv", "ablation.md", "ablation.tex", "ablation.html", "ablation_per_center.csv",
                     "ablation_per_center.md", "ablation_per_center.tex", "ablation_per_center.html", "ablation_subjects.tsv",
                     "ablation_paired.csv", "ablation_paired.md", "ablation_paired.tex", "ablation_paired.html",
                     "figures/ablation_boxplots.png", "figures/ablation_overlays.png"}
    assert all(path.stat().st_size > 0 for path in written)
    for figure in ("figures/ablation_boxplots.png", "figures/ablation_overlays.png"):
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    overall = pd.read_csv(out / "ablation.csv")
    assert list(overall[["experiment", "subset"]].itertuples(index=False, name=None)) == [
        ("loco", "no_flair"), ("loco", "all"), ("abl", "no_flair"), ("abl", "all")]
    assert overall["n"].tolist() == [5, 5, 5, 5], "A002 is not scored in either subset"
    assert overall["n_positive"].tolist() == [3, 3, 3, 3]
    per_center = pd.read_csv(out / "ablation_per_center.csv")
    assert list(per_center[["experiment", "subset", "center"]].itertuples(index=False, name=None)) == [
        (experiment, subset, center) for experiment in ("loco", "abl") for subset in SUBSETS for center in ("A", "B", "all")]
    assert per_center[per_center["center"] == "A"]["n"].tolist() == [2, 2, 2, 2]
    subjects_tsv = pd.read_csv(out / "ablation_subjects.tsv", sep="\t")
    assert len(subjects_tsv) == 20 and "A002" not in set(subjects_tsv["subject"])

    for name in ("ablation.md", "ablation_per_center.md"):
        md = (out / name).read_text()
        assert f"- {MATCHING_RULE}" in md
        for experiment in ("loco", "abl"):
            for subset in SUBSETS:
                line = next(line for line in md.splitlines()
                            if line.startswith(f"- not scored: {experiment} fold 0, subset {subset}, subject A002 (center A)"))
                assert "evaluate failed" in line and str(tmp_path / "evaluation" / "gone.nii.gz") in line
        assert sum(line.startswith("- not scored:") for line in md.splitlines()) == 4
        assert "SMOKE RUN" not in md, f"{SMOKE_ITERATIONS} iterations is not a smoke run"
    tex = (out / "ablation.tex").read_text()
    assert "not scored: loco fold 0, subset all, subject A002" in tex and "SMOKE RUN" not in tex
    # abl's predictions are loco's: every pair agrees, so each difference and its interval is exactly 0
    paired = pd.read_csv(out / "ablation_paired.csv")
    assert paired[["experiment", "subset", "reference"]].values.tolist() == [["abl", s, "loco"] for s in SUBSETS]
    assert paired["n_pairs"].tolist() == [5, 5] and paired["n_positive"].tolist() == [3, 3]
    for column in ("detection_difference", "detection_difference_ci_low", "detection_difference_ci_high", "dice_difference"):
        assert paired[column].tolist() == [0.0, 0.0], column
    assert paired["mcnemar_p"].tolist() == [1.0, 1.0]
    assert "not scored: loco fold 0, subset all, subject A002" in (out / "ablation_paired.md").read_text()

    stable = ("ablation.csv", "ablation.md", "ablation.tex", "ablation.html", "ablation_per_center.csv",
              "ablation_per_center.md", "ablation_per_center.tex", "ablation_per_center.html", "ablation_subjects.tsv",
              "ablation_paired.csv", "ablation_paired.md", "ablation_paired.tex", "ablation_paired.html")
    before = {name: (out / name).read_bytes() for name in stable}
    assemble_table(table_request(world, tables, records, out))
    assert {name: (out / name).read_bytes() for name in stable} == before
    elsewhere = tmp_path / "again"
    assemble_table(table_request(world, tables, records, elsewhere, overlays=False))
    assert {name: (elsewhere / name).read_bytes() for name in stable} == before


def test_smoke_runs_are_labelled_and_overlays_can_be_turned_off(world: World, predicted: dict, tmp_path: Path) -> None:
    tables, records = evaluate_all(world, tmp_path / "evaluation", iterations=SMOKE_ITERATIONS - 1, experiments=("loco",))
    out = tmp_path / "tables"
    written = assemble_table(table_request(world, tables, records, out, experiments=["loco"], subsets=["all"], overlays=False))
    assert (out / "figures" / "ablation_overlays.png") in written and (out / "figures" / "ablation_overlays.png").exists()
    for name in ("ablation.md", "ablation_per_center.md", "ablation.tex"):
        assert f"SMOKE RUN: models trained for {SMOKE_ITERATIONS - 1} iterations only" in (out / name).read_text()
    # Failures of a subset the table does not show are not this table's business.
    md = (out / "ablation.md").read_text()
    assert "subset all, subject A002" in md and "subset no_flair" not in md
    assert pd.read_csv(out / "ablation.csv")[["experiment", "subset"]].values.tolist() == [["loco", "all"]]
    assert "one experiment (loco): nothing to compare" in (out / "ablation_paired.md").read_text()
    # a report page without rows reads as broken: it gets one saying why
    assert "<td>nothing to compare: the notes say why</td>" in (out / "ablation_paired.html").read_text()
    assert pd.read_csv(out / "ablation_paired.csv").empty


# --- the commands -------------------------------------------------------------------------------------------


def test_commands_run_end_to_end(world: World, predicted: dict, tmp_path: Path) -> None:
    card = write_json(tmp_path / "model_card.json", {"result": {"iterations": 20, "device": "cpu"}})
    evaluation = tmp_path / "results" / "evaluation" / "loco"
    for fold in (0, 1):
        code = main(["evaluate", "--sheet", str(world.sheet), "--predictions", str(world.predictions(fold)),
                     "--experiment", "loco", "--fold", str(fold), "--card", str(card),
                     "--options", json.dumps({"empty_penalty_mm": None, "overlays": True, "subsets": SUBSETS}),
                     "--out", str(evaluation / f"fold{fold}.tsv"), "--record", str(evaluation / f"fold{fold}.json")])
        assert code == 0
        record = read_json(evaluation / f"fold{fold}.json")
        assert (record["experiment"], record["fold"], record["iterations"], record["device"]) == ("loco", fold, 20, "cpu")
        assert record["rows"] == 6 and record["failures"] == []
    out = tmp_path / "results" / "tables"
    code = main(["tables", "--table", "main", "--title", "Leave one center out", "--experiments", "loco",
                 "--subsets", "all", "no_flair", "--evaluations", str(evaluation / "fold0.tsv"), str(evaluation / "fold1.tsv"),
                 "--records", str(evaluation / "fold0.json"), str(evaluation / "fold1.json"), "--sheet", str(world.sheet),
                 "--stacks-root", str(world.root), "--options", json.dumps({"overlays": True}), "--out-dir", str(out)])
    assert code == 0
    overall = pd.read_csv(out / "main.csv")
    assert overall[["experiment", "subset"]].values.tolist() == [["loco", "all"], ["loco", "no_flair"]]
    assert overall["n"].tolist() == [6, 6]
    md = (out / "main.md").read_text()
    assert md.startswith("# Leave one center out\n") and "SMOKE RUN" in md and "not scored" not in md
    for name in ("main_per_center.csv", "main_subjects.tsv", "figures/main_boxplots.png", "figures/main_overlays.png"):
        assert (out / name).stat().st_size > 0
    # predict-fold as the infer rule calls it.
    predictions = tmp_path / "results" / "heldout" / "loco" / "fold1"
    code = main(["predict-fold", "--sheet", str(world.sheet), "--stacks-root", str(world.root), "--splits", str(world.splits),
                 "--fold", "1", "--checkpoint", str(world.checkpoint), "--postprocessing", str(world.postprocessing),
                 "--harmonise", json.dumps(HARMONISE), "--subsets", json.dumps({"all": []}), "--out-dir", str(predictions),
                 "--device", "cpu"])
    assert code == 0
    assert [p["status"] for p in read_json(predictions / "predictions.json")["predictions"]] == ["ok"] * 3
    assert np.array_equal(nib.load(predictions / "all" / "B" / "B001" / "mask.nii.gz").get_fdata(),
                          nib.load(world.predictions(1) / "all" / "B" / "B001" / "mask.nii.gz").get_fdata())


@pytest.mark.bad_input
def test_a_table_where_every_subject_failed_says_so_and_lists_them(tmp_path: Path) -> None:
    """All subjects of every fold failed: the tables are still written, empty, with each failure noted."""
    from thrombus.evaluation.assemble import TableRequest, assemble_table
    from thrombus.evaluation.fold import FoldEvaluation
    from thrombus.evaluation.tables import NOTHING_SCORED

    failure = {"experiment": "loco", "fold": 0, "subset": "all", "subject": "A007", "center": "A",
               "step": "predict", "error": "stack is 4-D"}
    table, record = tmp_path / "fold0.tsv", tmp_path / "fold0.json"
    write_fold(FoldEvaluation(rows=[], failures=[failure]), table, record, {"experiment": "loco", "fold": 0})
    request = TableRequest("t", "T", ["loco"], ["all"], [table], [record], tmp_path / "samples.tsv", tmp_path,
                           tmp_path / "out")
    assemble_table(request)
    for suffix in (".md", "_per_center.md", ".tex"):
        text = (tmp_path / "out" / f"t{suffix}").read_text()
        assert NOTHING_SCORED in text and "A007" in text and "stack is 4-D" in text, suffix
    assert pd.read_csv(tmp_path / "out" / "t.csv").empty


# --- paper-report: a run's tables kept beside RESULTS.md --------------------------------------------------------


def test_paper_report_keeps_a_runs_tables_and_provenance_and_results_renders_them(
    world: World, predicted: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import yaml

    from thrombus.ladder import render_results
    from thrombus.paper_report import render_stored

    run = tmp_path / "run"
    tables, records = evaluate_all(world, tmp_path / "evaluation", iterations=600)
    assemble_table(table_request(world, tables, records, run / "results" / "tables", overlays=False))
    for index, (experiment, fold) in enumerate([("loco", 0), ("loco", 1), ("abl", 0), ("abl", 1)]):
        card = {"code": {"git_commit": ("a" if index < 3 else "b") * 40}, "training": {"seed": 5},
                "result": {"iterations": 600, "seconds": 500.0 + index, "device": "cpu", "threads": 2}}
        write_json(run / "results" / "models" / experiment / f"fold{fold}" / "model_card.json", card)
        bench = run / "logs" / "benchmarks" / "train" / experiment / f"fold{fold}.tsv"
        bench.parent.mkdir(parents=True, exist_ok=True)
        bench.write_text("s\th:m:s\tmax_rss\n120.5\t0:02:00\t10\n")
    for table, seconds in (("ablation", 3.5), ("not_collected", 999.0)):  # only the store's tables count
        (run / "logs" / "benchmarks" / "tables").mkdir(parents=True, exist_ok=True)
        (run / "logs" / "benchmarks" / "tables" / f"{table}.tsv").write_text(f"s\th:m:s\tmax_rss\n{seconds}\t0:00:03\t10\n")
    base, overlay = tmp_path / "config.yaml", tmp_path / "paper.yaml"
    base.write_text(yaml.safe_dump({"seed": 5, "train": {"iterations": 300}}))
    overlay.write_text(yaml.safe_dump({"train": {"iterations": 600}, "tables": {
        "ablation": {"title": "Sequence ablation", "experiments": ["loco", "abl"], "subsets": list(SUBSETS)}}}))
    store = tmp_path / "RESULTS.paper.json"
    assert main(["paper-report", "--root", str(run), "--config", str(base), str(overlay), "--ran-by", "make paper",
                 "--remark", "the test suite ran beside fold 1", "--store", str(store)]) == 0
    (kept,) = read_json(store)["runs"]
    assert kept["iterations"] == 600 and kept["seed"] == 5 and kept["ran_by"] == "make paper"
    assert [(m["experiment"], m["fold"], m["commit"][:1]) for m in kept["models"]] == [
        ("abl", 0, "a"), ("abl", 1, "b"), ("loco", 0, "a"), ("loco", 1, "a")]
    assert kept["rule_seconds"] == {"train": 482.0, "tables": 3.5}
    assert MATCHING_RULE in kept["notes"] and len(kept["notes"]) == len(set(kept["notes"]))
    assert kept["tables"][0]["notes"] == [], "one table: every note is common"
    (table,) = kept["tables"]
    assert table["table"].startswith("| experiment | subset |") and "# Sequence ablation" not in table["table"]
    assert table["paired"].startswith("| experiment | subset | against |") and "| abl | all | loco |" in table["paired"]

    section = "\n".join(render_stored(tmp_path / "RESULTS.md"))
    assert "## The paper's tables" in section and "### Sequence ablation" in section
    assert "aaaaaaaaaaaa (3 models), bbbbbbbbbbbb (1 model)" in section and "train 8 min" in section
    assert section.count(MATCHING_RULE) == 1, "each note once"
    assert "\n- the test suite ran beside fold 1\n" in section
    assert render_stored(tmp_path / "elsewhere" / "RESULTS.md") == [], "no store, no section"
    context = {"command": "thrombus ladder", "date": "d", "rows": "r", "config": "c", "samples": "s", "seed": 5,
               "recipes": {}, "results": str(tmp_path / "RESULTS.md")}
    assert "### Sequence ablation" in render_results([], context)

    overlay.write_text(yaml.safe_dump({"train": {"iterations": 600}, "tables": {
        "ablation": {"title": "Sequence ablation", "experiments": ["loco", "abl"], "subsets": list(SUBSETS)},
        "monocentric": {"title": "Monocentric", "experiments": ["mono"], "subsets": ["all"]}}}))
    assert main(["paper-report", "--root", str(run), "--config", str(base), str(overlay), "--ran-by", "make paper",
                 "--tables", "ablation", "--store", str(store)]) == 0
    assert read_json(store)["runs"][0]["tables_not_run"] == ["monocentric"]
    assert "Tables of the config this run did not make: monocentric." in "\n".join(render_stored(tmp_path / "RESULTS.md"))
    assert main(["paper-report", "--root", str(run), "--config", str(base), str(overlay), "--ran-by", "x",
                 "--tables", "nope", "--store", str(tmp_path / "other.json")]) == 1
    assert "--tables nope: not tables of the config" in caplog.text

    # a second table of one experiment: its own notes stay under it, the paired file's "nothing to compare" is left out
    assemble_table(table_request(world, tables[:2], records[:2], run / "results" / "tables", name="single",
                                 experiments=["loco"], overlays=False))
    overlay.write_text(yaml.safe_dump({"train": {"iterations": 600}, "tables": {
        "ablation": {"title": "Sequence ablation", "experiments": ["loco", "abl"], "subsets": list(SUBSETS)},
        "single": {"title": "Method alone", "experiments": ["loco"], "subsets": list(SUBSETS)}}}))
    assert main(["paper-report", "--root", str(run), "--config", str(base), str(overlay), "--ran-by", "make paper",
                 "--store", str(store)]) == 0
    (two,) = read_json(store)["runs"]
    assert MATCHING_RULE in two["notes"] and all("nothing to compare" not in n for t in two["tables"] for n in t["notes"])
    assert any(n.startswith("models trained on: cpu; 10 scored") for n in two["tables"][1]["notes"])
    assert any(n.startswith("models trained on: cpu; 20 scored") for n in two["tables"][0]["notes"])
    (run / "results" / "tables" / "ablation_paired.md").unlink()
    before = store.read_bytes()
    assert main(["paper-report", "--root", str(run), "--config", str(base), str(overlay), "--ran-by", "x", "--store", str(store)]) == 1
    assert f"{run / 'results' / 'tables' / 'ablation_paired.md'} is missing" in caplog.text
    assert store.read_bytes() == before, "a failed collection leaves the store as it was"


def test_paper_report_adds_a_later_runs_tables_beside_the_earlier_runs(tmp_path: Path) -> None:
    """A later session trains the tables a make paper run did not make: `--add` keeps the earlier run's
    tables (its working directory is gone) and a table collected again replaces the earlier one."""
    import yaml

    from thrombus.paper_report import render_stored

    def run_with(root: Path, commit: str, tables: dict[str, str]) -> None:
        for name, body in tables.items():
            (root / "results" / "tables").mkdir(parents=True, exist_ok=True)
            (root / "results" / "tables" / f"{name}.md").write_text(f"# {name}\n\n{body}\n\nNotes:\n- shared note\n")
            (root / "results" / "tables" / f"{name}_subjects.tsv").write_text(f"experiment\tfold\n{name}_e\t2\n")
            write_json(root / "results" / "models" / f"{name}_e" / "fold2" / "model_card.json",
                       {"code": {"git_commit": commit * 40}, "result": {"device": "cpu", "threads": 2}})

    config = tmp_path / "paper.yaml"
    config.write_text(yaml.safe_dump({"seed": 5, "tables": {name: {"title": f"Table {name}", "experiments": [f"{name}_e"]}
                                                           for name in ("multi", "ablation", "mono")}}))
    old, new = tmp_path / "old", tmp_path / "new"
    run_with(old, "a", {"multi": "| old multi |"})
    run_with(new, "b", {"ablation": "| new ablation |"})
    store = tmp_path / "RESULTS.paper.json"

    def report(root: Path, table: str, *extra: str) -> None:
        assert main(["paper-report", "--root", str(root), "--config", str(config), "--ran-by", f"run in {root.name}",
                     "--tables", table, "--store", str(store), *extra]) == 0

    report(old, "multi")
    write_json(store, read_json(store)["runs"][0])  # a store written before runs could be added: one run, top level
    report(new, "ablation", "--add")
    runs = read_json(store)["runs"]
    assert [[t["name"] for t in run["tables"]] for run in runs] == [["multi"], ["ablation"]]
    section = "\n".join(render_stored(tmp_path / "RESULTS.md"))
    assert "2 runs" in section and "**Run 1 of 2** (Table multi)" in section and "**Run 2 of 2** (Table ablation)" in section
    assert section.index("run in old") < section.index("| old multi |") < section.index("run in new") < section.index("| new ablation |")
    assert "aaaaaaaaaaaa (1 model)" in section and "bbbbbbbbbbbb (1 model)" in section
    assert "did not make: mono." in section and "did not make: ablation" not in section and "multi, mono" not in section

    run_with(new, "b", {"multi": "| new multi |"})  # the later run makes the earlier run's only table again
    report(new, "multi", "--add")
    runs = read_json(store)["runs"]
    assert [[t["name"] for t in run["tables"]] for run in runs] == [["ablation"], ["multi"]], "the emptied run is dropped"
    assert "| old multi |" not in "\n".join(render_stored(tmp_path / "RESULTS.md"))
    report(new, "ablation")  # without --add: this run alone
    assert len(read_json(store)["runs"]) == 1


def test_a_run_that_keeps_some_of_its_tables_is_told_which_were_replaced() -> None:
    from thrombus.paper_report import with_run

    earlier = {"tables": [{"name": "multi"}, {"name": "dropout"}], "remarks": ["ran beside the tests"]}
    (kept, later) = with_run([earlier], {"tables": [{"name": "dropout"}], "remarks": []})
    assert [t["name"] for t in kept["tables"]] == ["multi"] and later["tables"] == [{"name": "dropout"}]
    assert kept["remarks"][0] == "ran beside the tests" and "Its dropout table(s) were replaced" in kept["remarks"][1]
    assert earlier["tables"] == [{"name": "multi"}, {"name": "dropout"}], "the earlier run is not changed in place"
