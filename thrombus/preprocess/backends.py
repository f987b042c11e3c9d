"""Backends as the modules of a package: how the skull-stripping extractors and the registrators are found.

A backend is one module of its package, named by the config; nothing else lists them, so adding one is
its module and its name in the schema's enum. Modules load on first use: a backend's packages cost
nothing to a run that uses another.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from types import ModuleType


def module_names(path: Iterable[str]) -> tuple[str, ...]:
    """The public modules of the package at `path` (its `__path__`), sorted."""
    return tuple(sorted(info.name for info in pkgutil.iter_modules(path) if not info.name.startswith("_")))


def load_module(package: str, path: Iterable[str], name: str, what: str) -> ModuleType:
    """The module `name` of `package`; an unknown name is refused as `what`, with the list of known ones."""
    known = module_names(path)
    if name not in known:
        raise ValueError(f"{what} {name!r} unknown; expected one of {known}")
    return importlib.import_module(f"{package}.{name}")
