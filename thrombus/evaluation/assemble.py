"""One result table of the config: its folds' rows gathered, summarised, written, and drawn.

Each table comes in two shapes: overall (one row per experiment and subset, every held-out center
pooled) and per center (the same with a row per center). Rows follow the order the config lists the
experiments and subsets in, so the ablation reads top-down as it was declared. The notes under every
table say which matching rule was used, which subjects could not be scored and why, and when the
models were trained too briefly for the numbers to mean anything (the CI's smoke runs).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from thrombus.evaluation.paired import BootstrapOptions
from thrombus.io import read_json, write_text

log = logging.getLogger(__name__)

#: Below this many training iterations a table is labelled a smoke run.
SMOKE_ITERATIONS = 200


@dataclass(frozen=True)
class TableRequest:
    """What `assemble_table` needs."""

    name: str
    title: str
    experiments: Sequence[str]
    subsets: Sequence[str]
    evaluations: Sequence[Path]
    records: Sequence[Path]
    sheet: Path
    stacks_root: Path
    out_dir: Path
    overlays: bool = True
    bootstrap: BootstrapOptions = BootstrapOptions()


def ordered(summary: pd.DataFrame, experiments: Sequence[str], subsets: Sequence[str]) -> pd.DataFrame:
    """Rows in the config's order of experiments and subsets, centers sorted with "all" last."""
    from thrombus.evaluation.tables import ALL

    keys = summary.assign(
        _e=summary["experiment"].map({name: i for i, name in enumerate(experiments)}),
        _s=summary["subset"].map({name: i for i, name in enumerate(subsets)}),
        _c=summary["center"].map(lambda c: (1, "") if c == ALL else (0, str(c))),
    )
    keys = keys.sort_values(["_e", "_s", "_c"], kind="mergesort")
    return keys.drop(columns=["_e", "_s", "_c"]).reset_index(drop=True)


def table_notes(records: Sequence[Mapping[str, Any]], rows: pd.DataFrame) -> list[str]:
    """The matching rule, the failures, a warning when the models are smoke-run models, and how they began."""
    from thrombus.evaluation.tables import MATCHING_RULE

    notes = [MATCHING_RULE]
    failures = [failure for record in records for failure in record.get("failures", [])]
    for failure in failures:
        notes.append(
            f"not scored: {failure['experiment']} fold {failure['fold']}, subset {failure['subset']}, "
            f"subject {failure['subject']} (center {failure['center']}), {failure['step']} failed: {failure['error']}"
        )
    iterations = sorted({record.get("iterations") for record in records if record.get("iterations") is not None})
    if iterations and iterations[0] < SMOKE_ITERATIONS:
        notes.append(
            f"SMOKE RUN: models trained for {iterations[0]} iterations only; these numbers are meaningless "
            "and only show that the machinery runs"
        )
    for start in sorted({str(record["start"]) for record in records if record.get("start")}):
        notes.append(f"models {start}")
    devices = sorted({str(record.get("device")) for record in records if record.get("device")})
    if devices:
        notes.append(f"models trained on: {', '.join(devices)}; {len(rows)} scored subject-subset rows")
    return notes


