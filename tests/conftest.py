"""Shared fixtures: the repository, a Snakemake runner, the real-data folder, the tiny synthetic cohort."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def tool_env() -> dict[str, str]:
    """The environment for subprocesses: this interpreter's bin first, so `thrombus`/`snakemake` resolve to it."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def snakemake(workdir: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """Run the project's workflow in `workdir` (outputs land there, never in the repository)."""
    command = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(workdir), *args]
    return subprocess.run(command, cwd=workdir, env=tool_env(), capture_output=True, text=True, timeout=timeout)


def write_config(path: Path, **values: object) -> Path:
    """A config file holding `values` (the schema fills the rest with its defaults)."""
    import yaml

    path.write_text(yaml.safe_dump(values, sort_keys=True))
    return path


def smoke_config(**values: object) -> dict[str, object]:
    """config/smoke.yaml (tiny models, a few iterations) with `values` laid over it."""
    import yaml

    return {**yaml.safe_load((REPO / "config" / "smoke.yaml").read_text()), **values}


@pytest.fixture(scope="session")
def realdata() -> Path:
    """The real scanner data folder named by THROMBUS_REALDATA (`.ci/run` and `make test` set it)."""
    value = os.environ.get("THROMBUS_REALDATA", "")
    if not value:
        pytest.skip("THROMBUS_REALDATA is not set: real scanner data tests need ../shared/realdata (make test sets it)")
    path = Path(value)
    if not (path / "MANIFEST.tsv").exists():
        pytest.skip(f"THROMBUS_REALDATA={value} holds no MANIFEST.tsv: the real scanner data folder is absent")
    return path


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny synthetic cohort, generated once per test session."""
    from thrombus.synth import generate_cohort

    out = tmp_path_factory.mktemp("tiny_cohort")
    generate_cohort(preset="tiny", out_dir=out, seed=None, progress=False, threads=2)
    return out


def with_unlabelled_subject(sheet: Path, target: Path) -> Path:
    """The sheet plus N001, a copy of center A's first subject without a label: new data to predict.

    Its DICOM folder is named after the patient and their ID, as many exports name it, so that the
    privacy test sees whether a source path reaches a record or a log.
    """
    import pandas as pd

    from thrombus.samples import read_sheet

    rows = read_sheet(sheet)
    new = rows[rows["center"] == "A"].iloc[0].copy()
    person = next(p for p in json.loads((sheet.parent / "identifiers.json").read_text())["subjects"] if p["subject"] == new["subject"])
    named = target.parent / "incoming" / f"{person['PatientName']}_{person['PatientID']}"
    shutil.copytree(new["dicom_dir"], named)
    new["dicom_dir"] = str(named)
    new["subject"], new["thrombus"], new["thrombus_mask"], new["infarct_mask"] = "N001", "", "", ""
    pd.concat([rows, new.to_frame().T], ignore_index=True).to_csv(target, sep="\t", index=False)
    return target


@pytest.fixture(scope="session")
def tiny_run(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole workflow, tables included, run once on the tiny cohort (plus one unlabelled subject) with
    the smoke config; its working directory."""
    workdir = tmp_path_factory.mktemp("tiny_run")
    sheet = with_unlabelled_subject(tiny_cohort / "samples.tsv", workdir / "samples.tsv")
    config = write_config(workdir / "config.yaml", **smoke_config(samples=str(sheet)))
    done = snakemake(workdir, "--profile", str(REPO / "profiles" / "local"), "--configfile", str(config), timeout=2400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return workdir
