"""`snakemake --profile slurm all` on the tiny cohort (one center), through a real SLURM cluster.

The site profile is installed the way users install it (scripts/slurm/install-profile.sh into
$XDG_CONFIG_HOME/snakemake/slurm), filled for the test cluster, and found by name.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import BIN, REPO, write_config
from thrombus import SEQUENCES
from thrombus.samples import read_sheet

try:
    from slurm_cluster import slurm_cluster, write_slurm_profile  # noqa: F401 (fixture)
except ImportError:
    from tests.slurm_cluster import slurm_cluster, write_slurm_profile  # noqa: F401

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_workflow_runs_through_sbatch(slurm_cluster, tiny_cohort: Path, tmp_path: Path) -> None:  # noqa: F811
    xdg = tmp_path / "xdg"
    installed = subprocess.run(["bash", str(REPO / "scripts/slurm/install-profile.sh")], env=dict(os.environ, XDG_CONFIG_HOME=str(xdg)),
                               capture_output=True, text=True, timeout=60)
    assert installed.returncode == 0, installed.stderr
    write_slurm_profile(xdg / "snakemake" / "slurm", slurm_cluster)  # the site's edits: account, partition
    workdir = tmp_path / "run"
    workdir.mkdir()
    config = write_config(workdir / "config.yaml", samples=str(tiny_cohort / "samples.tsv"), center="A")
    env = {"XDG_CONFIG_HOME": str(xdg), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    run = slurm_cluster.snakemake(["all", "-s", str(REPO / "Snakefile"), "--profile", "slurm", "--configfile", str(config)],
                                  cwd=workdir, timeout=1500, extra_env=env)
    tail = "\n".join(run.output.splitlines()[-80:])
    assert run.returncode == 0, tail + slurm_cluster.diagnostics()
    assert run.run_id, "no SLURM run ID in the output: the slurm executor was not used\n" + tail
    for subject in ("A001", "A002"):
        assert (workdir / f"results/harmonise/A/{subject}/stack.nii.gz").exists()
    assert (workdir / "results/qc/A/preprocess.tsv").exists()
    assert not (workdir / "results/harmonise/B").exists()
    rows = slurm_cluster.sacct_run(run.run_id)
    rules = sorted(r["Comment"].split("_wildcards")[0] for r in rows)
    assert rows and all(r["State"] == "COMPLETED" for r in rows), rows
    # every non-local job went through sbatch: conversion, skull stripping, registration, harmonisation
    for rule in ("rule_convert", "rule_skullstrip", "rule_register", "rule_brainmask", "rule_harmonise"):
        assert rule in rules, rules
    assert "rule_qc_center" not in rules, "qc_center is a local rule"
    sheet = read_sheet(tiny_cohort / "samples.tsv")
    center_a = sheet[sheet["center"] == "A"]
    conversions = sum(int(bool(value)) for column in SEQUENCES for value in center_a[column])
    assert rules.count("rule_convert") == conversions and rules.count("rule_harmonise") == len(center_a), rules
