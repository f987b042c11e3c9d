"""Paired comparison of a table's experiments against its first one, on the subjects scored by both.

With 9 to 36 thrombus-positive held-out subjects, the Wilson intervals of two variants overlap even when
one finds the clot on nearly every subject the other finds and a few more; what can separate them is
the paired question: on the same subject, with the same sequences, which model does better. So each row
gives the difference (experiment minus reference) in detection rate and in Dice over the same
thrombus-positive subjects, a percentile bootstrap 95% interval that resamples subjects (both models'
values of a subject move together), the discordant pairs, and the exact McNemar p-value of the detection
difference. The resampling draws from a generator seeded by the config's seed, so the same rows give the
same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

#: The columns a pair is matched on: the same subject, held out in the same fold, with the same sequences.
PAIR_KEYS: tuple[str, ...] = ("fold", "subset", "center", "subject")

#: Numeric columns of the paired summary, after "experiment" and "subset".
PAIRED_COLUMNS: tuple[str, ...] = (
    "reference", "n_pairs", "n_positive", "detection_reference", "detection", "detection_difference",
    "detection_difference_ci_low", "detection_difference_ci_high", "found_only_here", "found_only_by_reference",
    "mcnemar_p", "dice_reference", "dice", "dice_difference", "dice_difference_ci_low", "dice_difference_ci_high",
    "negatives_with_fp_reference", "negatives_with_fp", "n_negative",
)

#: The row of a comparison without pairs (a table of one experiment).
NOTHING_COMPARED = "nothing to compare: the notes say why"

PAIRED_RULE = (
    "Paired comparison: each row pairs an experiment with the table's first (the reference) on the subjects "
    "both scored, held out in the same fold, with the same sequence subset. Differences are the row's "
    "experiment minus the reference over the thrombus-positive pairs; 95% interval: percentile bootstrap "
    "over subjects ({samples} resamples, seed {seed}). McNemar: exact two-sided binomial test of the "
    "subjects found by only one of the two. An interval that holds 0 does not separate the two. An "
    "experiment trained several times (replicates) enters with each subject's mean over its trainings; "
    "'found only here' then counts the subjects it found more often, and McNemar, a test of single "
    "outcomes, is n/a."
)


@dataclass(frozen=True)
class BootstrapOptions:
    """How the intervals are resampled: enough samples that the 2.5th percentile is stable, a fixed seed."""

    samples: int = 2000
    seed: int = 0


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value: the discordant pairs against a fair coin (1.0 without any)."""
    n = only_first + only_second
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_first, only_second) + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def bootstrap_interval(differences: np.ndarray, options: BootstrapOptions, rng: np.random.Generator) -> tuple[float, float]:
    """Percentile 95% interval of the mean paired difference; NaN when there is nothing to resample."""
    differences = differences[np.isfinite(differences)]
    if differences.size == 0:
        return (math.nan, math.nan)
    picks = rng.integers(0, differences.size, size=(options.samples, differences.size))
    means = differences[picks].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return (float(low), float(high))


#: Per-subject values a pair compares; with several trainings of an experiment, each is their mean.
PAIRED_VALUES: tuple[str, ...] = ("positive", "detected", "dice", "false_positive_case")


def per_subject(rows: pd.DataFrame, experiment: str, subset: str) -> pd.DataFrame:
    """One line per subject of `experiment` with `subset`: its values averaged over the experiment's trainings.

    A subject found by 2 of 3 trainings counts 2/3, so the bootstrap over subjects carries the spread
    between trainings as well as between subjects.
    """
    mine = rows[(rows["experiment"] == experiment) & (rows["subset"] == subset)]
    values = mine[[*PAIR_KEYS, *PAIRED_VALUES]].copy()
    for column in PAIRED_VALUES:
        values[column] = pd.to_numeric(values[column], errors="coerce")
    return values.groupby(list(PAIR_KEYS), as_index=False, sort=True, dropna=False).mean()


def pairs(rows: pd.DataFrame, reference: str, experiment: str, subset: str) -> pd.DataFrame:
    """One line per subject scored by both experiments with `subset`: the reference's columns end in _ref."""
    mine, theirs = per_subject(rows, experiment, subset), per_subject(rows, reference, subset)
    merged = mine.merge(theirs, on=list(PAIR_KEYS), suffixes=("", "_ref"), how="inner", validate="one_to_one")
    return merged.sort_values(list(PAIR_KEYS), kind="mergesort").reset_index(drop=True)


def _mean(values: pd.Series) -> float:
    values = values.dropna()
    return float(values.mean()) if len(values) else math.nan


