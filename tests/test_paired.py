"""The paired comparison of a table's experiments: exact McNemar, bootstrap intervals, pairing and bytes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from thrombus.evaluation.paired import BootstrapOptions, bootstrap_interval, compare, mcnemar_exact, pairs


def rows_of(experiment: str, detected: list[int], dice: list[float], negatives_fp: list[int], subset: str = "all") -> list[dict]:
    """Rows as `thrombus evaluate` writes them: positives P0.., then negatives N0.., all in fold 0."""
    rows = [{"experiment": experiment, "fold": 0, "subset": subset, "center": "A", "subject": f"P{i:02d}", "positive": 1,
             "detected": d, "dice": x, "false_positive_case": np.nan} for i, (d, x) in enumerate(zip(detected, dice))]
    rows += [{"experiment": experiment, "fold": 0, "subset": subset, "center": "A", "subject": f"N{i:02d}", "positive": 0,
              "detected": np.nan, "dice": np.nan, "false_positive_case": f} for i, f in enumerate(negatives_fp)]
    return rows


@pytest.mark.parametrize("only_first, only_second, expected", [(0, 0, 1.0), (5, 0, 0.0625), (3, 1, 0.625), (0, 6, 0.03125), (2, 2, 1.0)])
def test_mcnemar_exact_matches_the_binomial_tail(only_first: int, only_second: int, expected: float) -> None:
    assert mcnemar_exact(only_first, only_second) == pytest.approx(expected)


def test_bootstrap_interval_brackets_the_mean_and_is_empty_without_values() -> None:
    rng = np.random.default_rng(1)
    values = np.array([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    low, high = bootstrap_interval(values, BootstrapOptions(samples=4000), rng)
    assert 0.2 < low < values.mean() < high < 0.95
    assert np.isnan(bootstrap_interval(np.array([np.nan]), BootstrapOptions(), rng)).all()
    assert bootstrap_interval(np.zeros(7), BootstrapOptions(samples=200), rng) == (0.0, 0.0)


def test_compare_pairs_subjects_and_separates_a_clearly_better_variant() -> None:
    # 24 positives: the reference finds the first 8, the variant those 8 and 12 more; one negative each way
    reference = rows_of("ref", [1] * 8 + [0] * 16, [0.4] * 8 + [0.0] * 16, [1, 0, 0])
    better = rows_of("new", [1] * 20 + [0] * 4, [0.5] * 20 + [0.0] * 4, [0, 0, 1])
    # a subject scored by the variant only is not a pair
    extra = [{**better[0], "subject": "X99"}]
    rows = pd.DataFrame(reference + better + extra)
    summary = compare(rows, ["ref", "new"], ["all"], BootstrapOptions(samples=2000, seed=7))
    row = summary.iloc[0]
    assert (row["experiment"], row["subset"], row["reference"]) == ("new", "all", "ref")
    assert (row["n_pairs"], row["n_positive"], row["n_negative"]) == (27, 24, 3)
    assert row["detection_reference"] == pytest.approx(8 / 24) and row["detection"] == pytest.approx(20 / 24)
    assert row["detection_difference"] == pytest.approx(0.5)
    assert 0.25 < row["detection_difference_ci_low"] < 0.5 < row["detection_difference_ci_high"] < 0.75
    assert (row["found_only_here"], row["found_only_by_reference"]) == (12, 0)
    assert row["mcnemar_p"] == pytest.approx(2 * 0.5**12)
    assert row["dice_difference"] == pytest.approx((20 * 0.5 - 8 * 0.4) / 24)
    assert row["dice_difference_ci_low"] > 0
    assert row["negatives_with_fp_reference"] == pytest.approx(1 / 3) and row["negatives_with_fp"] == pytest.approx(1 / 3)
    # the same rows in another order and the same seed give the same numbers
    again = compare(rows.sample(frac=1.0, random_state=3), ["ref", "new"], ["all"], BootstrapOptions(samples=2000, seed=7))
    pd.testing.assert_frame_equal(summary, again)


def test_pairs_keep_subsets_apart() -> None:
    rows = pd.DataFrame(rows_of("ref", [1, 0], [0.5, 0.0], [], subset="all") + rows_of("ref", [0, 0], [0.0, 0.0], [], subset="no_dwi")
                        + rows_of("new", [1, 1], [0.5, 0.3], [], subset="all"))
    assert len(pairs(rows, "ref", "new", "all")) == 2
    assert pairs(rows, "ref", "new", "no_dwi").empty
    summary = compare(rows, ["ref", "new"], ["all", "no_dwi"], BootstrapOptions(samples=100))
    assert summary["n_pairs"].tolist() == [2, 0] and np.isnan(summary.loc[1, "detection_difference"])


def test_several_trainings_enter_as_each_subject_s_mean_and_mcnemar_is_not_applied() -> None:
    """Two trainings of the variant: a subject found by one of them counts 1/2, the bootstrap resamples
    subjects (not subject-trainings), and McNemar, a test of single outcomes, is left out."""
    from thrombus.evaluation.assemble import replicate_notes, with_replicates

    reference = rows_of("ref", [1, 0, 0, 1], [0.5, 0.0, 0.0, 0.4], [1, 0])
    first = rows_of("new", [1, 1, 0, 1], [0.6, 0.3, 0.0, 0.4], [0, 0])
    second = rows_of("new-r2", [0, 1, 0, 1], [0.0, 0.5, 0.0, 0.2], [1, 0])
    rows = with_replicates(pd.DataFrame(reference + first + second))
    assert sorted(set(zip(rows["experiment"], rows["replicate"], rows["run"]))) == [("new", 1, "new"), ("new", 2, "new-r2"), ("ref", 1, "ref")]
    merged = pairs(rows, "ref", "new", "all")
    assert len(merged) == 6 and merged[merged["positive"] == 1]["detected"].tolist() == [0.5, 1.0, 0.0, 1.0]
    row = compare(rows, ["ref", "new"], ["all"], BootstrapOptions(samples=500, seed=1)).iloc[0]
    assert row["detection"] == pytest.approx(2.5 / 4) and row["detection_difference"] == pytest.approx(0.125)
    assert (row["found_only_here"], row["found_only_by_reference"]) == (1, 1) and np.isnan(row["mcnemar_p"])
    assert row["dice"] == pytest.approx((0.3 + 0.4 + 0.0 + 0.3) / 4) and row["negatives_with_fp"] == pytest.approx(0.25)
    assert "new 2" in replicate_notes(rows)[0] and replicate_notes(with_replicates(pd.DataFrame(reference))) == []
