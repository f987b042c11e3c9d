"""Per-center (and overall) summary tables of the per-subject records, as CSV, Markdown and LaTeX.

A table of small-target metrics means nothing without the rule that produced it, so every table
carries notes: `MATCHING_RULE` plus whatever the caller adds (failed or skipped subjects, the config).
Files are byte-identical for identical input (fixed float format, deterministic row order, no dates),
so "same config + same data = same tables" can be checked with a checksum.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from thrombus.io import write_text

log = logging.getLogger(__name__)

#: The matching and scoring rules behind every number in the tables; goes into every table's notes.
MATCHING_RULE = (
    "Detection: a thrombus-positive case is detected when the prediction overlaps the reference by >= 1 voxel "
    "(95% Wilson score interval). Lesion-wise: 26-connected components; a reference component is found when "
    ">= 1 predicted voxel lies in it, a predicted component is a false positive when it overlaps no reference "
    "voxel. Dice and HD95 over thrombus-positive cases; HD95 (mm) is the larger of the two directed 95th "
    "percentile surface distances (MONAI convention), and an empty prediction scores the explicit penalty "
    "(the image grid's diagonal in mm unless configured), never a dropped NaN. Length: maximum Feret diameter "
    "(mm) of the reference and of the predicted components that touch it."
)

#: Summary columns after the grouping columns, in order.
SUMMARY_COLUMNS: tuple[str, ...] = (
    "n", "n_positive", "n_negative", "n_detected", "detection", "detection_ci_low", "detection_ci_high",
    "lesion_recall", "lesion_precision", "lesion_f1", "fp_per_case", "negatives_with_fp", "dice_mean",
    "dice_sd", "dice_median", "dice_detected_mean", "hd95_mean", "hd95_sd", "hd95_median", "n_hd95_penalised",
    "volume_error_ml_mean", "length_error_mm_mean",
)

#: The label of the pooled row.
ALL = "all"

_NUMERIC = (
    "positive", "detected", "lesion_recall", "lesion_precision", "lesion_f1", "lesion_fp", "dice", "hd95_mm",
    "hd95_penalised", "volume_error_ml", "length_error_mm", "false_positive_case",
)


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a proportion: stays inside [0, 1] and is honest at 0/n and n/n.

    The normal (Wald) interval collapses to a point at 10/10, which is exactly the small-center case
    these tables have. With no trials there is no proportion: (nan, nan).
    """
    if n == 0:
        return (math.nan, math.nan)
    if not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: successes must be in [0, n], got {successes} of {n}")
    p = successes / n
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def _mean(values: pd.Series) -> float:
    values = values.dropna()
    return float(values.mean()) if len(values) else math.nan


def _sd(values: pd.Series) -> float:
    """Sample standard deviation; NaN with fewer than two values (no spread can be estimated)."""
    values = values.dropna()
    return float(values.std(ddof=1)) if len(values) > 1 else math.nan


def _median(values: pd.Series) -> float:
    values = values.dropna()
    return float(values.median()) if len(values) else math.nan


def _summary_row(cases: pd.DataFrame) -> dict[str, float | int]:
    """Every summary number for one set of cases; the denominators are stated in MATCHING_RULE."""
    positives = cases[cases["positive"] == 1]
    negatives = cases[cases["positive"] == 0]
    n_detected = int((positives["detected"] == 1).sum())
    low, high = wilson_interval(n_detected, len(positives))
    detected = positives[positives["detected"] == 1]
    return {
        "n": len(cases),
        "n_positive": len(positives),
        "n_negative": len(negatives),
        "n_detected": n_detected,
        "detection": n_detected / len(positives) if len(positives) else math.nan,
        "detection_ci_low": low,
        "detection_ci_high": high,
        "lesion_recall": _mean(cases["lesion_recall"]),
        "lesion_precision": _mean(cases["lesion_precision"]),
        "lesion_f1": _mean(cases["lesion_f1"]),
        "fp_per_case": _mean(cases["lesion_fp"]),
        "negatives_with_fp": _mean(negatives["false_positive_case"]),
        "dice_mean": _mean(positives["dice"]),
        "dice_sd": _sd(positives["dice"]),
        "dice_median": _median(positives["dice"]),
        "dice_detected_mean": _mean(detected["dice"]),
        "hd95_mean": _mean(positives["hd95_mm"]),
        "hd95_sd": _sd(positives["hd95_mm"]),
        "hd95_median": _median(positives["hd95_mm"]),
        "n_hd95_penalised": int((positives["hd95_penalised"] == 1).sum()),
        "volume_error_ml_mean": _mean(cases["volume_error_ml"]),
        "length_error_mm_mean": _mean(positives["length_error_mm"]),
    }


