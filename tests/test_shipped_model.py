"""The models shipped with the package: they load offline with weights_only, and reproduce the figures their
card records when their validation subjects are rebuilt from the synthetic preset and preprocessed by
the workflow as it stands (so a change to preprocessing that the shipped weights no longer fit shows)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import nibabel as nib
import pytest
import torch

from conftest import BIN, REPO, snakemake, tool_env, write_config
from thrombus.provenance import machine_description
from thrombus.samples import read_sheet, subjects
from thrombus.synth import generate_cohort
from thrombus.training.card import load_checkpoint
from thrombus.shipping import figures
from thrombus.training.pretrained import CARD, WEIGHTS, shipped_card, shipped_names, shipped_root

SHIPPED = shipped_names()


def test_the_demo_starts_from_a_shipped_model() -> None:
    import yaml

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    assert config["train"]["init_from"] in SHIPPED
    assert yaml.safe_load((REPO / "config" / "paper.yaml").read_text())["train"]["init_from"] is None


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_model_loads_offline_and_its_card_says_how_it_was_made(name: str) -> None:
    payload = torch.load(shipped_root() / name / WEIGHTS, map_location="cpu", weights_only=True)
    load_checkpoint(shipped_root() / name / WEIGHTS, {})  # format, version and the weights' checksum
    card = shipped_card(name)
    assert card["model"] == payload["card"]["model"] and card["channels"] == payload["card"]["channels"]
    made = card["shipped"]
    assert made["trained_by"] and made["trained_at_commit"] and made["cohort"]["seed"] is not None
    assert made["cohort"]["preset"] and made["configs"] and made["trained_on_centers"]
    assert set(made["validation"]["subjects"]) == set(card["training"]["split"]["val"])
    held_out = set(made["held_out"])
    assert held_out and not held_out & set(made["trained_on_centers"])


def rebuilt_subjects(card: dict) -> list[str]:
    """The best-fitted detected validation subject and one thrombus-negative one: a positive and a negative
    figure to reproduce, at the cost of two subjects' preprocessing."""
    rows = card["shipped"]["validation"]["subjects"]
    positives = sorted((r["dice"], name) for name, r in rows.items() if r["positive"] and r["detected"])
    negatives = sorted(name for name, r in rows.items() if not r["positive"])
    return [positives[-1][1], *negatives[:1]]


def cpu_tolerances(export_machine: str) -> tuple[int, float]:
    """How far a rebuilt subject's false components and Dice may be from the card's: on the CPU model that
    measured the card, the same false components and Dice within 0.01; on another, the difference
    measured between two CPU models.

    Another CPU runs other kernels (skull stripping's and the network's), which round differently, and a
    young model's small false components move: A010 on an AVX-512 Xeon against the AMD EPYC of the card,
    the clot's 11 voxels found on both, but 8 false-positive voxels in 3 components instead of 4 in 2
    (Dice 0.733 against 0.846; the 3rd component is one voxel at probability 0.507).
    """
    if export_machine.split(",")[0] == machine_description().split(",")[0]:
        return 0, 0.01
    return 1, 0.15


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_model_reproduces_its_recorded_validation_figures(name: str, tmp_path: Path) -> None:
    card = shipped_card(name)
    cohort = card["shipped"]["cohort"]
    picked = rebuilt_subjects(card)
    generate_cohort(cohort["preset"], tmp_path / "cohort", seed=cohort["seed"], progress=False, threads=2, only=picked)
    # the shipped config's preprocessing, on a sheet of these subjects only (one fold, so the workflow parses)
    over = write_config(tmp_path / "over.yaml", samples=str(tmp_path / "cohort" / "samples.tsv"),
                        experiments={"loco_gmd": {"folds": [0]}}, inference={"fold": 0})
    done = snakemake(tmp_path, "--profile", str(REPO / "profiles" / "local"), "--configfile",
                     str(REPO / "config" / "config.yaml"), str(over), "--", "preprocess", timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    pool = subjects(read_sheet(tmp_path / "cohort" / "samples.tsv"), {})
    measured = figures(shipped_root() / name / WEIGHTS, pool, tmp_path, threads=min(2, os.cpu_count() or 1))
    recorded = card["shipped"]["validation"]["subjects"]
    false_components, dice = cpu_tolerances(card["shipped"]["export_machine"])
    for subject in picked:
        assert measured[subject]["detected"] == recorded[subject]["detected"], subject
        assert abs(measured[subject]["fp_components"] - recorded[subject]["fp_components"]) <= false_components, subject
        assert measured[subject]["dice"] == pytest.approx(recorded[subject]["dice"], abs=dice), subject
    # by hand, as a user takes a new scan to a mask: the shipped model named instead of a checkpoint path
    positive = next(s for s in pool if s.subject == picked[0])
    stack = tmp_path / "results" / "harmonise" / positive.center / positive.subject
    out = tmp_path / "by_hand"
    command = [str(BIN / "thrombus"), "predict", "--checkpoint", name, "--stack", str(stack / "stack.nii.gz"),
               "--summary", str(stack / "stack.json"), "--out-probability", str(out / "probability.nii.gz"),
               "--out-mask", str(out / "mask.nii.gz"), "--record", str(out / "record.json"),
               "--subject", positive.subject, "--center", positive.center, "--threads", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=tool_env())
    assert done.returncode == 0, done.stderr[-3000:]
    mask = nib.load(out / "mask.nii.gz").get_fdata() > 0
    assert (mask & (nib.load(positive.thrombus_mask).get_fdata() > 0)).any()  # found by hand as in the card
