"""Training: split files, the slab loader, resuming, model cards and checkpoints, and a loss that falls.

Everything runs on small synthetic stacks written here with nibabel (a few seconds), laid out as the
workflow leaves them: results/harmonise/<center>/<subject>/stack.nii.gz + stack.json, masks and a sheet.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

from thrombus.model import ModelConfig
from thrombus.nifti import VolumeError
from thrombus.samples import read_sheet, subjects
from thrombus.training.card import CheckpointError, load_checkpoint, make_card
from thrombus.training.cli import add_train_parser
from thrombus.training.data import AugmentOptions, SlabDataset, SlabOptions, case_sources, load_cases
from thrombus.training.splits import (
    Labelled,
    SplitOptions,
    SplitsError,
    ensure_splits,
    labelled_subjects,
    make_splits,
    read_splits,
)
from thrombus.training.options import TrainOptions
from thrombus.training.trainer import TrainRun, batches, slab_dataset, train

CHANNELS = ("susceptibility", "dwi", "adc", "flair")
SHAPE = (40, 44, 12)
HARMONISE = {"channels": {name: [name] for name in CHANNELS}, "method": "zscore", "low_percentile": 0.5, "high_percentile": 99.5}
#: A network small enough for CPU steps of a few milliseconds, with every part of UpAttLLSTM.
TINY_MODEL = ModelConfig(base_width=4, depth=2, max_width=16, stem_width=4, fusion_key_width=4, norm_groups=2)


def write_subject(root: Path, center: str, subject: str, positive: bool, flair: bool, rng: np.random.Generator) -> Path:
    """A harmonised-looking stack (z-scored noise in an ellipsoid brain) and its thrombus mask.

    The thrombus is a dark 4 x 4 x 3 box on the susceptibility channel with a bright DWI / dark ADC
    region beside it, so a network can learn it within a few dozen steps.
    """
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij"))
    brain = (grid**2).sum(axis=0) < 0.8
    stack = rng.normal(0.0, 0.3, (*SHAPE, len(CHANNELS))).astype(np.float32) * brain[..., None]
    mask = np.zeros(SHAPE, dtype=np.uint8)
    if positive:
        x, y, z = rng.integers(14, 24), rng.integers(14, 26), rng.integers(4, 7)
        mask[x : x + 4, y : y + 4, z : z + 3] = 1
        stack[x : x + 4, y : y + 4, z : z + 3, 0] = -3.0
        stack[x + 4 : x + 10, y : y + 6, z : z + 3, 1] = 2.5
        stack[x + 4 : x + 10, y : y + 6, z : z + 3, 2] = -2.5
    if not flair:
        stack[..., 3] = 0.0
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    folder = root / "results" / "harmonise" / center / subject
    folder.mkdir(parents=True)
    nib.save(nib.Nifti1Image(stack, affine), folder / "stack.nii.gz")
    (folder / "stack.json").write_text(json.dumps({"channels": list(CHANNELS), "availability": [1, 1, 1, int(flair)]}))
    mask_path = root / "truth" / center / subject / "thrombus.nii.gz"
    mask_path.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(mask, affine), mask_path)
    return mask_path


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 centers x 4 subjects (3 with a thrombus); center B has no FLAIR. Returns the working directory."""
    root = tmp_path_factory.mktemp("training_cohort")
    rng = np.random.default_rng(7)
    rows = ["subject\tcenter\tdicom_dir\tswi\tdwi\tadc\tflair\tthrombus\tthrombus_mask"]
    for center in "ABC":
        for index in range(4):
            subject, positive = f"{center}{index:03d}", index != 3
            mask = write_subject(root, center, subject, positive, flair=center != "B", rng=rng)
            rows.append(f"{subject}\t{center}\tdicom/{subject}\tauto\tauto\tauto\t{'' if center == 'B' else 'auto'}\t{int(positive)}\t{mask}")
    (root / "samples.tsv").write_text("\n".join(rows) + "\n")
    return root


def sheet_subjects(root: Path) -> list[Any]:
    return subjects(read_sheet(root / "samples.tsv"), {})


def labelled_cohort(per_center: int = 12) -> list[Labelled]:
    """A demo-like subject list: three centers, a quarter without thrombus."""
    return [Labelled(f"{c}{i:03d}", c, i % 4 != 0) for c in "ABC" for i in range(per_center)]


