"""Evaluation of one experiment's fold: every test subject with every subset, one row each.

A subject that cannot be scored (its prediction failed, its mask is missing, the grids differ) gets no
row; it is listed in the fold's record with the error, the other subjects are scored, and the tables
state the failures in their notes rather than silently averaging over fewer cases.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from thrombus.io import read_json, write_json, write_text

log = logging.getLogger(__name__)

#: Columns that identify a row, before the metrics.
KEY_COLUMNS: tuple[str, ...] = ("experiment", "fold", "subset", "center", "subject")


@dataclass(frozen=True)
class FoldEvaluation:
    """The rows and the failures of one fold."""

    rows: list[dict[str, Any]]
    failures: list[dict[str, Any]]


def evaluate_fold(
    sheet: Path, predictions: Path, experiment: str, fold: int, options: Mapping[str, Any]
) -> FoldEvaluation:
    """Score every prediction listed in `predictions/predictions.json` against the sheet's masks."""
    from thrombus.evaluation.metrics import EvaluationError, EvaluationOptions, evaluate_files
    from thrombus.inference.fold import subject_folder
    from thrombus.samples import read_sheet, subjects

    by_id = {s.subject: s for s in subjects(read_sheet(sheet), {})}
    listing = read_json(predictions / "predictions.json")
    metric_options = EvaluationOptions(empty_penalty_mm=options.get("empty_penalty_mm"))
    rows, failures = [], []
    for entry in listing["predictions"]:
        key = {"experiment": experiment, "fold": fold, "subset": entry["subset"], "center": entry["center"], "subject": entry["subject"]}
        if entry["status"] != "ok":
            failures.append({**key, "step": "predict", "error": entry.get("error", "prediction failed")})
            continue
        s = by_id.get(entry["subject"])
        if s is None:
            failures.append({**key, "step": "evaluate", "error": f"subject {entry['subject']} is not in the sample sheet {sheet}"})
            continue
        mask = subject_folder(predictions, entry["subset"], entry["center"], entry["subject"]) / "mask.nii.gz"
        truth = Path(s.thrombus_mask) if s.thrombus_mask else None
        try:
            record = evaluate_files(mask, truth, s.subject, s.center, s.thrombus == "1", metric_options)
        except (EvaluationError, FileNotFoundError) as error:
            log.error("%s, subset %s: %s", s.subject, entry["subset"], error)
            failures.append({**key, "step": "evaluate", "error": str(error)})
            continue
        rows.append({**key, **{k: v for k, v in record.items() if k not in ("subject", "center")}})
    return FoldEvaluation(rows=rows, failures=failures)


def write_fold(result: FoldEvaluation, table: Path, record: Path, extra: Mapping[str, Any]) -> None:
    """Rows as a TSV sorted by subset and subject (stable bytes), failures and context as JSON."""
    frame = pd.DataFrame(result.rows)
    if frame.empty:
        frame = pd.DataFrame(columns=list(KEY_COLUMNS))
    frame = frame.sort_values(["subset", "center", "subject"], kind="mergesort").reset_index(drop=True)
    write_text(table, frame.to_csv(sep="\t", index=False, float_format="%.6g", lineterminator="\n"))
    write_json(record, {**extra, "rows": len(result.rows), "failures": result.failures})


def read_folds(tables: Sequence[Path], subsets: Sequence[str]) -> pd.DataFrame:
    """The rows of several folds, restricted to `subsets`, in a stable order."""
    # Identifiers stay text, as the sheet has them: center "01" or subject "007" must not become numbers.
    text = {column: str for column in KEY_COLUMNS if column != "fold"}
    frames = [pd.read_csv(path, sep="\t", dtype=text) for path in tables]
    frames = [frame for frame in frames if not frame.empty]
    if not frames:
        return pd.DataFrame(columns=list(KEY_COLUMNS))
    rows = pd.concat(frames, ignore_index=True)
    rows = rows[rows["subset"].isin(list(subsets))]
    return rows.sort_values(list(KEY_COLUMNS), kind="mergesort").reset_index(drop=True)
