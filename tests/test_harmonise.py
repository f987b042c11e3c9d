"""Harmonisation maths: robust z-scoring, histogram standardisation, channel choice."""

from __future__ import annotations

import numpy as np
import pytest

from thrombus.preprocess.harmonise import (
    NormaliseOptions, build_stack, choose_sources, learn_standard_scale, robust_zscore, standardise_histogram,
)


@pytest.fixture
def head() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    mask = np.zeros((20, 20, 10), dtype=bool)
    mask[4:16, 4:16, 2:8] = True
    data = np.where(mask, rng.gamma(4.0, 50.0, mask.shape), rng.random(mask.shape)).astype(np.float32)
    return data, mask


def test_zscore_inside_the_brain_and_zero_outside(head: tuple[np.ndarray, np.ndarray]) -> None:
    data, mask = head
    data[5, 5, 5] = 1e6  # one extreme voxel must not squash the contrast
    out, stats = robust_zscore(data, mask, NormaliseOptions())
    assert abs(out[mask].mean()) < 1e-5 and abs(out[mask].std() - 1) < 1e-5
    assert not out[~mask].any()
    assert stats["p_high"] < 1e5


def test_centers_with_different_scaling_meet_on_the_standard_scale(head: tuple[np.ndarray, np.ndarray]) -> None:
    """A center whose scanner scales intensities by 3x and adds an offset lands on the same histogram."""
    data, mask = head
    scale = learn_standard_scale([(data, mask), (data * 0.5 + 7, mask)])
    a = standardise_histogram(data, mask, scale)
    b = standardise_histogram(data * 3.0 + 40.0, mask, scale)
    np.testing.assert_allclose(a[mask], b[mask], atol=1e-3)
    assert scale[0] == 0 and scale[-1] == 100


def test_missing_channel_is_zero_filled_and_flagged(head: tuple[np.ndarray, np.ndarray]) -> None:
    data, mask = head
    channels = {"susceptibility": ["swi", "t2star"], "dwi": ["dwi"], "flair": ["flair"]}
    assert choose_sources(channels, ["t2star", "dwi"]) == {"susceptibility": "t2star", "dwi": "dwi", "flair": None}
    stack = build_stack({"t2star": data, "dwi": data * 2}, mask, channels, NormaliseOptions())
    assert stack.availability == [1, 1, 0]
    assert stack.data.shape == (*mask.shape, 3) and not stack.data[..., 2].any()


@pytest.mark.bad_input
def test_histogram_mode_needs_a_learned_scale(head: tuple[np.ndarray, np.ndarray]) -> None:
    data, mask = head
    with pytest.raises(ValueError, match="no learned histogram scale for channel dwi"):
        build_stack({"dwi": data}, mask, {"dwi": ["dwi"]}, NormaliseOptions(method="histogram"), {})


@pytest.mark.bad_input
def test_a_failed_registration_becomes_a_missing_channel(head: tuple[np.ndarray, np.ndarray], tmp_path) -> None:
    """A sequence whose registration QC says unusable is zero-filled and listed, never stacked misaligned."""
    import json
    from pathlib import Path

    import nibabel as nib

    from thrombus.preprocess.harmonise import harmonise_subject

    data, mask = head
    for name, array in {"swi": data, "flair": data * 3, "mask": mask.astype(np.uint8)}.items():
        nib.save(nib.Nifti1Image(array, np.eye(4)), tmp_path / f"{name}.nii.gz")
    (tmp_path / "flair.json").write_text(json.dumps({"qc": {"usable": False, "flags": ["mutual information decreased"]}}))
    summary = harmonise_subject(
        tmp_path / "swi.nii.gz", "swi", {"flair": tmp_path / "flair.nii.gz"}, {"flair": tmp_path / "flair.json"},
        tmp_path / "mask.nii.gz", {"susceptibility": ["swi"], "flair": ["flair"]}, NormaliseOptions(),
        tmp_path / "stack.nii.gz", tmp_path / "stack.json", "S1", "C1",
    )
    assert summary["availability"] == [1, 0]
    assert summary["excluded"] == {"flair": "mutual information decreased"}
    stack = np.asarray(nib.load(Path(tmp_path / "stack.nii.gz")).dataobj)
    assert not stack[..., 1].any() and stack[..., 0].any()
