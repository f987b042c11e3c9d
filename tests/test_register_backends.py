"""Registration backends: one module each behind one interface, chosen by `register.backend`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import yaml

from thrombus.preprocess import registrators
from thrombus.preprocess.register import RegistrationOptions, register_file

REPO = Path(__file__).resolve().parents[1]
FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])


def test_backends_are_the_registrator_modules_and_the_schema_enum_lists_each() -> None:
    """A backend is one module of thrombus.preprocess.registrators plus its schema enum value: nothing else names it."""
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    backend = schema["properties"]["register"]["properties"]["backend"]
    assert {"ants", "greedy"} <= set(registrators.names())  # a new backend needs no change here
    assert set(backend["enum"]) == set(registrators.names()) and backend["default"] == RegistrationOptions.backend == "greedy"
    for name in registrators.names():
        module = registrators.load(name)
        assert callable(module.optimise) and module.VERSIONS
    with pytest.raises(ValueError, match=f"'no_such_backend' unknown; expected one of {re.escape(str(registrators.names()))}"):
        RegistrationOptions(backend="no_such_backend")


def test_the_command_takes_the_backend_from_the_config_section() -> None:
    """`thrombus register --options` carries the config's register section, backend included."""
    from thrombus.preprocess.cli import _registration_options

    args = type("Args", (), {"sequence": "dwi", "threads": 1, "seed": 3})
    args.options = json.dumps({"backend": "greedy", "affine_sequences": ["dwi"]})
    options = _registration_options(args)
    assert (options.backend, options.transform, options.seed) == ("greedy", "Affine", 3)
    args.options = "{}"
    assert _registration_options(args).backend == "greedy"


def test_greedy_refuses_a_schedule_its_pyramid_cannot_follow() -> None:
    from thrombus.preprocess.registrators.greedy import _iterations

    assert _iterations((4, 2, 1)) == (100, 50, 10) and _iterations((2, 1)) == (50, 10)
    assert _iterations((8, 4, 2, 1)) == (100, 100, 50, 10)
    with pytest.raises(ValueError, match="halves the grid per level"):
        _iterations((3, 1))


def _phantom() -> tuple[np.ndarray, np.ndarray]:
    """A 2 mm head: scalp, a brain with ventricle-like and off-centre blobs (so rotations are visible), noise."""
    grid = np.stack(np.meshgrid(*(np.arange(n, dtype=float) for n in (56, 64, 48)), indexing="ij"))
    centre = np.array([28.0, 32.0, 24.0])[:, None, None, None]

    def ellipsoid(radii: tuple[float, float, float], shift: tuple[float, float, float] = (0, 0, 0)) -> np.ndarray:
        offset = (grid - centre - np.asarray(shift, float)[:, None, None, None]) / np.asarray(radii, float)[:, None, None, None]
        return (offset**2).sum(axis=0) <= 1.0

    head = ellipsoid((24, 28, 20))
    brain = ellipsoid((20, 24, 16))
    volume = 300.0 * head + 500.0 * brain
    volume[ellipsoid((3, 8, 4), (-4, 2, 2))] = 150.0
    volume[ellipsoid((3, 6, 4), (5, -4, 2))] = 200.0
    volume[ellipsoid((4, 4, 3), (8, 12, -6))] = 900.0
    volume[ellipsoid((2, 5, 2), (-10, -12, 6))] = 1100.0
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(volume, 1.0).astype(np.float32), brain.astype(np.uint8)


