"""Evaluation: per-subject metrics, per-center summary tables, and the figures that go with them.

`metrics` turns one prediction and its reference into a flat record under explicitly stated rules
(`tables.MATCHING_RULE`); `tables` pools records per center and overall; `figures` draws them.
"""

import importlib
from typing import Any

# Loaded on first use (PEP 562): `thrombus <any step>` builds its parser from evaluation.cli, and must
# not pay for pandas, nibabel and scipy on every job's start-up.
_HOMES = {
    "EvaluationError": "metrics", "EvaluationOptions": "metrics", "evaluate_files": "metrics",
    "evaluate_masks": "metrics", "MATCHING_RULE": "tables", "format_table": "tables", "summarise": "tables",
    "wilson_interval": "tables", "write_table": "tables",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)


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