# --- splits -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("experiment", ["monocentric", "loco"])
def test_splits_are_deterministic_and_partition_the_subjects(experiment: str) -> None:
    subjects_ = labelled_cohort()
    first = make_splits(subjects_, experiment, seed=3, options=SplitOptions())
    assert first == make_splits(subjects_, experiment, seed=3, options=SplitOptions())
    assert first["folds"] != make_splits(subjects_, experiment, seed=4, options=SplitOptions())["folds"]
    for fold in first["folds"]:
        parts = [set(fold[part]) for part in ("train", "val", "test")]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        assert all(parts), fold
        assert any(int(s[1:]) % 4 != 0 for s in fold["val"]), "a thrombus-positive case validates"


def test_monocentric_folds_stay_inside_their_center() -> None:
    folds = make_splits(labelled_cohort(), "monocentric", seed=1, options=SplitOptions())["folds"]
    assert [fold["test_centers"] for fold in folds] == [["A"], ["B"], ["C"]]
    for fold in folds:
        center = fold["test_centers"][0]
        members = fold["train"] + fold["val"] + fold["test"]
        assert sorted(members) == [f"{center}{i:03d}" for i in range(12)]
        assert (len(fold["train"]), len(fold["val"]), len(fold["test"])) == (8, 2, 2)


def test_loco_holds_out_exactly_one_center_per_fold() -> None:
    subjects_ = labelled_cohort()
    folds = make_splits(subjects_, "loco", seed=1, options=SplitOptions())["folds"]
    assert len(folds) == 3
    for fold in folds:
        held_out = fold["test_centers"][0]
        assert {s[0] for s in fold["test"]} == {held_out} and len(fold["test"]) == 12
        assert held_out not in {s[0] for s in fold["train"] + fold["val"]}
        assert {s[0] for s in fold["val"]} == {c for c in "ABC" if c != held_out}, "validation drawn from both training centers"


@pytest.mark.bad_input
def test_split_file_is_reused_and_refused_when_subjects_change(tmp_path: Path) -> None:
    path = tmp_path / "splits" / "loco.json"
    subjects_ = labelled_cohort(4)
    written = ensure_splits(path, subjects_, "loco", 1, SplitOptions())
    text = path.read_text()
    assert ensure_splits(path, subjects_, "loco", 99, SplitOptions()) == written, "an existing file is kept, whatever the seed"
    assert path.read_text() == text
    changed = subjects_[:-1] + [Labelled("C900", "C", True)]
    with pytest.raises(SplitsError, match=r"another subject list.*subjects no longer in the sheet C003.*delete the file"):
        ensure_splits(path, changed, "loco", 1, SplitOptions())
    assert path.read_text() == text, "refused before anything was written"
    with pytest.raises(SplitsError, match=r"center\(s\) D, which no fold tests"):
        ensure_splits(path, subjects_ + [Labelled("D000", "D", True)], "loco", 1, SplitOptions())
    relabelled = subjects_[:-1] + [Labelled(subjects_[-1].subject, "C", not subjects_[-1].positive)]
    with pytest.raises(SplitsError, match=subjects_[-1].subject):
        ensure_splits(path, relabelled, "loco", 1, SplitOptions())
    assert path.read_text() == text


def test_new_subjects_join_the_split_as_test_subjects_of_their_center(tmp_path: Path) -> None:
    """A center sends new scans: they are tested by the fold holding out their center, train nowhere."""
    path = tmp_path / "loco.json"
    subjects_ = labelled_cohort(4)
    written = ensure_splits(path, subjects_, "loco", 1, SplitOptions())
    grown = subjects_ + [Labelled("C900", "C", True), Labelled("A900", "A", False)]
    extended = ensure_splits(path, grown, "loco", 1, SplitOptions())
    assert extended["added"] == ["A900", "C900"] and read_splits(path, grown) == extended
    for before, after in zip(written["folds"], extended["folds"]):
        assert (after["train"], after["val"]) == (before["train"], before["val"]), "no training set changed"
        joining = {"A": ["A900"], "B": [], "C": ["C900"]}[after["test_centers"][0]]
        assert after["test"] == sorted(before["test"] + joining)
    assert ensure_splits(path, grown, "loco", 1, SplitOptions()) == extended, "kept as it is from then on"


# --- loader -------------------------------------------------------------------------------------------


def test_loader_gives_slabs_labels_and_availability(cohort: Path) -> None:
    cases = load_cases(case_sources(sheet_subjects(cohort), cohort), CHANNELS)
    dataset = SlabDataset(cases, SlabOptions(slab_depth=3, patch_size=(32, 36)), AugmentOptions(), seed=5)
    for index in range(20):
        item = dataset[index]
        assert item["image"].shape == (4, 3, 32, 36) and item["image"].dtype == torch.float32
        assert item["label"].shape == (1, 3, 32, 36)
        assert set(item["label"].unique().tolist()) <= {0.0, 1.0}
        case = next(c for c in cases if c.subject == item["subject"])
        assert torch.equal(item["availability"], case.availability)
        if item["subject"].startswith("B"):
            assert item["availability"].tolist() == [1, 1, 1, 0] and not item["image"][3].any(), "a missing FLAIR stays zero"
    assert torch.equal(dataset[7]["image"], SlabDataset(cases, dataset.options, AugmentOptions(), seed=5)[7]["image"])