def _prepare(records: pd.DataFrame, groups: list[str]) -> pd.DataFrame:
    """Numeric metric columns (None -> NaN) and string group columns, so sorting is deterministic."""
    missing = [c for c in (*groups, *_NUMERIC) if c not in records.columns]
    if missing and records.empty:
        # nothing was scored (every subject failed): an empty table whose notes list the failures
        records = records.reindex(columns=[*records.columns, *missing])
    elif missing:
        raise ValueError(
            f"summarise: the records lack columns {missing}; pass the records written by "
            "thrombus.evaluation.metrics.evaluate_files (and the grouping columns)"
        )
    frame = records.copy()
    for column in _NUMERIC:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    for column in groups:
        frame[column] = frame[column].astype(str)
    pooled = groups[-1]
    if (frame[pooled] == ALL).any():
        # only the pooled column gets an "all" row; a leading column may hold "all" (the default subset)
        raise ValueError(f"summarise: a value of {pooled!r} is {ALL!r}, which is reserved for the pooled row")
    return frame


def summarise(records: pd.DataFrame, group: str | Sequence[str] = "center") -> pd.DataFrame:
    """One row per group value plus an "all" row pooling them.

    With several grouping columns (say ["model", "center"]), the last one is pooled: each combination of
    the leading columns (each model) gets its rows per center and then its own "all" row. Rows are sorted
    by group values (as strings) with "all" last in each block, so the table never depends on the order
    the records came in.
    """
    groups = [group] if isinstance(group, str) else list(group)
    if not groups:
        raise ValueError("summarise: give at least one grouping column (e.g. 'center')")
    frame = _prepare(records, groups)
    leading, pooled = groups[:-1], groups[-1]
    blocks = [((), frame)] if not leading else sorted(
        ((key if isinstance(key, tuple) else (key,)), part) for key, part in frame.groupby(leading, sort=True)
    )
    rows = []
    for key, block in blocks:
        for value in sorted(block[pooled].unique()):
            rows.append({**dict(zip(leading, key)), pooled: value, **_summary_row(block[block[pooled] == value])})
        rows.append({**dict(zip(leading, key)), pooled: ALL, **_summary_row(block)})
    return pd.DataFrame(rows, columns=[*groups, *SUMMARY_COLUMNS])


def _number(value: float, digits: int = 2) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _mean_sd(mean: float, sd: float, digits: int = 2) -> str:
    if mean is None or not np.isfinite(mean):
        return "n/a"
    return _number(mean, digits) if not np.isfinite(sd) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _percent(rate: float) -> str:
    return "n/a" if not np.isfinite(rate) else f"{100 * rate:.0f}%"


def _rate_ci(rate: float, low: float, high: float) -> str:
    if not np.isfinite(rate):
        return "n/a"
    return f"{100 * rate:.0f}% [{100 * low:.0f}–{100 * high:.0f}]"


