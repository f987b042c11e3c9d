"""Evaluation: per-subject metrics, per-center summary tables, and the figures that go with them.

`metrics` turns one prediction and its reference into a flat record under explicitly stated rules
(`tables.MATCHING_RULE`); `tables` pools records per center and overall; `figures` draws them.
"""

from thrombus.evaluation.metrics import EvaluationError, EvaluationOptions, evaluate_files, evaluate_masks
from thrombus.evaluation.tables import MATCHING_RULE, format_table, summarise, wilson_interval, write_table

__all__ = [
    "EvaluationError",
    "EvaluationOptions",
    "MATCHING_RULE",
    "evaluate_files",
    "evaluate_masks",
    "format_table",
    "summarise",
    "wilson_interval",
    "write_table",
]
