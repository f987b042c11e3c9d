"""The lesion gate: thrombus candidates kept only on a side of the brain that holds a diffusion lesion."""

from __future__ import annotations

import numpy as np
import pytest

from thrombus.inference.lesion_gate import LesionGate, apply_gate, core_lesions, decide, unit_problem

#: 1 mm voxels in RAS: scanner x grows with the first index, toward the patient's right.
AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])
SHAPE = (60, 40, 20)


def head() -> tuple[np.ndarray, np.ndarray]:
    """A brain filling the volume (its centre at x = 29.5) and an ADC map of normal tissue."""
    brain = np.ones(SHAPE, dtype=bool)
    adc = np.full(SHAPE, 800.0, dtype=np.float32)
    return brain, adc


def candidates() -> np.ndarray:
    """Three candidates: on the patient's left (low x), on the right (high x), and on the midline."""
    mask = np.zeros(SHAPE, dtype=bool)
    mask[10:12, 20:22, 10:12] = True  # left
    mask[48:50, 20:22, 10:12] = True  # right
    mask[29:31, 5:7, 10:12] = True    # midline (x 29-30, within 3 mm of 29.5)
    return mask


def test_a_right_lesion_keeps_the_right_and_midline_candidates_and_drops_the_left_one() -> None:
    brain, adc = head()
    adc[45:55, 10:30, 5:15] = 500.0  # 2 ml of core on the right
    gated, record = apply_gate(candidates(), adc, brain, AFFINE, LesionGate())
    assert record["applied"] and record["lesion_sides"] == ["right"] and record["lesion_ml"] == pytest.approx(2.0)
    assert record["components_dropped"] == 1
    assert gated[48, 20, 10] and gated[29, 5, 10] and not gated[10:12].any()


def test_no_lesion_drops_every_candidate_and_bilateral_lesions_keep_both_sides() -> None:
    brain, adc = head()
    gated, record = apply_gate(candidates(), adc, brain, AFFINE, LesionGate())
    assert not gated.any() and record["lesion_sides"] == [] and record["components_dropped"] == 3
    adc[2:10, 30:38, 2:8] = 450.0
    adc[50:58, 30:38, 2:8] = 450.0
    gated, record = apply_gate(candidates(), adc, brain, AFFINE, LesionGate())
    assert record["lesion_sides"] == ["left", "right"] and np.array_equal(gated, candidates())


def test_a_core_smaller_than_the_minimum_does_not_open_the_gate() -> None:
    brain, adc = head()
    adc[45:50, 10:15, 5:9] = 500.0  # 0.1 ml: the size of the noise clusters of a thrombus-negative scan
    assert not core_lesions(adc, brain, 0.001, LesionGate()).any()
    assert core_lesions(adc, brain, 0.001, LesionGate(min_lesion_ml=0.05)).sum() == 100
    assert decide(adc, brain, AFFINE, LesionGate(min_lesion_ml=0.05)).sides == ("right",)
    assert decide(adc, brain, AFFINE, LesionGate()).sides == ()


def test_the_gate_is_not_applied_without_an_adc_map_or_to_one_in_another_unit() -> None:
    brain, adc = head()
    mask = candidates()
    gated, record = apply_gate(mask, None, brain, AFFINE, LesionGate())
    assert np.array_equal(gated, mask) and not record["applied"] and "no ADC map" in record["reason"]
    gated, record = apply_gate(mask, adc / 1000.0, brain, AFFINE, LesionGate())  # mm^2/s x 1e-3: 0.8
    assert np.array_equal(gated, mask) and not record["applied"] and "not in 1e-6 mm^2/s" in record["reason"]
    assert unit_problem(adc, brain) is None


def test_the_side_follows_the_affine_not_the_array_index() -> None:
    """An LAS grid (x flipped): the lesion at high index is on the patient's left."""
    brain, adc = head()
    las = np.diag([-1.0, 1.0, 1.0, 1.0])
    adc[45:55, 10:30, 5:15] = 500.0
    gated, record = apply_gate(candidates(), adc, brain, las, LesionGate())
    assert record["lesion_sides"] == ["left"] and gated[48, 20, 10] and not gated[10:12].any()


def test_the_config_section_turns_the_gate_on_and_off() -> None:
    assert LesionGate.from_mapping(None) is None
    assert LesionGate.from_mapping({"enabled": False}) is None
    assert LesionGate.from_mapping({}) == LesionGate()
    assert LesionGate.from_mapping({"min_lesion_ml": 0.5}).min_lesion_ml == 0.5
    with pytest.raises(ValueError, match="adc_max"):
        LesionGate(adc_max=0.62)


@pytest.mark.bad_input
def test_a_bad_lesion_gate_option_stops_predict_fold_with_a_message(caplog: pytest.LogCaptureFixture) -> None:
    import argparse

    from thrombus.inference.fold import add_predict_fold_parser

    parser = argparse.ArgumentParser()
    add_predict_fold_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["predict-fold", "--sheet", "s.tsv", "--stacks-root", ".", "--splits", "loco.json", "--fold", "0",
                              "--checkpoint", "best.pt", "--out-dir", "out", "--lesion-gate", '{"min_lesion_ml": -1}'])
    assert args.func(args) == 1
    assert "--lesion-gate: lesion_gate min_lesion_ml must be >= 0" in caplog.text
