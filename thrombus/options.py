"""Checks shared by the option dataclasses that config sections are read into."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any


def check_known_keys(cls: type, values: Mapping[str, Any], section: str, also_known: Iterable[str] = ()) -> None:
    """Refuse keys the dataclass does not have: a typo in a config section must not pass silently."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {section} config keys {unknown}: the known keys are {sorted(known | set(also_known))}")