def _motion() -> np.ndarray:
    """4 degrees about z and 2 about x through the head's centre, then (3, -2, 2.5) mm: scanner RAS."""
    a, b = np.radians(4.0), np.radians(2.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    rotation, centre = rz @ rx, np.array([0.0, 0.0, 0.0])
    motion = np.eye(4)
    motion[:3, :3], motion[:3, 3] = rotation, centre - rotation @ centre + np.array([3.0, -2.0, 2.5])
    return motion


def _pair(folder: Path) -> tuple[Path, Path, Path]:
    """Reference and a moved copy: the same head seen after `_motion` (its header moved), fresh noise each."""
    volume, brain = _phantom()
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -np.array([28.0, 32.0, 24.0]) * 2.0
    rng = np.random.default_rng(0)
    paths = folder / "fixed.nii.gz", folder / "moving.nii.gz", folder / "brain.nii.gz"
    nib.save(nib.Nifti1Image(volume + rng.normal(0, 10, volume.shape).astype(np.float32), affine), paths[0])
    nib.save(nib.Nifti1Image(volume + rng.normal(0, 10, volume.shape).astype(np.float32), _motion() @ affine), paths[1])
    nib.save(nib.Nifti1Image(brain, affine), paths[2])
    return paths


def test_greedy_recovers_a_known_rigid_motion_and_reruns_byte_identical(tmp_path: Path) -> None:
    """The transform greedy finds, written as an ITK file, is the motion (within 0.2 mm over the brain),
    and a second process writes the same bytes (one thread, fixed seed)."""
    fixed, moving, brain = _pair(tmp_path)
    script = (
        "import sys; from thrombus.preprocess.register import RegistrationOptions, register_file;"
        f"register_file({str(fixed)!r}, {str(moving)!r}, sys.argv[1] + '.nii.gz', sys.argv[1] + '.mat',"
        f" RegistrationOptions(backend='greedy', seed=11), 'S1', 'C1', 'flair', fixed_mask={str(brain)!r},"
        " record_path=sys.argv[1] + '.json')"
    )
    for run in ("a", "b"):
        subprocess.run([sys.executable, "-c", script, str(tmp_path / run)], check=True)
    assert (tmp_path / "a.mat").read_bytes() == (tmp_path / "b.mat").read_bytes()
    assert (tmp_path / "a.nii.gz").read_bytes() == (tmp_path / "b.nii.gz").read_bytes()

    import ants

    params = np.asarray(ants.read_transform(str(tmp_path / "a.mat")).parameters, dtype=float)
    found = np.eye(4)
    found[:3, :3], found[:3, 3] = params[:9].reshape(3, 3), params[9:12]
    found = FLIP @ found @ FLIP  # the file is LPS, the motion RAS
    mask = nib.load(brain)
    points = mask.affine @ np.c_[np.argwhere(np.asarray(mask.dataobj) > 0), np.ones(int(np.asarray(mask.dataobj).sum()))].T
    residual = np.linalg.norm(((found - _motion()) @ points)[:3], axis=0)
    assert residual.mean() < 0.2, residual.mean()
    record = json.loads((tmp_path / "a.json").read_text())
    assert record["params"]["backend"] == "greedy" and "picsl-greedy" in record["versions"]
    assert record["qc"]["usable"] and record["qc"]["mi_after"] > record["qc"]["mi_before"]


def test_both_backends_start_from_the_centres_when_heads_lie_far_apart(tmp_path: Path) -> None:
    """A moving header 40 mm off: the centres' start is tried and the motion is still found."""
    fixed, moving, brain = _pair(tmp_path)
    image = nib.load(moving)
    affine = image.affine.copy()
    affine[0, 3] += 40.0
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), affine), moving)
    for backend in registrators.names():
        record = register_file(fixed, moving, tmp_path / f"{backend}.nii.gz", tmp_path / f"{backend}.mat",
                               RegistrationOptions(backend=backend, seed=3), "S1", "C1", "flair", fixed_mask=brain)
        qc = record["qc"]
        assert qc["centre_gap_mm"] > 30 and qc["start"] == "centres", (backend, qc)
        assert qc["translation_mm"] == pytest.approx(np.linalg.norm(_motion()[:3, 3] + [40.0, 0, 0]), abs=1.0), (backend, qc)


def test_greedy_output_is_captured_and_its_line_search_messages_become_one_log_line(caplog: Any) -> None:
    """What C code prints on descriptor 1, unterminated and still in stdio's buffer, is captured rather than glued
    to the step's next log line; the line-search messages are counted and said once; anything else is kept."""
    import ctypes
    import logging

    from thrombus.preprocess.registrators.greedy import _captured_stdout, _report

    message = (" IFLAG= -1  LINE SEARCH FAILED. SEE DOCUMENTATION OF ROUTINE MCSRCH ERROR RETURN OF LINE SEARCH: INFO= 3"
               " POSSIBLE CAUSES: FUNCTION OR GRADIENT ARE INCORRECT OR INCORRECT TOLERANCES")
    libc = ctypes.CDLL(None)
    with _captured_stdout() as printed:
        libc.printf((message * 2 + "other text").encode())  # left in C's buffer: no newline, no flush
    assert printed.getvalue() == message * 2 + "other text"
    with caplog.at_level(logging.INFO, logger="thrombus.preprocess.registrators.greedy"):
        _report(printed.getvalue(), (100, 50))
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2 and "stopped early 2 time(s)" in lines[0] and "100x50" in lines[0], lines
    assert lines[1] == "greedy printed: other text"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="thrombus.preprocess.registrators.greedy"):
        _report("", (10,))
    assert not caplog.records