def format_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Display strings for people: "0.62 ± 0.21" (mean ± sd), "83% [55–95]" (rate [Wilson 95% CI])."""
    groups = [c for c in summary.columns if c not in SUMMARY_COLUMNS]
    rows = []
    for _, row in summary.iterrows():
        rows.append({
            **{c: str(row[c]) for c in groups},
            "n (pos/neg)": f"{int(row['n'])} ({int(row['n_positive'])}/{int(row['n_negative'])})",
            "detection [95% CI]": _rate_ci(row["detection"], row["detection_ci_low"], row["detection_ci_high"]),
            "lesion recall": _number(row["lesion_recall"]),
            "lesion precision": _number(row["lesion_precision"]),
            "lesion F1": _number(row["lesion_f1"]),
            "FP / case": _number(row["fp_per_case"]),
            "negatives with FP": _percent(row["negatives_with_fp"]),
            "Dice": _mean_sd(row["dice_mean"], row["dice_sd"]),
            "Dice median": _number(row["dice_median"]),
            "Dice (detected)": _number(row["dice_detected_mean"]),
            "HD95 (mm)": _mean_sd(row["hd95_mean"], row["hd95_sd"], 1),
            "HD95 median (mm)": _number(row["hd95_median"], 1),
            "HD95 penalised": str(int(row["n_hd95_penalised"])),
            "volume error (ml)": _number(row["volume_error_ml_mean"], 3),
            "length error (mm)": _number(row["length_error_mm_mean"], 1),
        })
    return pd.DataFrame(rows, columns=[*groups, *DISPLAY_COLUMNS])


DISPLAY_COLUMNS = (
    "n (pos/neg)", "detection [95% CI]", "lesion recall", "lesion precision", "lesion F1", "FP / case",
    "negatives with FP", "Dice", "Dice median", "Dice (detected)", "HD95 (mm)", "HD95 median (mm)",
    "HD95 penalised", "volume error (ml)", "length error (mm)",
)
NOTHING_SCORED = "nothing scored: the notes say why"


def _markdown_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(display: pd.DataFrame, title: str, notes: Sequence[str], empty: str = NOTHING_SCORED) -> str:
    """Heading, table, then the notes as a list: the rule is read right under the numbers. A table without
    rows gets one saying why (`empty`), so no reader takes it for a table that failed to render."""
    header = [_markdown_cell(c) for c in display.columns]
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for _, row in display.iterrows():
        lines.append("| " + " | ".join(_markdown_cell(v) for v in row) + " |")
    if display.empty:
        lines.append("| " + " | ".join([empty, *([""] * (len(header) - 1))]) + " |")
    lines += ["", "Notes:", ""]
    lines += [f"- {_markdown_cell(note)}" for note in notes]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "–": "--",
    "<": r"$<$", ">": r"$>$", "≥": r"$\geq$", "≤": r"$\leq$", ">=": r"$\geq$", "<=": r"$\leq$",
}


_LATEX_TOKEN = re.compile(r">=|<=|.", re.DOTALL)


def latex_escape(text: str) -> str:
    """Escape one cell for LaTeX text mode, token by token (so escapes are never escaped twice)."""
    return "".join(_LATEX_SPECIAL.get(token, token) for token in _LATEX_TOKEN.findall(str(text)))


def to_latex(display: pd.DataFrame, title: str, notes: Sequence[str], label: str, empty: str = NOTHING_SCORED) -> str:
    """A plain tabular (only \\hline, so no package is needed) in a table float, notes under it."""
    columns = list(display.columns)
    lines = [
        r"\begin{table}[htbp]",
        r"\centering",
        rf"\caption{{{latex_escape(title)}}}",
        rf"\label{{tab:{latex_escape(label)}}}",
        r"\begin{tabular}{" + "l" * len(columns) + "}",
        r"\hline",
        " & ".join(latex_escape(c) for c in columns) + r" \\",
        r"\hline",
    ]
    for _, row in display.iterrows():
        lines.append(" & ".join(latex_escape(v) for v in row) + r" \\")
    if display.empty:
        lines.append(rf"\multicolumn{{{len(columns)}}}{{l}}{{{latex_escape(empty)}}} \\")
    lines += [r"\hline", r"\end{tabular}"]
    if notes:
        lines += [r"\par\smallskip", r"\begin{minipage}{\linewidth}\footnotesize"]
        lines += [latex_escape(note) + r"\par" for note in notes]
        lines.append(r"\end{minipage}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def to_html(display: pd.DataFrame, title: str, notes: Sequence[str], empty: str = NOTHING_SCORED) -> str:
    """A page of its own for the HTML report (Snakemake shows a CSV as a download, an HTML file as a page):
    heading, the table as displayed (a table without rows: one row saying why), then the notes."""
    import html

    if display.empty:
        display = pd.DataFrame([[empty, *([""] * (len(display.columns) - 1))]], columns=display.columns)
    rows = display.to_html(index=False, escape=True, border=0, classes="thrombus-table", na_rep="")
    items = "\n".join(f"<li>{html.escape(note)}</li>" for note in notes)
    style = ("body{font-family:sans-serif;font-size:14px;margin:1em} table{border-collapse:collapse}"
             " th,td{border-bottom:1px solid #ccc;padding:3px 8px;text-align:left} li{margin:0.3em 0}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head>\n<body><h2>{html.escape(title)}</h2>\n{rows}\n"
            f"<h3>Notes</h3><ul>\n{items}\n</ul></body></html>\n")


def write_table(summary: pd.DataFrame, stem: Path, title: str, notes: Sequence[str]) -> list[Path]:
    """stem.csv (raw numbers, '%.4f'), stem.md, stem.tex and stem.html (display strings and notes), each atomically.

    Callers should include MATCHING_RULE in `notes` and name any subject that failed or was skipped, so
    the table states what it does not contain.
    """
    stem = Path(stem)
    csv_text = summary.to_csv(index=False, float_format="%.4f", lineterminator="\n", na_rep="")
    display = format_table(summary)
    written = [
        write_text(stem.with_name(stem.name + ".csv"), csv_text),
        write_text(stem.with_name(stem.name + ".md"), to_markdown(display, title, notes)),
        write_text(stem.with_name(stem.name + ".tex"), to_latex(display, title, notes, stem.name)),
        write_text(stem.with_name(stem.name + ".html"), to_html(display, title, notes)),
    ]
    log.info("wrote %s.{csv,md,tex,html} (%d rows)", stem, len(summary))
    return written
