"""Preprocessing on the tiny synthetic cohort, judged against what the generator knows to be true."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from thrombus.samples import read_sheet

LPS = np.diag([-1.0, -1.0, 1.0])  # ANTs works in LPS, NIfTI and the generator in RAS


def _truths(cohort: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(cohort.glob("truth/*/*/truth.json"))]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b)))


def test_hdbet_mask_matches_the_generators_brain(tiny_cohort: Path, tiny_run: Path) -> None:
    for truth in _truths(tiny_cohort):
        c, s = truth["center"], truth["subject"]
        ours = np.asarray(nib.load(tiny_run / f"results/register/{c}/{s}/brain_mask.nii.gz").dataobj) > 0
        generated = np.asarray(nib.load(tiny_cohort / f"truth/{c}/{s}/brain.nii.gz").dataobj) > 0
        assert _dice(ours, generated) >= 0.95, (s, _dice(ours, generated))


def test_registration_recovers_the_applied_head_motion(tiny_cohort: Path, tiny_run: Path) -> None:
    """Mean residual over brain points below one voxel of the reference grid (the smallest spacing)."""
    from thrombus.preprocess.register import import_ants

    ants = import_ants(1)
    checked = 0
    for truth in _truths(tiny_cohort):
        c, s = truth["center"], truth["subject"]
        reference = nib.load(tiny_run / f"results/convert/{c}/{s}/{truth['reference']}.nii.gz")
        brain = np.argwhere(np.asarray(nib.load(tiny_cohort / f"truth/{c}/{s}/brain.nii.gz").dataobj) > 0)[::11]
        points = nib.affines.apply_affine(reference.affine, brain)
        voxel = float(min(reference.header.get_zooms()[:3]))
        for sequence, info in truth["sequences"].items():
            transform = tiny_run / f"results/register/{c}/{s}/{sequence}.mat"
            if sequence == truth["reference"]:
                continue
            tx = ants.read_transform(str(transform))
            expected = nib.affines.apply_affine(np.asarray(info["motion"]["matrix_ras"]), points)
            found = np.array([LPS @ np.asarray(tx.apply_to_point(tuple(LPS @ p))) for p in points])
            residual = float(np.linalg.norm(found - expected, axis=1).mean())
            assert residual < voxel, (s, sequence, residual, voxel)
            checked += 1
    assert checked >= 10


def test_harmonised_stacks(tiny_cohort: Path, tiny_run: Path) -> None:
    for truth in _truths(tiny_cohort):
        c, s = truth["center"], truth["subject"]
        summary = json.loads((tiny_run / f"results/harmonise/{c}/{s}/stack.json").read_text())
        stack = np.asarray(nib.load(tiny_run / f"results/harmonise/{c}/{s}/stack.nii.gz").dataobj)
        mask = np.asarray(nib.load(tiny_run / f"results/register/{c}/{s}/brain_mask.nii.gz").dataobj) > 0
        assert summary["channels"] == ["susceptibility", "dwi", "adc", "flair"]
        assert stack.shape == (*truth["grid"]["shape"], 4) and stack.dtype == np.float32
        assert summary["sources"]["susceptibility"] == truth["reference"]
        for index, available in enumerate(summary["availability"]):
            channel = stack[..., index]
            if available:
                assert abs(float(channel[mask].mean())) < 1e-3 and abs(float(channel[mask].std()) - 1) < 1e-3
                assert not channel[~mask].any()
            else:
                assert not channel.any()
        acquired = set(truth["sequences"])
        assert summary["availability"][3] == int("flair" in acquired)


def test_center_qc_table_and_fingerprint(tiny_cohort: Path, tiny_run: Path) -> None:
    for center in ("A", "B", "C"):
        table = pd.read_csv(tiny_run / f"results/qc/{center}/preprocess.tsv", sep="\t", keep_default_na=False)
        assert {"subject", "sequence", "mi_before", "mi_after", "brain_ml", "outlier", "usable"} <= set(table.columns)
        registered = table[table["mi_after"] != ""]
        assert (registered["mi_after"].astype(float) > registered["mi_before"].astype(float)).all()
        fingerprint = json.loads((tiny_run / f"results/harmonise/{center}/fingerprint.json").read_text())
        members = int((read_sheet(tiny_run / "samples.tsv")["center"] == center).sum())  # the run's sheet: N001 too
        assert fingerprint["n_subjects"] == members and "susceptibility" in fingerprint["intensity"]
        assert (tiny_run / f"results/qc/{center}/{table['subject'].iloc[0]}/preprocess.png").stat().st_size > 10_000