def with_replicates(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows under their declared experiment's name, with the training they came from in `replicate` and
    its own name (where its model and predictions lie) in `run`."""
    from thrombus.experiments import split_replicate

    if rows.empty:
        return rows.assign(replicate=pd.Series(dtype=int), run=pd.Series(dtype=str))
    names = rows["experiment"].map(split_replicate)
    return rows.assign(run=rows["experiment"], experiment=names.map(lambda pair: pair[0]),
                       replicate=names.map(lambda pair: pair[1]))


def replicate_notes(rows: pd.DataFrame) -> list[str]:
    """Say which rows pool several trainings, and what that does to their intervals."""
    if rows.empty:
        return []
    counts = rows.groupby("experiment", sort=True)["replicate"].nunique()
    pooled = {name: int(count) for name, count in counts.items() if count > 1}
    if not pooled:
        return []
    listed = ", ".join(f"{name} {count}" for name, count in pooled.items())
    return [
        f"pooled trainings (replicates: the r-th trained with seed + r - 1): {listed}. Their rates count every "
        "subject once per training, so their Wilson intervals, which take the cases as independent, are too "
        "narrow; the paired comparison averages each subject over the trainings and resamples subjects"
    ]


def assemble_table(request: TableRequest) -> list[Path]:
    """Write the overall and per-center tables, the per-subject rows, the box plots and the overlays."""
    from thrombus.evaluation.fold import read_folds
    from thrombus.evaluation.tables import ALL, summarise, write_table

    rows = with_replicates(read_folds(request.evaluations, request.subsets))
    records = [read_json(path) for path in request.records]
    # A fold is predicted with the subsets of every table showing its experiment; this table's notes name
    # only the failures of the subsets it shows.
    shown = set(request.subsets)
    records = [{**record, "failures": [f for f in record.get("failures", []) if f.get("subset") in shown]} for record in records]
    notes = table_notes(records, rows) + replicate_notes(rows)
    per_center = ordered(summarise(rows, ["experiment", "subset", "center"]), request.experiments, request.subsets)
    overall = per_center[per_center["center"] == ALL].drop(columns=["center"]).reset_index(drop=True)
    out = request.out_dir
    written = write_table(overall, out / request.name, request.title, notes)
    written += write_table(per_center, out / f"{request.name}_per_center", f"{request.title}, per center", notes)
    subjects = out / f"{request.name}_subjects.tsv"
    write_text(subjects, rows.to_csv(sep="\t", index=False, float_format="%.6g", lineterminator="\n"))
    written.append(subjects)
    written += write_comparison(request, rows, notes)
    written += draw(request, rows)
    return written


def write_comparison(request: TableRequest, rows: pd.DataFrame, notes: Sequence[str]) -> list[Path]:
    """`<table>_paired.*`: every experiment after the first against the first, on the same subjects."""
    from thrombus.evaluation.paired import PAIRED_RULE, compare, write_paired

    rule = PAIRED_RULE.format(samples=request.bootstrap.samples, seed=request.bootstrap.seed)
    lead = [rule]
    if len(request.experiments) < 2:
        lead.append(f"one experiment ({request.experiments[0]}): nothing to compare")
    paired = compare(rows, request.experiments, request.subsets, request.bootstrap)
    title = f"{request.title}: paired against {request.experiments[0]}"
    return write_paired(paired, request.out_dir / f"{request.name}_paired", title, [*lead, *notes])


def draw(request: TableRequest, rows: pd.DataFrame) -> list[Path]:
    """Box plots per center of the table's first subset, and overlays of its best, median and worst cases."""
    from thrombus.evaluation.figures import center_boxplots

    figures = request.out_dir / "figures"
    first = rows[(rows["subset"] == request.subsets[0])] if not rows.empty else rows
    lead = first[first["experiment"] == request.experiments[0]] if not first.empty else first
    boxplots = center_boxplots(lead, figures / f"{request.name}_boxplots.png")
    overlays = draw_overlays(request, lead, figures / f"{request.name}_overlays.png")
    return [Path(boxplots), Path(overlays)]


def draw_overlays(request: TableRequest, rows: pd.DataFrame, target: Path) -> Path:
    """The best, median and worst thrombus-positive cases by Dice: reference green, prediction red."""
    from thrombus.evaluation.figures import overlay_cases, pick_best_median_worst
    from thrombus.samples import read_sheet, subjects

    cases = []
    if request.overlays and not rows.empty:
        truths = {s.subject: s.thrombus_mask for s in subjects(read_sheet(request.sheet), {})}
        for role, subject in pick_best_median_worst(rows, key="dice"):
            row = rows[rows["subject"] == subject].iloc[0]
            cases.append(overlay_case(request, row, role, truths.get(subject) or None))
    title = f"{request.title}: {request.experiments[0]}, subset {request.subsets[0]}"
    if not cases:
        # The rule still expects the file: say why there is nothing to draw.
        why = "overlays turned off (evaluation.overlays: false)" if not request.overlays else "no thrombus-positive case was scored"
        return placeholder_figure(target, title, why)
    return Path(overlay_cases(cases, target, title))


def placeholder_figure(target: Path, title: str, text: str) -> Path:
    """A small figure holding only a title and a line of text."""
    from thrombus.evaluation.figures import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 1.5))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9)
    fig.suptitle(title, fontsize=10)
    path = _save(fig, target)
    plt.close(fig)
    return path


def overlay_case(request: TableRequest, row: pd.Series, role: str, truth_path: str | None) -> Any:
    """The susceptibility channel (the first of the stack), the reference mask and the prediction of one row."""
    import nibabel as nib
    import numpy as np

    from thrombus.evaluation.figures import OverlayCase
    from thrombus.inference.fold import subject_folder

    stack_dir = request.stacks_root / "results" / "harmonise" / row["center"] / row["subject"]
    stack = nib.load(stack_dir / "stack.nii.gz")
    image = np.asarray(stack.dataobj[..., 0], dtype=np.float32)
    predictions = request.stacks_root / "results" / "heldout" / row.get("run", row["experiment"]) / f"fold{int(row['fold'])}"
    mask = np.asarray(nib.load(subject_folder(predictions, row["subset"], row["center"], row["subject"]) / "mask.nii.gz").dataobj) > 0
    truth = np.asarray(nib.load(truth_path).dataobj) > 0 if truth_path else None
    spacing = tuple(float(z) for z in stack.header.get_zooms()[:3])
    label = f"{role}: {row['subject']} (center {row['center']}, Dice {row['dice']:.2f})"
    return OverlayCase(label=label, image=image, truth=truth, prediction=mask, spacing=spacing, affine=stack.affine)