def test_foreground_oversampling_rate(cohort: Path) -> None:
    cases = load_cases(case_sources(sheet_subjects(cohort), cohort), CHANNELS)
    dataset = SlabDataset(cases, SlabOptions(slab_depth=3, patch_size=(24, 24), foreground_probability=0.33),
                          AugmentOptions(enabled=False), seed=11)
    items = [dataset[index] for index in range(600)]
    foreground = [item for item in items if item["foreground"]]
    assert abs(len(foreground) / len(items) - 0.33) < 0.06
    assert all(item["label"].sum() > 0 for item in foreground), "a foreground slab shows the thrombus"
    assert all(not item["subject"].endswith("003") for item in foreground), "foreground slabs come from positive cases"


def test_hard_negative_slabs_are_centred_on_dark_susceptibility_voxels_that_are_not_thrombus(cohort: Path) -> None:
    cases = load_cases(case_sources(sheet_subjects(cohort), cohort), CHANNELS)
    options = SlabOptions(slab_depth=3, patch_size=(24, 24), foreground_probability=0.3, hard_negative_probability=0.4,
                          hard_negative_quantile=0.01)
    dataset = SlabDataset(cases, options, AugmentOptions(enabled=False), seed=11)
    for case, dark in zip(cases, dataset.dark):
        values = case.image[0][tuple(torch.from_numpy(dark).T)]
        cut = np.quantile(case.image[0][case.brain & (case.image[0] != 0)].numpy(), 0.01)
        assert len(dark) > 0 and (values <= cut).all() and not case.label[tuple(torch.from_numpy(dark).T)].any()
    dataset._jittered = lambda voxel, rng: tuple(int(v) for v in voxel)  # centres exactly on the chosen voxel
    rng = np.random.default_rng(0)
    picks = [dataset.choose(rng) for _ in range(1000)]
    background = [(case, centre) for case, centre, foreground in picks if not foreground]
    on_dark = [case.image[(0, *centre)] <= np.quantile(case.image[0][case.brain & (case.image[0] != 0)].numpy(), 0.01)
               and not case.label[centre] for case, centre in background]
    # 0.4 of all slabs, i.e. 0.4 / 0.7 of the non-thrombus ones, plus the 1% that random brain voxels hit anyway
    assert abs(np.mean(on_dark) - (0.4 / 0.7 + 0.01 * 0.3 / 0.7)) < 0.06
    with pytest.raises(ValueError, match="hard_negative_probability"):
        SlabOptions(foreground_probability=0.7, hard_negative_probability=0.4)


def test_hard_negatives_off_draw_the_same_slabs_as_before(cohort: Path) -> None:
    """hard_negative_probability 0 keeps every run's random stream (the default recipe is unchanged)."""
    cases = load_cases(case_sources(sheet_subjects(cohort), cohort), CHANNELS)
    plain = SlabDataset(cases, SlabOptions(slab_depth=3, patch_size=(24, 24)), AugmentOptions(), seed=3)
    assert plain.dark == []
    for index in (0, 5, 9):
        assert torch.equal(plain[index]["image"], SlabDataset(cases, plain.options, AugmentOptions(), seed=3)[index]["image"])


def test_each_clot_is_found_and_a_weighted_draw_takes_its_foreground_slabs_from_it(cohort: Path) -> None:
    from thrombus.training.clots import find_clots

    cases = load_cases(case_sources(sheet_subjects(cohort), cohort), CHANNELS)
    clots = find_clots(cases)
    assert [cases[clot.case].subject for clot in clots] == [case.subject for case in cases if case.positive]
    assert all(len(clot.voxels) == 48 and cases[clot.case].label[clot.centre] for clot in clots), "4 x 4 x 3 boxes"
    dataset = SlabDataset(cases, SlabOptions(slab_depth=3, patch_size=(24, 24), foreground_probability=0.5),
                          AugmentOptions(enabled=False), seed=11)
    dataset.clots, dataset.clot_weights = clots, np.eye(len(clots))[4]
    chosen = cases[clots[4].case].subject
    foreground = [item for item in (dataset[index] for index in range(200)) if item["foreground"]]
    assert len(foreground) > 60 and {item["subject"] for item in foreground} == {chosen}
    assert all(item["label"].sum() > 0 for item in foreground)


