"""The thrombus readout against shapes of known size and against the generator's own clots."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from thrombus.inference.measure import center_table, length_and_width, measure_components, measurements


def test_a_rod_in_a_thick_slice_measures_its_boxes() -> None:
    """A 1 x 1 x 6 mm grid; a rod 20 voxels along x, 3 wide in y, in one slice: about 20 mm long (its
    axis tilts by the 3 voxels' width); across it, the 6 mm slice and the rod's in-plane width."""
    affine = np.diag([1.0, 1.0, 6.0, 1.0])
    mask = np.zeros((40, 20, 5), dtype=np.uint8)
    mask[10:30, 8:11, 2] = 1
    (rod,) = measure_components(mask, mask * 0.8, affine)
    axis = np.array([19.0, 2.0]) / np.hypot(19, 2)
    assert rod["length_mm"] == pytest.approx(axis @ (20, 3), abs=0.01)
    across = np.abs(np.array([-axis[1], axis[0]])) @ (20, 3)  # the rod's in-plane extent across its axis
    assert rod["width_mm"] == pytest.approx(np.hypot(6.0, across), abs=0.01)
    assert rod["voxels"] == 60 and rod["volume_ml"] == pytest.approx(0.36)
    assert rod["mean_probability"] == pytest.approx(0.8)


def test_hull_and_all_pairs_agree_and_a_voxel_lies_along_its_longest_edge() -> None:
    rng = np.random.default_rng(0)
    points = rng.normal(size=(400, 3)) * (10, 3, 2)
    axes = np.diag([0.9, 0.9, 6.0])
    from thrombus.inference import measure

    hull = length_and_width(points, axes)
    measure.HULL_ABOVE, saved = 10**9, measure.HULL_ABOVE
    try:
        brute = length_and_width(points, axes)
    finally:
        measure.HULL_ABOVE = saved
    assert hull == pytest.approx(brute, abs=1e-9)
    assert length_and_width(np.zeros((1, 3)), axes) == pytest.approx((6.0, np.hypot(0.9, 0.9)))


def test_sides_follow_the_brain_not_the_scanner_origin() -> None:
    """The head lies 40 mm off the scanner's x = 0: a clot left of the brain's centre is left."""
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[0, 3] = 40.0
    brain = np.zeros((60, 20, 20), dtype=bool)
    brain[10:50] = True
    mask = np.zeros(brain.shape, dtype=np.uint8)
    mask[14:16, 10, 10] = 1   # x = 54-55 mm, the brain's centre at 69.5 mm: left (smaller x)
    mask[45:47, 5, 5] = 1     # x = 85-86 mm: right
    mask[29:31, 15, 15] = 1   # centred: midline
    sides = {c["centroid_scanner_ras_mm"][0]: c["side"] for c in measure_components(mask, mask.astype(float), affine, brain)}
    assert sides == {54.5: "left", 85.5: "right", 69.5: "midline"}


def test_the_generators_clots_measure_their_length_and_side(tiny_cohort: Path) -> None:
    """Every clot of the tiny cohort: side as generated, length within one voxel's reach of the
    generator's (its centreline), and the subject's readout and center table hold it."""
    checked = 0
    readouts = []
    for truth_file in sorted((tiny_cohort / "truth").glob("*/*/truth.json")):
        truth = json.loads(truth_file.read_text())
        clot = truth["thrombus"]
        if not clot.get("present"):
            continue
        image = nib.load(truth_file.with_name("thrombus.nii.gz"))
        mask = np.asarray(image.dataobj) > 0
        brain = np.asarray(nib.load(truth_file.with_name("brain.nii.gz")).dataobj) > 0
        readout = measurements(truth["subject"], truth["center"], mask, mask.astype(np.float32), image.affine, brain, ["susceptibility"])
        found = readout["thrombus"]
        assert found["side"] == clot["side"], truth["subject"]
        reach = float(max(image.header.get_zooms()[:3]))
        assert abs(found["length_mm"] - clot["length_mm"]) <= reach, (truth["subject"], found["length_mm"], clot["length_mm"])
        readouts.append(readout)
        checked += 1
    assert checked >= 2
    table = center_table(readouts)
    assert list(table["found"]) == [True] * checked and table["length_mm"].notna().all()


def test_a_clot_is_placed_in_mni_space_and_named_by_its_segment(tiny_cohort: Path, tmp_path: Path) -> None:
    """The generator places each clot on an artery of its MNI model and moves the head by a known pose:
    the brain-mask registration brings the clot's centroid back within 3 mm and names the artery.
    (Optimistic: synthetic brains are the template's brain posed; real brains differ more.)"""
    from thrombus.inference.atlas import locate, register_to_mni

    truth_file = next(p for p in sorted((tiny_cohort / "truth").glob("*/*/truth.json"))
                      if json.loads(p.read_text())["thrombus"].get("present"))
    truth = json.loads(truth_file.read_text())
    image = nib.load(truth_file.with_name("thrombus.nii.gz"))
    mask = np.asarray(image.dataobj) > 0
    brain = np.asarray(nib.load(truth_file.with_name("brain.nii.gz")).dataobj) > 0
    transform = register_to_mni(brain, image.affine, tmp_path / "to_mni.mat")
    readout = locate(measurements(truth["subject"], truth["center"], mask, mask * 1.0, image.affine, brain, ["susceptibility"]),
                     transform)
    pose = np.asarray(truth["pose"]["matrix_mni_to_ras"])
    centroid = np.asarray(readout["thrombus"]["centroid_scanner_ras_mm"])
    expected = (np.linalg.inv(pose) @ np.r_[centroid, 1.0])[:3]
    assert np.linalg.norm(np.asarray(readout["thrombus"]["centroid_mni_mm"]) - expected) < 3.0
    assert readout["thrombus"]["segment"] == truth["thrombus"]["artery"]
