"""Registration backends: one module each behind one interface, chosen by `register.backend`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from thrombus.preprocess import registrators
from thrombus.preprocess.register import RegistrationOptions

REPO = Path(__file__).resolve().parents[1]


def test_backends_are_the_registrator_modules_and_the_schema_enum_lists_each() -> None:
    """A backend is one module of thrombus.preprocess.registrators plus its schema enum value: nothing else names it."""
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    backend = schema["properties"]["register"]["properties"]["backend"]
    assert "ants" in registrators.names()
    assert set(backend["enum"]) == set(registrators.names()) and backend["default"] == RegistrationOptions.backend == "ants"
    for name in registrators.names():
        module = registrators.load(name)
        assert callable(module.optimise) and module.VERSIONS
    with pytest.raises(ValueError, match="'elastix' unknown; expected one of"):
        RegistrationOptions(backend="elastix")


def test_the_command_takes_the_backend_from_the_config_section() -> None:
    """`thrombus register --options` carries the config's register section, backend included."""
    from thrombus.preprocess.cli import _registration_options

    args = type("Args", (), {"sequence": "dwi", "threads": 1, "seed": 3})
    args.options = json.dumps({"backend": "ants", "affine_sequences": ["dwi"]})
    options = _registration_options(args)
    assert (options.backend, options.transform, options.seed) == ("ants", "Affine", 3)
    args.options = "{}"
    assert _registration_options(args).backend == "ants"