def test_a_missed_clot_gets_a_larger_share_than_a_fitted_one_and_the_fit_reads_the_model(cohort: Path) -> None:
    from thrombus.model import build_model
    from thrombus.training.clots import FLOOR, clot_fit, find_clots, sampling_weights

    shares = sampling_weights(np.array([0.0, 1.0, 0.5]))
    assert shares.sum() == pytest.approx(1.0) and shares[0] / shares[1] == pytest.approx((1 + FLOOR) / FLOOR)
    cases = load_cases(case_sources(sheet_subjects(cohort), cohort), CHANNELS)
    torch.manual_seed(0)
    model = build_model(TINY_MODEL)
    fits = clot_fit(model, cases, find_clots(cases), 3, (24, 24), torch.device("cpu"))
    assert fits.shape == (9,) and ((fits >= 0) & (fits <= 1)).all() and model.training
    with torch.no_grad():
        model.head.bias.fill_(20.0)  # p = 1 everywhere: each slab's Dice is 2 * clot / (slab + clot)
    full = clot_fit(model, cases, find_clots(cases), 3, (24, 24), torch.device("cpu"))
    labelled = np.array([float(cases[c.case].label[c.centre[0] - 1:c.centre[0] + 2, c.centre[1] - 12:c.centre[1] + 12,
                                                   c.centre[2] - 12:c.centre[2] + 12].sum()) for c in find_clots(cases)])
    assert full == pytest.approx(2 * labelled / (3 * 24 * 24 + labelled), rel=1e-4)
    with pytest.raises(ValueError, match="clot_reweight_every"):
        TrainOptions(clot_reweight_every=0)


def test_slab_dice_weighs_each_clot_slab_alike_and_skips_empty_slabs() -> None:
    from thrombus.training.optim import make_loss

    loss = make_loss("slab_dice_bce")
    target = torch.zeros(3, 1, 1, 4, 4)
    target[0, 0, 0, :2, :2] = 1  # a clot of 4 voxels
    target[1, 0, 0, :, :] = 1  # one of 16; slab 2 is empty
    logits = torch.full_like(target, -20.0)
    logits[1] = 20.0  # the large clot hit, the small one missed
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    assert float(loss(logits, target) - bce) == pytest.approx(0.5, abs=1e-4), "one of two clot slabs missed"
    batch = make_loss("dice_bce")(logits, target) - bce
    assert float(batch) == pytest.approx(1 - 32 / 36, abs=1e-4), "the batch Dice barely notices the missed clot"
    assert float(loss(logits[2:], target[2:])) == pytest.approx(float(torch.nn.functional.binary_cross_entropy_with_logits(logits[2:], target[2:])))
    both = make_loss("batch_slab_dice_bce")(logits, target) - bce
    assert float(both) == pytest.approx(0.5 + float(batch), abs=1e-4), "the batch Dice kept beside the per-slab one"


def test_foreground_prior_sets_the_head_and_nothing_else() -> None:
    from thrombus.model import build_model
    from thrombus.training.optim import set_foreground_prior

    torch.manual_seed(0)
    model = build_model(TINY_MODEL)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    set_foreground_prior(model, 0.01)
    changed = [name for name, value in model.state_dict().items() if not torch.equal(value, before[name])]
    assert changed == ["head.bias"] and model.head.bias.item() == pytest.approx(np.log(0.01 / 0.99))
    logits = model(torch.zeros(1, 4, 3, 16, 16), torch.ones(1, 4))
    assert torch.sigmoid(logits).mean() < 0.1
    with pytest.raises(ValueError, match="foreground_prior"):
        TrainOptions(foreground_prior=0.7)


