"""Checks shared by the option dataclasses that config sections are read into."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Iterable, Mapping
from typing import Any


def check_known_keys(cls: type, values: Mapping[str, Any], section: str, also_known: Iterable[str] = ()) -> None:
    """Refuse keys the dataclass does not have: a typo in a config section must not pass silently."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {section} config keys {unknown}: the known keys are {sorted(known | set(also_known))}")


def json_object(text: str, what: str) -> dict[str, Any]:
    """A JSON object given on the command line (a config section), with an error that names the option."""
    from thrombus.samples import ConfigError

    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{what} is not valid JSON ({error}): {text[:200]}") from error
    if not isinstance(value, dict):
        raise ConfigError(f"{what} must be a JSON object, got {text[:200]}")
    return value


def positive_int(text: str) -> int:
    """argparse type of a count (threads, batch size, workers): a whole number of at least 1.

    A zero or negative count used to reach torch or a process pool and fail there with a traceback.
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {value}")
    return value