def compare_pair(merged: pd.DataFrame, options: BootstrapOptions, rng: np.random.Generator) -> dict[str, float | int]:
    """The paired figures of one experiment against the reference on one subset."""
    positives = merged[merged["positive"] == 1]
    negatives = merged[merged["positive"] == 0]
    found, found_ref = positives["detected"].fillna(0).to_numpy(), positives["detected_ref"].fillna(0).to_numpy()
    only_here, only_ref = int((found > found_ref).sum()), int((found < found_ref).sum())
    # McNemar tests single outcomes; averaged over trainings a subject's detection is a fraction
    single = bool(np.isin(found, (0.0, 1.0)).all() and np.isin(found_ref, (0.0, 1.0)).all())
    detection_low, detection_high = bootstrap_interval(found - found_ref, options, rng)
    dice_low, dice_high = bootstrap_interval((positives["dice"] - positives["dice_ref"]).to_numpy(dtype=float), options, rng)
    return {
        "n_pairs": len(merged),
        "n_positive": len(positives),
        "detection_reference": _mean(positives["detected_ref"]),
        "detection": _mean(positives["detected"]),
        "detection_difference": _mean(positives["detected"] - positives["detected_ref"]),
        "detection_difference_ci_low": detection_low,
        "detection_difference_ci_high": detection_high,
        "found_only_here": only_here,
        "found_only_by_reference": only_ref,
        "mcnemar_p": mcnemar_exact(only_here, only_ref) if single else math.nan,
        "dice_reference": _mean(positives["dice_ref"]),
        "dice": _mean(positives["dice"]),
        "dice_difference": _mean(positives["dice"] - positives["dice_ref"]),
        "dice_difference_ci_low": dice_low,
        "dice_difference_ci_high": dice_high,
        "negatives_with_fp_reference": _mean(negatives["false_positive_case_ref"]),
        "negatives_with_fp": _mean(negatives["false_positive_case"]),
        "n_negative": len(negatives),
    }


def compare(rows: pd.DataFrame, experiments: Sequence[str], subsets: Sequence[str], options: BootstrapOptions) -> pd.DataFrame:
    """Every experiment after the first against the first, subset by subset, in the table's order.

    One generator serves the whole table, in row order, so a row's interval depends only on the rows
    before it and the seed: the same evaluation files give the same bytes.
    """
    rng = np.random.default_rng(options.seed)
    reference, others = experiments[0], experiments[1:]
    lines = []
    for experiment in others:
        for subset in subsets:
            figures = compare_pair(pairs(rows, reference, experiment, subset), options, rng)
            lines.append({"experiment": experiment, "subset": subset, "reference": reference, **figures})
    return pd.DataFrame(lines, columns=["experiment", "subset", *PAIRED_COLUMNS])


def _points(value: float) -> str:
    """A rate difference in percentage points, signed."""
    return "n/a" if not np.isfinite(value) else f"{100 * value:+.0f}"


def _signed(value: float) -> str:
    return "n/a" if not np.isfinite(value) else f"{value:+.2f}"


def format_paired(summary: pd.DataFrame) -> pd.DataFrame:
    """Display strings: "+11 [-3, +25]" percentage points, "+0.04 [-0.02, +0.10]" Dice."""
    from thrombus.evaluation.tables import _number
    from thrombus.evaluation.tables import _percent as _rate

    rows = []
    for _, row in summary.iterrows():
        rows.append({
            "experiment": row["experiment"],
            "subset": row["subset"],
            "against": row["reference"],
            "pairs (pos/neg)": f"{int(row['n_pairs'])} ({int(row['n_positive'])}/{int(row['n_negative'])})",
            "detection (reference)": f"{_rate(row['detection'])} ({_rate(row['detection_reference'])})",
            "detection difference, points [95% CI]": (
                f"{_points(row['detection_difference'])} [{_points(row['detection_difference_ci_low'])}, "
                f"{_points(row['detection_difference_ci_high'])}]"
            ),
            "found only here / only by reference": f"{int(row['found_only_here'])} / {int(row['found_only_by_reference'])}",
            "McNemar p": _p_value(row["mcnemar_p"]),
            "Dice (reference)": f"{_number(row['dice'])} ({_number(row['dice_reference'])})",
            "Dice difference [95% CI]": (
                f"{_signed(row['dice_difference'])} [{_signed(row['dice_difference_ci_low'])}, {_signed(row['dice_difference_ci_high'])}]"
            ),
            "negatives with FP (reference)": f"{_rate(row['negatives_with_fp'])} ({_rate(row['negatives_with_fp_reference'])})",
        })
    columns = ["experiment", "subset", "against", "pairs (pos/neg)", "detection (reference)",
               "detection difference, points [95% CI]", "found only here / only by reference", "McNemar p",
               "Dice (reference)", "Dice difference [95% CI]", "negatives with FP (reference)"]
    return pd.DataFrame(rows, columns=columns)


def _p_value(value: float) -> str:
    if not np.isfinite(value):
        return "n/a"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def write_paired(summary: pd.DataFrame, stem: Path, title: str, notes: Sequence[str]) -> list[Path]:
    """stem.csv (raw numbers), stem.md, stem.tex and stem.html, written atomically like the other tables."""
    from thrombus.evaluation.tables import to_html, to_latex, to_markdown
    from thrombus.io import write_text

    display = format_paired(summary)
    csv_text = summary.to_csv(index=False, float_format="%.4f", lineterminator="\n", na_rep="")
    return [
        write_text(stem.with_name(stem.name + ".csv"), csv_text),
        write_text(stem.with_name(stem.name + ".md"), to_markdown(display, title, notes, NOTHING_COMPARED)),
        write_text(stem.with_name(stem.name + ".tex"), to_latex(display, title, notes, stem.name, NOTHING_COMPARED)),
        write_text(stem.with_name(stem.name + ".html"), to_html(display, title, notes, NOTHING_COMPARED)),
    ]