def test_thick_slice_slabs_average_groups_of_slices_and_keep_the_thrombus(cohort: Path) -> None:
    cases = load_cases(case_sources(sheet_subjects(cohort), cohort), CHANNELS)
    case = next(c for c in cases if c.positive)
    assert case.slice_mm == pytest.approx(3.0)
    dataset = SlabDataset(cases, SlabOptions(slab_depth=3, patch_size=(24, 24)), AugmentOptions(enabled=False), seed=3)
    centre = tuple(int(v) for v in case.foreground[len(case.foreground) // 2])
    thin, thin_label = dataset.extract(case, centre, 1)
    image, label = dataset.extract(case, centre, 2)
    assert image.shape == thin.shape and label.shape == thin_label.shape
    z = centre[0]
    # the middle thick slice merges slices z-1 and z (start = z - 1*2 - 1 = z - 3: groups [z-3, z-2], [z-1, z], ...)
    expected = case.image[:, z - 1 : z + 1, centre[1] - 12 : centre[1] + 12, centre[2] - 12 : centre[2] + 12].mean(dim=1)
    assert torch.allclose(image[:, 1], expected)
    assert label[1].any(), "the merged slice holding the centre voxel is thrombus"
    assert label.sum() > 0 and set(label.unique().tolist()) <= {0, 1}


def test_thick_slices_are_drawn_only_where_a_subject_is_thin_enough() -> None:
    options = AugmentOptions(thick_slice_probability=1.0, thick_slice_mm=6.5)
    rng = np.random.default_rng(0)
    assert {options.slice_factor(2.0, rng) for _ in range(200)} == {2, 3}
    assert {options.slice_factor(2.4, rng) for _ in range(50)} == {2}
    assert {options.slice_factor(6.0, rng) for _ in range(50)} == {1}, "a 6 mm center is already as thick as simulated"
    assert AugmentOptions(enabled=False, thick_slice_probability=1.0).slice_factor(2.0, rng) == 1
    state = np.random.default_rng(1)
    AugmentOptions(thick_slice_probability=0.0).slice_factor(2.0, state)
    assert state.random() == np.random.default_rng(1).random(), "switched off, it draws nothing from the stream"


@pytest.mark.bad_input
def test_positive_subject_without_mask_is_refused(cohort: Path, tmp_path: Path) -> None:
    sheet = read_sheet(cohort / "samples.tsv")
    sheet.loc[0, "thrombus_mask"] = str(tmp_path / "nowhere.nii.gz")
    with pytest.raises(VolumeError, match=r"A000.*nowhere\.nii\.gz"):
        case_sources(subjects(sheet, {}), cohort)


# --- training, resuming, checkpoints ------------------------------------------------------------------


def quick_options(**changes: Any) -> TrainOptions:
    values = {"iterations": 4, "batch_size": 2, "val_every": 2, "slab_depth": 3, "patch_size": (32, 32), "learning_rate": 3e-3}
    return TrainOptions(**{**values, **changes})


def make_run(cohort: Path, out_dir: Path, options: TrainOptions, **changes: Any) -> TrainRun:
    """A run on centers A and B with C000 validating: the card is built as `thrombus train` builds it."""
    all_cases = {c.subject: c for c in load_cases(case_sources(sheet_subjects(cohort), cohort), CHANNELS)}
    train_cases = [case for name, case in all_cases.items() if name[0] in "AB"]
    card = make_card(TINY_MODEL, HARMONISE, {"slab_depth": options.slab_depth, "patch_size": list(options.patch_size)},
                     {**options.card_dict(), "seed": 1, "split": {"name": "test"}})
    values = {"train_cases": train_cases, "val_cases": [all_cases["C000"]], "model": TINY_MODEL, "options": options,
              "card": card, "out_dir": out_dir, "seed": 1, "threads": 1, "device": "cpu", "progress": False}
    return TrainRun(**{**values, **changes})


def test_batches_depend_only_on_seed_and_iteration(cohort: Path, tmp_path: Path) -> None:
    run = make_run(cohort, tmp_path, quick_options())
    from_start = [batch["image"] for batch in batches(slab_dataset(run), run, 0, 5, torch.device("cpu"))]
    resumed = [batch["image"] for batch in batches(slab_dataset(run), run, 3, 5, torch.device("cpu"))]
    workers = make_run(cohort, tmp_path, dataclasses.replace(run.options, num_workers=2))
    with_workers = [batch["image"] for batch in batches(slab_dataset(workers), workers, 3, 5, torch.device("cpu"))]
    assert len(resumed) == len(with_workers) == 2
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(from_start[3:], resumed, with_workers))


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.mark.fault
@pytest.mark.parametrize("reweight", [None, 3], ids=["per_subject", "clots_reweighted"])
def test_resumed_run_ends_with_the_same_weights(cohort: Path, tmp_path: Path, reweight: int | None) -> None:
    """Also with the clots re-weighted at 0 and 3: the run stopped at 2 resumes with the weights of 0."""
    options = quick_options(clot_reweight_every=reweight)
    train(make_run(cohort, tmp_path / "straight", options))
    stopped = train(make_run(cohort, tmp_path / "resumed", options, stop_after=2))
    assert stopped.iterations_done == 2 and not (tmp_path / "resumed" / "model_card.json").exists()
    train(make_run(cohort, tmp_path / "resumed", options, resume=True))
    straight, resumed = weights(tmp_path / "straight" / "latest.pt"), weights(tmp_path / "resumed" / "latest.pt")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[name], resumed[name]) for name in straight)
    log_straight = (tmp_path / "straight" / "training_log.csv").read_text().splitlines()
    log_resumed = (tmp_path / "resumed" / "training_log.csv").read_text().splitlines()
    assert [line.rsplit(",", 1)[0] for line in log_straight] == [line.rsplit(",", 1)[0] for line in log_resumed]
    for name in ("best.pt", "latest.pt", "model_card.json", "training_log.csv", "learning_curves.png"):
        assert (tmp_path / "resumed" / name).exists(), name


