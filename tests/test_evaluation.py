"""Evaluation metrics, tables and figures on small synthetic masks built here.

Dice and HD95 are cross-checked against MONAI, so our penalty and matching rules sit on top of numbers a
reviewer already trusts; the rest pins the rules of DESIGN.md ("Evaluation: say which rule was used").
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from thrombus.evaluation import metrics, tables
from thrombus.evaluation.figures import OverlayCase, center_boxplots, overlay_cases, pick_best_median_worst
from thrombus.evaluation.metrics import EvaluationError, EvaluationOptions, evaluate_files, evaluate_masks
from thrombus.evaluation.tables import MATCHING_RULE, summarise, wilson_interval, write_table

SHAPE = (24, 22, 12)


def blob(rng: np.random.Generator, shape: tuple[int, int, int] = SHAPE, level: float = 1.2) -> np.ndarray:
    """A random, possibly multi-component blob: smoothed noise above a threshold."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=2.0)
    mask = field > level * field.std()
    if not mask.any():
        mask[tuple(np.array(shape) // 2)] = True
    return mask


def box(shape: tuple[int, int, int], lo: tuple[int, int, int], hi: tuple[int, int, int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return mask


# ----------------------------------------------------------------------------------------- MONAI


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI's own deprecation notice, not ours
@pytest.mark.parametrize("seed", range(5))
def test_dice_and_hd95_match_monai(seed: int) -> None:
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    rng = np.random.default_rng(seed)
    truth, prediction = blob(rng), blob(rng, level=1.0)
    spacing = (0.7, 0.9, 4.5)
    record = evaluate_masks(prediction, truth, spacing, positive=True)

    def tensor(mask: np.ndarray):  # type: ignore[no-untyped-def]
        return torch.from_numpy(mask.astype(np.float32))[None, None]

    expected_dice = float(monai_metrics.compute_dice(tensor(prediction), tensor(truth), include_background=True))
    expected_hd = float(monai_metrics.compute_hausdorff_distance(
        tensor(prediction), tensor(truth), include_background=True, percentile=95, spacing=spacing
    ))
    assert record["dice"] == pytest.approx(expected_dice, rel=1e-5)
    assert record["hd95_mm"] == pytest.approx(expected_hd, rel=1e-4, abs=1e-4)
    assert record["hd95_penalised"] == 0


def test_hd95_is_max_of_directed_percentiles_not_pooled() -> None:
    """A case where the two conventions differ, so the test can tell which one is implemented."""
    # The prediction is the truth plus a small far blob: its distances are a few percent of the pooled
    # set (pooled 95th percentile 0 mm) but more than 5% of the prediction's own set (18 mm).
    shape = (40, 20, 12)
    truth = box(shape, (2, 2, 2), (14, 14, 10))
    prediction = truth | box(shape, (30, 2, 2), (34, 6, 6))
    spacing = (1.0, 1.0, 1.0)
    got = evaluate_masks(prediction, truth, spacing, positive=True)["hd95_mm"]
    ps, ts = prediction ^ ndimage.binary_erosion(prediction), truth ^ ndimage.binary_erosion(truth)
    forward = ndimage.distance_transform_edt(~ts, sampling=spacing)[ps]
    backward = ndimage.distance_transform_edt(~ps, sampling=spacing)[ts]
    pooled = np.percentile(np.concatenate([forward, backward]), 95)
    directed_max = max(np.percentile(forward, 95), np.percentile(backward, 95))
    assert not math.isclose(pooled, directed_max)
    assert got == pytest.approx(directed_max)


# ------------------------------------------------------------------------------ matching rules


def test_small_thrombus_hit_by_four_voxels_is_detected() -> None:
    """DESIGN.md: a 24-voxel thrombus hit by 4 voxels is a hit at any overlap (a miss at IoU >= 0.5)."""
    shape = (20, 20, 20)
    truth = box(shape, (5, 5, 5), (11, 7, 7))  # 6 x 2 x 2 = 24 voxels
    prediction = box(shape, (5, 5, 5), (6, 7, 7))  # 1 x 2 x 2 = 4 voxels, all inside
    assert truth.sum() == 24 and prediction.sum() == 4
    record = evaluate_masks(prediction, truth, (1.0, 1.0, 1.0), positive=True)
    assert record["detected"] == 1
    assert record["lesion_tp"] == 1 and record["lesion_fn"] == 0 and record["lesion_fp"] == 0
    assert record["dice"] == pytest.approx(2 * 4 / 28)
    missed = evaluate_masks(box(shape, (14, 14, 14), (15, 16, 16)), truth, (1.0, 1.0, 1.0), positive=True)
    assert missed["detected"] == 0 and missed["lesion_fp"] == 1 and missed["length_error_mm"] is None


def test_lesion_matching_two_truth_components_and_a_far_false_positive() -> None:
    shape = (30, 30, 10)
    truth = box(shape, (2, 2, 2), (6, 6, 4)) | box(shape, (12, 12, 2), (16, 16, 4))
    hit_first = box(shape, (3, 3, 2), (5, 5, 3))
    far = box(shape, (26, 26, 7), (28, 28, 9))
    record = evaluate_masks(hit_first | far, truth, (1.0, 1.0, 3.0), positive=True)
    assert record["n_truth_components"] == 2 and record["n_pred_components"] == 2
    assert (record["lesion_tp"], record["lesion_fn"], record["lesion_fp"]) == (1, 1, 1)
    assert record["fp_components"] == 1
    assert record["lesion_recall"] == pytest.approx(0.5)
    assert record["lesion_precision"] == pytest.approx(0.5)
    assert record["lesion_f1"] == pytest.approx(0.5)
    # The far false positive must not inflate the predicted length: only the touching component counts.
    alone = evaluate_masks(hit_first, truth, (1.0, 1.0, 3.0), positive=True)
    assert record["length_pred_mm"] == pytest.approx(alone["length_pred_mm"])


def test_diagonal_neighbours_are_one_component_at_26_and_two_at_6() -> None:
    shape = (8, 8, 8)
    prediction = np.zeros(shape, dtype=bool)
    prediction[2, 2, 2] = prediction[3, 3, 3] = True
    truth = box(shape, (2, 2, 2), (3, 3, 3))
    at_26 = evaluate_masks(prediction, truth, (1.0, 1.0, 1.0), True)
    at_6 = evaluate_masks(prediction, truth, (1.0, 1.0, 1.0), True, EvaluationOptions(connectivity=6))
    assert (at_26["n_pred_components"], at_26["lesion_fp"]) == (1, 0)
    assert (at_6["n_pred_components"], at_6["lesion_fp"]) == (2, 1)
    with pytest.raises(EvaluationError, match="connectivity"):
        EvaluationOptions(connectivity=8)


def test_empty_prediction_on_positive_gets_the_penalty_not_nan() -> None:
    shape, spacing = (10, 20, 5), (0.5, 1.0, 4.0)
    truth = box(shape, (3, 3, 1), (5, 6, 3))
    record = evaluate_masks(np.zeros(shape, dtype=bool), truth, spacing, positive=True)
    diagonal = math.sqrt((9 * 0.5) ** 2 + (19 * 1.0) ** 2 + (4 * 4.0) ** 2)
    assert record["hd95_mm"] == pytest.approx(diagonal)
    assert record["hd95_penalised"] == 1
    assert record["dice"] == 0.0 and record["detected"] == 0
    assert record["lesion_recall"] == 0.0 and record["lesion_precision"] is None and record["lesion_f1"] == 0.0
    fixed = evaluate_masks(np.zeros(shape, dtype=bool), truth, spacing, True, EvaluationOptions(empty_penalty_mm=50.0))
    assert fixed["hd95_mm"] == 50.0 and fixed["hd95_penalised"] == 1
    assert all(not (isinstance(v, float) and math.isnan(v)) for v in record.values())


def test_negatives_count_false_positive_cases() -> None:
    shape = (12, 12, 6)
    clean = evaluate_masks(np.zeros(shape, dtype=bool), None, (1.0, 1.0, 1.0), positive=False)
    noisy = evaluate_masks(box(shape, (1, 1, 1), (2, 2, 2)) | box(shape, (8, 8, 4), (9, 9, 5)), None, (1.0, 1.0, 1.0), positive=False)
    assert clean["false_positive_case"] == 0 and noisy["false_positive_case"] == 1
    assert noisy["lesion_fp"] == 2 and noisy["fp_components"] == 2
    for record in (clean, noisy):
        assert record["positive"] == 0
        assert record["detected"] is None and record["dice"] is None and record["hd95_mm"] is None
        assert record["hd95_penalised"] == 0 and record["lesion_recall"] is None
    assert clean["lesion_f1"] is None and noisy["lesion_f1"] == 0.0
    summary = summarise(pd.DataFrame([{"subject": "N1", "center": "A", **clean}, {"subject": "N2", "center": "A", **noisy}]))
    row = summary.set_index("center").loc["A"]
    assert row["negatives_with_fp"] == pytest.approx(0.5) and row["fp_per_case"] == pytest.approx(1.0)
    assert row["n_negative"] == 2 and math.isnan(row["detection"])


def test_feret_length_of_a_line_along_the_anisotropic_axis() -> None:
    shape = (9, 9, 12)
    line = np.zeros(shape, dtype=bool)
    line[4, 4, 2:9] = True  # 7 voxels: centres 6 slices apart
    assert metrics.feret_diameter_mm(line, (0.5, 0.5, 5.0)) == pytest.approx(30.0)
    record = evaluate_masks(line, line, (0.5, 0.5, 5.0), positive=True)
    assert record["length_truth_mm"] == pytest.approx(30.0) and record["length_error_mm"] == 0.0
    # A 3-D shape takes the hull path: a 3 x 4 x 5 box's corner-to-corner centre distance.
    cube = box((10, 10, 10), (1, 1, 1), (4, 5, 6))
    assert metrics.feret_diameter_mm(cube, (1.0, 2.0, 3.0)) == pytest.approx(math.sqrt(2**2 + 6**2 + 12**2))


def test_volumes_in_ml_use_spacing() -> None:
    shape = (10, 10, 10)
    truth = box(shape, (0, 0, 0), (5, 4, 2))  # 40 voxels
    prediction = box(shape, (0, 0, 0), (5, 4, 3))  # 60 voxels
    record = evaluate_masks(prediction, truth, (1.0, 2.5, 4.0), positive=True)  # 10 mm^3 per voxel
    assert record["volume_truth_ml"] == pytest.approx(0.4)
    assert record["volume_pred_ml"] == pytest.approx(0.6)
    assert record["volume_error_ml"] == pytest.approx(0.2)


@pytest.mark.bad_input
def test_label_contradicting_the_truth_is_refused() -> None:
    shape = (6, 6, 6)
    with pytest.raises(EvaluationError, match="empty truth"):
        evaluate_masks(np.zeros(shape, bool), np.zeros(shape, bool), (1.0, 1.0, 1.0), positive=True)
    with pytest.raises(EvaluationError, match="negative"):
        evaluate_masks(np.zeros(shape, bool), box(shape, (1, 1, 1), (2, 2, 2)), (1.0, 1.0, 1.0), positive=False)


# ---------------------------------------------------------------------------------------- files


def _save(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data.astype(np.uint8), affine), str(path))
    return path


def test_evaluate_files_reads_spacing_and_puts_subject_first(tmp_path: Path) -> None:
    affine = np.diag([0.8, 0.8, 5.0, 1.0])
    truth = box((10, 10, 6), (2, 2, 1), (5, 5, 4))
    pred_path, truth_path = _save(tmp_path / "pred.nii.gz", truth, affine), _save(tmp_path / "truth.nii.gz", truth, affine)
    record = evaluate_files(pred_path, truth_path, "A003", "A", positive=True)
    assert list(record)[:3] == ["subject", "center", "positive"]
    assert record["subject"] == "A003" and record["center"] == "A"
    assert record["dice"] == 1.0 and record["hd95_mm"] == 0.0
    assert record["volume_truth_ml"] == pytest.approx(27 * 0.8 * 0.8 * 5.0 / 1000)
    assert json.loads(json.dumps(record)) == record  # plain python types only, no numpy scalars
    assert all(type(v) in (int, float, str, type(None)) for v in record.values())
    negative = evaluate_files(_save(tmp_path / "neg.nii.gz", np.zeros((10, 10, 6)), affine), None, "A004", "A", positive=False)
    assert negative["false_positive_case"] == 0


@pytest.mark.parametrize("change", ["shape", "affine"])
@pytest.mark.bad_input
def test_grid_mismatch_names_subject_and_both_files(tmp_path: Path, change: str) -> None:
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    truth = box((10, 10, 6), (2, 2, 1), (5, 5, 4))
    truth_path = _save(tmp_path / "truth_B007.nii.gz", truth, affine)
    if change == "shape":
        pred_path = _save(tmp_path / "pred_B007.nii.gz", np.zeros((10, 10, 7)), affine)
    else:
        shifted = affine.copy()
        shifted[0, 3] = 0.5
        pred_path = _save(tmp_path / "pred_B007.nii.gz", truth, shifted)
    with pytest.raises(EvaluationError) as caught:
        evaluate_files(pred_path, truth_path, "B007", "B", positive=True)
    message = str(caught.value)
    assert "B007" in message and str(pred_path) in message and str(truth_path) in message
    assert "prediction not on the reference grid" in message


@pytest.mark.bad_input
def test_positive_without_truth_is_refused(tmp_path: Path) -> None:
    affine = np.eye(4)
    pred_path = _save(tmp_path / "pred.nii.gz", np.zeros((5, 5, 5)), affine)
    with pytest.raises(EvaluationError, match="C001.*no truth file"):
        evaluate_files(pred_path, None, "C001", "C", positive=True)
    empty = _save(tmp_path / "truth.nii.gz", np.zeros((5, 5, 5)), affine)
    with pytest.raises(EvaluationError, match=r"C001.*truth\.nii\.gz.*empty"):
        evaluate_files(pred_path, empty, "C001", "C", positive=True)


# --------------------------------------------------------------------------------------- tables


def test_wilson_interval_known_values() -> None:
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=5e-4) and high == pytest.approx(0.9433, abs=5e-4)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=5e-4)
    assert wilson_interval(10, 10)[0] == pytest.approx(0.7225, abs=5e-4)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def _records() -> pd.DataFrame:
    """A small cohort of real records: two centers, positives hit, missed and empty, one noisy negative."""
    rng = np.random.default_rng(7)
    rows = []
    for center in ("B", "A"):  # deliberately unsorted
        for i in range(4):
            truth = blob(rng)
            if i == 0:
                prediction = np.zeros_like(truth)
            else:
                prediction = ndimage.binary_dilation(truth) if i % 2 else truth & ~ndimage.binary_erosion(truth)
            rows.append({"subject": f"{center}{i:03d}", "center": center, **evaluate_masks(prediction, truth, (1.0, 1.0, 3.0), True)})
        negative = box(SHAPE, (1, 1, 1), (3, 3, 2)) if center == "A" else np.zeros(SHAPE, bool)
        rows.append({"subject": f"{center}900", "center": center, **evaluate_masks(negative, None, (1.0, 1.0, 3.0), False)})
    return pd.DataFrame(rows)


def test_summarise_rows_and_rates() -> None:
    records = _records()
    summary = summarise(records)
    assert summary["center"].tolist() == ["A", "B", "all"]
    pooled = summary.set_index("center").loc["all"]
    assert pooled["n"] == 10 and pooled["n_positive"] == 8 and pooled["n_negative"] == 2
    assert pooled["detection"] == pytest.approx(6 / 8)
    assert (pooled["detection_ci_low"], pooled["detection_ci_high"]) == pytest.approx(wilson_interval(6, 8))
    assert pooled["negatives_with_fp"] == pytest.approx(0.5)
    assert pooled["n_hd95_penalised"] == 2
    positives = records[records["positive"] == 1]
    assert pooled["dice_mean"] == pytest.approx(positives["dice"].mean())
    assert pooled["dice_detected_mean"] == pytest.approx(positives.loc[positives["detected"] == 1, "dice"].mean())
    assert pooled["hd95_mean"] == pytest.approx(positives["hd95_mm"].mean())  # penalised cases included
    # Input order must not matter.
    shuffled = summarise(records.sample(frac=1.0, random_state=3))
    pd.testing.assert_frame_equal(summary, shuffled)


def test_summarise_several_grouping_columns_pool_the_last() -> None:
    records = pd.concat([_records().assign(model="unet"), _records().assign(model="att")], ignore_index=True)
    summary = summarise(records, group=["model", "center"])
    assert list(zip(summary["model"], summary["center"])) == [
        ("att", "A"), ("att", "B"), ("att", "all"), ("unet", "A"), ("unet", "B"), ("unet", "all"),
    ]


def test_format_table_strings() -> None:
    display = tables.format_table(summarise(_records()))
    pooled = display.set_index("center").loc["all"]
    low, high = wilson_interval(6, 8)
    assert pooled["detection [95% CI]"] == f"75% [{100 * low:.0f}–{100 * high:.0f}]"
    assert " ± " in pooled["Dice"]


def test_write_table_is_byte_identical_and_carries_notes(tmp_path: Path) -> None:
    summary = summarise(_records())
    notes = [MATCHING_RULE, "Failed: B005 (prediction not on the reference grid)", "100% of_runs & more"]
    first = write_table(summary, tmp_path / "one" / "table_centers", "Per-center results", notes)
    second = write_table(summary, tmp_path / "two" / "table_centers", "Per-center results", notes)
    assert [p.suffix for p in first] == [".csv", ".md", ".tex", ".html"]
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes()
    markdown = first[1].read_text()
    assert markdown.startswith("# Per-center results\n")
    assert f"- {MATCHING_RULE}" in markdown and "- Failed: B005" in markdown
    assert "| all |" in markdown
    latex = first[2].read_text()
    assert r"\caption{Per-center results}" in latex and r"100\% of\_runs \& more" in latex
    assert "±" not in latex and r"$\pm$" in latex
    page = first[3].read_text()
    assert "<h2>Per-center results</h2>" in page and "<td>all</td>" in page
    assert "<li>Failed: B005 (prediction not on the reference grid)</li>" in page and "100% of_runs &amp; more" in page
    csv = pd.read_csv(first[0])
    assert csv["center"].tolist() == ["A", "B", "all"]
    assert "0.7500" in first[0].read_text()
    assert not list(tmp_path.rglob(".*"))  # no temporary file left behind


# -------------------------------------------------------------------------------------- figures


def test_pick_best_median_worst_is_deterministic() -> None:
    records = pd.DataFrame({
        "subject": ["S4", "S2", "S3", "S1", "N1"], "positive": [1, 1, 1, 1, 0], "dice": [0.5, 0.9, 0.5, 0.1, None],
    })
    assert pick_best_median_worst(records) == [("best", "S2"), ("median", "S3"), ("worst", "S1")]
    assert pick_best_median_worst(records.iloc[::-1]) == [("best", "S2"), ("median", "S3"), ("worst", "S1")]
    assert pick_best_median_worst(records.iloc[[1]]) == [("best", "S2")]
    by_hd = pick_best_median_worst(records.assign(hd95_mm=[3.0, 1.0, 2.0, 9.0, None]), key="hd95_mm", higher_is_better=False)
    assert by_hd == [("best", "S2"), ("median", "S3"), ("worst", "S1")]


def test_figures_are_written(tmp_path: Path) -> None:
    records = _records()
    boxes = center_boxplots(records, tmp_path / "boxes.png")
    assert boxes.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"Matplotlib" not in boxes.read_bytes()
    rng = np.random.default_rng(1)
    truth = blob(rng)
    cases = [
        OverlayCase("best: A001 (Dice 0.81)", rng.standard_normal(SHAPE), truth, ndimage.binary_dilation(truth)),
        OverlayCase("worst: A000 (Dice 0.00)", rng.standard_normal(SHAPE), truth, np.zeros(SHAPE, bool)),
        OverlayCase("negative: A900", rng.standard_normal(SHAPE), None, np.zeros(SHAPE, bool)),
    ]
    overlay = overlay_cases(cases, tmp_path / "overlay.png", "Center A")
    assert overlay.stat().st_size > 1000
    assert not list(tmp_path.glob(".*"))


def test_only_the_pooled_column_reserves_all() -> None:
    """"all" is the default subset's name: fine in a leading column, refused in the pooled one."""
    records = _records().assign(subset="all")
    summary = summarise(records, group=["subset", "center"])
    assert list(zip(summary["subset"], summary["center"])) == [("all", "A"), ("all", "B"), ("all", "all")]
    with pytest.raises(ValueError, match="reserved"):
        summarise(records.assign(center="all"), group=["subset", "center"])


def test_panels_name_the_patients_sides_from_the_grid() -> None:
    """The same clot on a RAS and on a LAS grid lands on opposite sides of the screen; the markers say so."""
    from thrombus.nifti import screen_sides

    assert screen_sides(np.diag([1.0, 1.0, 2.0, 1.0])) == ("L", "R", "P", "A")
    assert screen_sides(np.diag([-0.9, 0.9, 6.0, 1.0])) == ("R", "L", "P", "A")


def test_every_panel_is_drawn_in_one_convention_whatever_its_grid() -> None:
    """A clot in the patient's left hemisphere, on a RAS grid, a LAS grid and a grid with its axes swapped and
    its slices running downwards: each is turned to the radiological layout (right on the screen's left,
    anterior up), so the clot lands on the screen's right in every panel, at the same spot."""
    from thrombus.evaluation.figures import in_display_orientation
    from thrombus.nifti import screen_sides

    shape = (20, 16, 6)
    world = np.zeros(shape, bool)  # in LAS order: axis 0 runs from the patient's right to the left
    world[15:17, 10:12, 2] = True  # near the patient's left edge, anterior
    grids = {
        "LAS": (np.diag([-1.0, 1.0, 2.0, 1.0]), world),
        "RAS": (np.diag([1.0, 1.0, 2.0, 1.0]), world[::-1]),
        "swapped, slices down": (np.array([[0, -1.0, 0, 0], [1.0, 0, 0, 0], [0, 0, -2.0, 0], [0, 0, 0, 1]]),
                                 np.transpose(world, (1, 0, 2))[:, :, ::-1]),
    }
    for name, (affine, truth) in grids.items():
        case = OverlayCase(name, truth.astype(np.float32), truth, truth, spacing=(1.0, 1.0, 2.0), affine=affine)
        shown = in_display_orientation(case)
        assert screen_sides(shown.affine) == ("R", "L", "P", "A"), name
        assert shown.image.shape == shape and np.array_equal(shown.truth, world), name
        assert shown.spacing == (1.0, 1.0, 2.0), name
    unknown = OverlayCase("no affine", world.astype(np.float32), world, world)
    assert in_display_orientation(unknown) is unknown
    from thrombus.nifti import for_display  # the preprocessing's QC pictures turn 4-D stacks the same way

    stack = np.stack([world[::-1], ~world[::-1]], axis=-1)
    (turned,), affine = for_display([stack], np.diag([1.0, 1.0, 2.0, 1.0]))
    assert np.array_equal(turned[..., 0], world) and np.array_equal(turned[..., 1], ~world)
    assert screen_sides(affine) == ("R", "L", "P", "A")


def test_a_new_subjects_prediction_is_drawn_through_its_largest_component(tmp_path: Path) -> None:
    import nibabel as nib

    from thrombus.evaluation.figures import prediction_overview

    rng = np.random.default_rng(2)
    affine = np.diag([-0.9, 0.9, 6.0, 1.0])
    nib.save(nib.Nifti1Image(rng.standard_normal((*SHAPE, 2)).astype(np.float32), affine), tmp_path / "stack.nii.gz")
    mask = np.zeros(SHAPE, np.uint8)
    mask[10:14, 10:13, 2] = 1
    mask[20, 18, 1] = 1
    nib.save(nib.Nifti1Image(mask, affine), tmp_path / "mask.nii.gz")
    figure = prediction_overview(tmp_path / "stack.nii.gz", tmp_path / "mask.nii.gz", tmp_path / "overview.png", "N001 (center A)")
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 1000
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.uint8), affine), tmp_path / "empty.nii.gz")
    assert prediction_overview(tmp_path / "stack.nii.gz", tmp_path / "empty.nii.gz", tmp_path / "none.png", "N002").exists()