def test_too_few_positive_validation_subjects_choose_no_checkpoint(cohort: Path, tmp_path: Path, monkeypatch: Any) -> None:
    """One thrombus-positive validation subject (fewer than MIN_POSITIVES): best.pt is the final weights and says
    why; with the bar lowered to one, the validations choose again (best.pt is the iteration with the best Dice)."""
    from thrombus.inference import postprocess
    from thrombus.training import validation

    assert validation.MIN_POSITIVES == postprocess.MIN_POSITIVES  # checkpoint and postprocessing: one rule
    result = train(make_run(cohort, tmp_path / "few", quick_options(iterations=6)))
    assert result.best["iteration"] == 6 and result.best["selection"].startswith("latest weights: 1 thrombus-positive")
    best, latest = weights(tmp_path / "few" / "best.pt"), weights(tmp_path / "few" / "latest.pt")
    assert all(torch.equal(best[name], latest[name]) for name in latest)
    card = json.loads((tmp_path / "few" / "model_card.json").read_text())
    assert card["result"]["best"]["selection"] == result.best["selection"]

    monkeypatch.setattr(validation, "MIN_POSITIVES", 1)
    chosen = train(make_run(cohort, tmp_path / "chosen", quick_options(iterations=6)))
    rows = [r for r in csv_rows(tmp_path / "chosen" / "training_log.csv") if r["val_dice"]]
    top = max(float(r["val_dice"]) for r in rows)
    assert chosen.best["selection"] == "best validation Dice"
    assert chosen.best["iteration"] == min(int(r["iteration"]) for r in rows if float(r["val_dice"]) == top)
    assert torch.load(tmp_path / "chosen" / "best.pt", weights_only=True)["iteration"] == chosen.best["iteration"]


def csv_rows(path: Path) -> list[dict[str, str]]:
    import csv

    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.fault
def test_killed_between_latest_and_best_resumes_to_the_same_weights(cohort: Path, tmp_path: Path) -> None:
    """A kill after latest.pt but before best.pt was renamed (seen in the SIGKILL test): no best.pt and a
    stale temporary. The resumed run rewrites best.pt, sweeps the temporary and ends as a straight one."""
    options = quick_options()
    train(make_run(cohort, tmp_path / "straight", options))
    killed = tmp_path / "killed"
    train(make_run(cohort, killed, options, stop_after=2))
    (killed / "best.pt").unlink()
    (killed / ".best.pt.k1ll3d.pt").write_bytes(b"")
    train(make_run(cohort, killed, options, resume=True))
    for name in ("best.pt", "latest.pt"):
        straight, resumed = weights(tmp_path / "straight" / name), weights(killed / name)
        assert all(torch.equal(straight[key], resumed[key]) for key in straight), name
    assert not list(killed.glob(".*")), list(killed.glob(".*"))


@pytest.mark.bad_input
def test_checkpoint_of_another_configuration_is_refused(cohort: Path, tmp_path: Path) -> None:
    run = make_run(cohort, tmp_path, quick_options(iterations=2, val_every=2))
    train(run)
    expected = {**run.card, "model": {**run.card["model"], "base_width": 8},
                "harmonise": {**run.card["harmonise"], "method": "histogram"}}
    expected.pop("code")
    with pytest.raises(CheckpointError, match=r"best\.pt.*model\.base_width.*harmonise\.method"):
        load_checkpoint(tmp_path / "best.pt", expected)
    assert load_checkpoint(tmp_path / "best.pt", {"channels": list(CHANNELS)})["card"]["data"] == {"slab_depth": 3, "patch_size": [32, 32]}
    with pytest.raises(CheckpointError, match=r"training\.iterations.*train this configuration from the start.*remove "):
        train(make_run(cohort, tmp_path, quick_options(iterations=3, val_every=2), resume=True))


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
@pytest.mark.bad_input
def test_corrupted_checkpoint_is_refused(cohort: Path, tmp_path_factory: pytest.TempPathFactory, damage: str) -> None:
    out = tmp_path_factory.mktemp(f"damaged_{damage}")
    train(make_run(cohort, out, quick_options(iterations=1, val_every=1)))
    path = out / "best.pt"
    data = bytearray(path.read_bytes())
    damages: dict[str, Callable[[bytearray], bytes]] = {
        "truncate": lambda b: bytes(b[: len(b) // 2]),
        "flip": lambda b: bytes(b[: len(b) // 10]) + bytes(x ^ 0xFF for x in b[len(b) // 10 : len(b) // 10 + 64]) + bytes(b[len(b) // 10 + 64 :]),
        "garbage": lambda b: b"not a checkpoint at all\n" * 10,
    }
    path.write_bytes(damages[damage](data))
    with pytest.raises(CheckpointError, match=r"best\.pt.*(cannot be read|damaged)"):
        load_checkpoint(path, {})


def test_short_training_decreases_the_loss(cohort: Path, tmp_path: Path) -> None:
    options = quick_options(iterations=40, val_every=40, batch_size=4, learning_rate=2e-2, foreground_probability=0.6)
    train(make_run(cohort, tmp_path, options))
    rows = (tmp_path / "training_log.csv").read_text().splitlines()[1:]
    losses = [float(row.split(",")[1]) for row in rows]
    assert len(losses) == 40 and all(np.isfinite(losses))
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8]), losses
    card = json.loads((tmp_path / "model_card.json").read_text())
    assert card["channels"] == list(CHANNELS) and card["harmonise"]["method"] == "zscore"
    assert card["code"]["thrombus"] and card["result"]["iterations"] == 40
    assert np.isfinite(card["result"]["best"]["val_dice"])


def test_train_command_writes_every_output(cohort: Path, tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_train_parser(parser.add_subparsers(dest="command", required=True))
    splits = tmp_path / "splits" / "loco.json"
    args = parser.parse_args(["splits", "--sheet", str(cohort / "samples.tsv"), "--experiment", "loco", "--seed", "1", "--out", str(splits)])
    assert args.func(args) == 0
    ensure_splits(splits, labelled_subjects(sheet_subjects(cohort)), "loco", 1, SplitOptions())
    options = {"train": {"iterations": 2, "val_every": 1, "batch_size": 2, "slab_depth": 3, "patch_size": [32, 32],
                         "val_fraction": 0.2, "resume": False},
               "model": {key: value for key, value in TINY_MODEL.to_dict().items() if key != "channels"}}
    out = tmp_path / "model"
    args = parser.parse_args([
        "train", "--sheet", str(cohort / "samples.tsv"), "--stacks-root", str(cohort), "--splits", str(splits), "--fold", "1",
        "--options", json.dumps(options), "--harmonise", json.dumps(HARMONISE), "--out-dir", str(out), "--threads", "1",
        "--seed", "1", "--device", "cpu", "--quiet",
    ])
    assert args.func(args) == 0
    card = json.loads((out / "model_card.json").read_text())
    assert card["training"]["split"]["name"] == "test_center_B" and card["model"]["base_width"] == 4
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "latest.pt", "learning_curves.png", "model_card.json", "training_log.csv"]

    # the calibration stage after it: best.pt on the fold's validation subjects, into postprocessing.json
    from thrombus.inference.calibrate import add_calibrate_parser

    add_calibrate_parser(parser._subparsers._group_actions[0])
    args = parser.parse_args([
        "calibrate", "--sheet", str(cohort / "samples.tsv"), "--stacks-root", str(cohort), "--splits", str(splits), "--fold", "1",
        "--checkpoint", str(out / "best.pt"), "--out", str(out / "postprocessing.json"), "--threads", "1", "--device", "cpu",
        "--subsets", json.dumps({"all": [], "no_diffusion": ["dwi", "adc"]}), "--quiet",
    ])
    assert args.func(args) == 0
    post = json.loads((out / "postprocessing.json").read_text())
    assert post["chosen_on"] == card["training"]["split"]["val"] and post["chosen_on"]
    from thrombus.inference.postprocess import MIN_POSITIVES

    positives = sum(s.thrombus == "1" for s in sheet_subjects(cohort) if s.subject in post["chosen_on"])
    assert [(p["subset"], p["removed"]) for p in post["by_subset"]] == ([("no_diffusion", ["dwi", "adc"])] if positives >= MIN_POSITIVES else [])
    assert 0 < post["threshold"] < 1 and post["min_component_mm3"] >= 0
    assert post["weights_sha256"] == torch.load(out / "best.pt", weights_only=True)["weights_sha256"]


# --- starting from shipped or earlier weights (train.init_from) ----------------------------------------


def test_a_run_started_from_a_checkpoint_begins_at_its_weights_and_records_them(cohort: Path, tmp_path: Path) -> None:
    from thrombus.training.pretrained import export_weights, initial_weights, start_description

    first = make_run(cohort, tmp_path / "first", quick_options())
    train(first)
    shipped = tmp_path / "shipped"
    export_weights(tmp_path / "first" / "best.pt", shipped)
    stored = torch.load(shipped / "model.pt", map_location="cpu", weights_only=True)
    assert all(t.dtype == torch.float16 for t in stored["model"].values() if t.is_floating_point())
    initial = initial_weights(str(shipped / "model.pt"), TINY_MODEL, HARMONISE)
    assert initial.source == {"init_from": str(shipped / "model.pt"), "init_weights_sha256": stored["weights_sha256"]}
    from thrombus.training.trainer import Trainer

    started = Trainer(make_run(cohort, tmp_path / "second", quick_options(init_from=str(shipped / "model.pt")),
                               initial_state=initial.state))
    scratch = Trainer(make_run(cohort, tmp_path / "third", quick_options()))
    for name, tensor in started.model.state_dict().items():
        assert tensor.dtype == scratch.model.state_dict()[name].dtype
        assert torch.equal(tensor, stored["model"][name].to(tensor.dtype)), name
    assert not all(torch.equal(a, b) for a, b in zip(started.model.state_dict().values(), scratch.model.state_dict().values()))
    assert start_description({"training": {}}) == "trained from scratch"
    assert "fine-tuned from the checkpoint" in start_description({"training": initial.source})


def test_weights_for_other_inputs_or_an_unknown_name_are_refused(cohort: Path, tmp_path: Path) -> None:
    from thrombus.training.pretrained import PretrainedError, export_weights, initial_weights

    train(make_run(cohort, tmp_path / "first", quick_options()))
    export_weights(tmp_path / "first" / "best.pt", tmp_path / "shipped")
    with pytest.raises(CheckpointError, match="harmonise.method"):
        initial_weights(str(tmp_path / "shipped" / "model.pt"), TINY_MODEL, {**HARMONISE, "method": "histogram"})
    with pytest.raises(CheckpointError, match="model.base_width"):
        initial_weights(str(tmp_path / "shipped" / "model.pt"), dataclasses.replace(TINY_MODEL, base_width=8), HARMONISE)
    with pytest.raises(PretrainedError, match="no_such_model.*neither a shipped model"):
        initial_weights("no_such_model", TINY_MODEL, HARMONISE)


def test_ship_exports_float16_weights_with_the_figures_it_measured_and_refuses_a_seen_center(cohort: Path, tmp_path: Path) -> None:
    from thrombus.shipping import add_ship_parser, figures
    from thrombus.training.pretrained import export_weights

    options = quick_options()
    card = make_card(TINY_MODEL, HARMONISE, {"slab_depth": options.slab_depth, "patch_size": list(options.patch_size)},
                     {**options.card_dict(), "seed": 1, "split": {"name": "test", "train": ["A000", "B000"], "val": ["A001"]}})
    train(make_run(cohort, tmp_path / "fold", options, card=card))
    parser = argparse.ArgumentParser()
    add_ship_parser(parser.add_subparsers(dest="command", required=True))
    common = ["ship", "--checkpoint", str(tmp_path / "fold" / "best.pt"), "--name", "tiny", "--sheet", str(cohort / "samples.tsv"),
              "--stacks-root", str(cohort), "--trained-by", "a test", "--out-root", str(tmp_path / "models")]
    refused = parser.parse_args([*common, "--held-out", "B"])
    assert refused.func(refused) == 1 and not (tmp_path / "models").exists()
    args = parser.parse_args([*common, "--held-out", "C"])
    assert args.func(args) == 0
    shipped = json.loads((tmp_path / "models" / "tiny" / "model_card.json").read_text())["shipped"]
    assert shipped["trained_on_centers"] == ["A", "B"] and set(shipped["held_out"]["C"]["subjects"]) == {f"C00{i}" for i in range(4)}
    assert shipped["held_out"]["C"]["summary"]["positives"] == 3 and shipped["held_out"]["C"]["summary"]["negatives"] == 1
    again = figures(tmp_path / "models" / "tiny" / "model.pt", [s for s in sheet_subjects(cohort) if s.subject == "A001"], cohort)
    assert again == shipped["validation"]["subjects"]
    export_weights(tmp_path / "fold" / "best.pt", tmp_path / "again")
    assert weights(tmp_path / "again" / "model.pt").keys() == weights(tmp_path / "models" / "tiny" / "model.pt").keys()
    digests = [torch.load(p / "model.pt", weights_only=True)["weights_sha256"] for p in (tmp_path / "again", tmp_path / "models" / "tiny")]
    assert digests[0] == digests[1]  # an export is a function of the checkpoint alone
