"""Inference: probability maps on the stack's grid, missing sequences, card checks, postprocessing, calibration.

Stacks are small synthetic 4-channel volumes (32 x 32 x 12) written here with nibabel, as harmonisation
leaves them (stack.nii.gz + stack.json). Plumbing tests use an untrained network; one tiny network is
trained (a few seconds) to overfit a subject and must then find its thrombus through `predict_subject`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from thrombus.inference.calibrate import calibrate, without_channels
from thrombus.inference.cli import add_predict_parsers
from thrombus.inference.lesion_gate import LesionGate
from thrombus.inference.postprocess import (
    CRITERION,
    DEFAULT_CRITERION,
    FEW_CRITERION,
    MIN_POSITIVES,
    SIZES_MM3,
    THRESHOLDS,
    Postprocessing,
    apply_postprocessing,
    choose_postprocessing,
)
from thrombus.inference.predict import (
    InferenceError,
    PredictRequest,
    channel_names,
    load_model,
    predict_probability,
    predict_subject,
    select_channels,
    zero_missing,
)
from thrombus.io import sha256_file, write_json
from thrombus.model import ModelConfig, build_model
from thrombus.nifti import VolumeError
from thrombus.training.card import CheckpointError, card_prediction, load_checkpoint, make_card, save_checkpoint
from thrombus.training.data import AugmentOptions, Case, CaseSource, at_slice_spacing, load_case
from thrombus.model.sliding import OUTSIDE_LOGIT, network_depth, predict_case, resample_slices, slab_centres, tile_starts
from thrombus.training.options import GMDSettings, TrainOptions
from thrombus.training.trainer import TrainRun, train

CHANNELS = ("susceptibility", "dwi", "adc", "flair")
SHAPE = (32, 32, 12)
HARMONISE = {"channels": {name: [name] for name in CHANNELS}, "method": "zscore", "low_percentile": 0.5, "high_percentile": 99.5}
TINY_MODEL = ModelConfig(channels=CHANNELS, base_width=4, depth=2, max_width=16, stem_width=4, fusion_key_width=4, norm_groups=2)
#: Where the planted thrombus sits (x, y, z slices).
THROMBUS = (slice(13, 17), slice(14, 18), slice(5, 8))
CPU = torch.device("cpu")


def make_stack(seed: int, positive: bool) -> tuple[np.ndarray, np.ndarray]:
    """Z-scored-looking noise in an ellipsoid brain (zero around it) and a thrombus mask.

    The thrombus is dark on susceptibility, bright on DWI and dark on ADC in the same 4 x 4 x 3 voxels,
    so a tiny network learns it within a hundred steps.
    """
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij"))
    brain = (grid**2).sum(axis=0) < 0.8
    stack = rng.normal(0.0, 0.3, (*SHAPE, len(CHANNELS))).astype(np.float32) * brain[..., None]
    mask = np.zeros(SHAPE, dtype=np.uint8)
    if positive:
        mask[THROMBUS] = 1
        for channel, value in ((0, -3.0), (1, 2.5), (2, -2.5)):
            stack[(*THROMBUS, channel)] = value
    return stack, mask


def write_stack(folder: Path, stack: np.ndarray, channels: tuple[str, ...] = CHANNELS, availability: list[int] | None = None,
                affine: np.ndarray | None = None, mask: np.ndarray | None = None) -> tuple[Path, Path]:
    """stack.nii.gz and stack.json (and thrombus.nii.gz when a mask is given) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([2.0, 2.0, 3.0, 1.0]) if affine is None else affine
    nib.save(nib.Nifti1Image(stack, affine), folder / "stack.nii.gz")
    availability = [1] * len(channels) if availability is None else availability
    (folder / "stack.json").write_text(json.dumps({"channels": list(channels), "availability": availability}))
    if mask is not None:
        nib.save(nib.Nifti1Image(mask, affine), folder / "thrombus.nii.gz")
    return folder / "stack.nii.gz", folder / "stack.json"


def untrained_checkpoint(path: Path, model: ModelConfig = TINY_MODEL, harmonise: dict | None = None,
                         stride: int | None = None, slice_mm: float | None = None) -> Path:
    """A checkpoint of freshly initialised weights, with the card training would write (no stride: an older card)."""
    torch.manual_seed(0)
    network = build_model(model)
    data = {"slab_depth": 3, "patch_size": [32, 32], **({"predict_stride": stride} if stride else {}),
            **({"slice_mm": slice_mm} if slice_mm else {})}
    card = make_card(model, harmonise or HARMONISE, data, {"seed": 0})
    return save_checkpoint(path, card, network.state_dict())


def request(folder: Path, checkpoint: Path, stack: Path, summary: Path, **changes: object) -> PredictRequest:
    values = {"checkpoint": checkpoint, "stack": stack, "summary": summary, "out_probability": folder / "probability.nii.gz",
              "out_mask": folder / "mask.nii.gz", "out_record": folder / "record.json", "subject": "S001", "center": "A",
              "threads": 1, "device": "cpu"}
    return PredictRequest(**{**values, **changes})


def probability_of(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


@pytest.fixture(scope="module")
def untrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return untrained_checkpoint(tmp_path_factory.mktemp("untrained") / "best.pt")


# --- predict_probability and --sequences ---------------------------------------------------------------


def test_probability_covers_the_grid_and_is_zero_outside_the_brain(tmp_path: Path) -> None:
    """Zero wherever the stack has no signal (around the brain box and in its empty corners), as in validation."""
    stack, _ = make_stack(1, positive=True)
    torch.manual_seed(0)
    model = build_model(TINY_MODEL)
    probability = predict_probability(model, stack, np.ones(4, dtype=np.float32), 3, 4, CPU)
    assert probability.shape == SHAPE and probability.dtype == np.float32
    assert probability.min() >= 0.0 and probability.max() <= 1.0
    brain = np.any(stack != 0, axis=3)
    coords = np.argwhere(brain)
    box = tuple(slice(lo, hi + 1) for lo, hi in zip(coords.min(axis=0), coords.max(axis=0)))
    assert not brain[box].all(), "the test stack must have background inside its brain box"
    assert not probability[~brain].any() and (probability[brain] > 0).all()
    # Same numbers, in the same place, as the validation pass of training on the same stack.
    folder = tmp_path / "case"
    stack_path, summary = write_stack(folder, stack)
    case = load_case(CaseSource("S001", "A", stack_path, summary, None, False), CHANNELS)
    expected = torch.sigmoid(predict_case(model.eval(), case, 3, 4, CPU)).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(probability[box], expected, atol=1e-6)


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 7, 10, 24])
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_slabs_at_any_stride_cover_every_slice_and_end_on_the_last(depth: int, stride: int) -> None:
    centres = slab_centres(depth, 3, stride)
    covered = {z for c in centres for z in range(c - 1, c + 2) if 0 <= z < depth}
    assert covered == set(range(depth))
    assert centres[-1] == max(depth - 2, 1) and all(0 < b - a <= stride for a, b in zip(centres, centres[1:]))
    with pytest.raises(ValueError, match="between 1 and the slab depth"):
        slab_centres(depth, 3, 4)


@pytest.mark.parametrize("extent", [8, 16, 17, 40, 63])
def test_tiles_cover_the_plane_half_a_tile_apart(extent: int) -> None:
    starts = tile_starts(extent, 16)
    covered = {i for start in starts for i in range(start, min(start + 16, extent))}
    assert covered == set(range(extent)) and starts[0] == 0
    assert extent <= 16 or (starts[-1] == extent - 16 and all(0 < b - a <= 8 for a, b in zip(starts, starts[1:])))


def test_tiled_prediction_reads_each_window_as_a_patch_of_its_own(tmp_path: Path) -> None:
    """A tile as large as the plane is the whole-slice prediction; smaller tiles average windows predicted alone."""
    stack, _ = make_stack(3, positive=True)
    stack_path, summary = write_stack(tmp_path / "case", stack)
    case = load_case(CaseSource("S001", "A", stack_path, summary, None, False), CHANNELS)
    model = build_model(TINY_MODEL).eval()
    whole = predict_case(model, case, 3, 4, CPU)
    height, width = case.image.shape[2:]
    assert torch.equal(predict_case(model, case, 3, 4, CPU, tile=(height, width)), whole)
    tiled = predict_case(model, case, 3, 4, CPU, tile=(16, 16))
    assert tiled.shape == whole.shape and torch.isfinite(tiled).all()
    # the top-left corner is covered by the first tile only: it is that tile's own prediction
    corner = {"image": case.image[:, :, :16, :16].contiguous(), "brain": case.brain[:, :16, :16].contiguous()}
    alone = predict_case(model, type(case)(**{**case.__dict__, **corner}), 3, 4, CPU)
    torch.testing.assert_close(tiled[:, :8, :8], alone[:, :8, :8])


def test_inference_uses_the_stride_of_the_card_and_old_cards_stride_one(tmp_path: Path) -> None:
    stack, _ = make_stack(1, positive=True)
    paths = write_stack(tmp_path / "case", stack)
    old = predict_subject(request(tmp_path / "old", untrained_checkpoint(tmp_path / "old.pt"), *paths))
    strided = predict_subject(request(tmp_path / "s3", untrained_checkpoint(tmp_path / "s3.pt", stride=3), *paths))
    assert (old["predict_stride"], strided["predict_stride"]) == (1, 3)
    one, three = probability_of(tmp_path / "old" / "probability.nii.gz"), probability_of(tmp_path / "s3" / "probability.nii.gz")
    assert not np.array_equal(one, three)  # fewer slabs averaged: the maps differ, slightly
    np.testing.assert_allclose(one, three, atol=0.2)
    assert TrainOptions(slab_depth=3).stride == 3 and TrainOptions(slab_depth=5, predict_stride=2).stride == 2
    with pytest.raises(ValueError, match="predict_stride"):
        TrainOptions(slab_depth=3, predict_stride=5)


def test_slices_resampled_for_the_network_keep_the_end_slices_and_return_to_the_subject_grid() -> None:
    assert network_depth(23, 6.0, 2.0) == 67 and network_depth(70, 2.0, 2.0) == 70 and network_depth(23, 6.0, None) == 23
    assert network_depth(60, 2.4, 2.0) == 72 and network_depth(1, 6.0, 2.0) == 1
    volume = torch.randn(2, 9, 5, 6)
    fine = resample_slices(volume, 25)
    assert fine.shape == (2, 25, 5, 6)
    torch.testing.assert_close(fine[:, ::3], volume)  # every third 2 mm slice is a 6 mm one
    torch.testing.assert_close(fine[:, 1], (2 * volume[:, 0] + volume[:, 1]) / 3)  # linear in between
    torch.testing.assert_close(resample_slices(fine, 9), volume)
    assert resample_slices(volume, 9) is volume


def test_a_clot_on_one_thick_slice_covers_the_thin_slices_around_its_centre() -> None:
    image = torch.randn(4, 6, 8, 8)
    label = torch.zeros(6, 8, 8, dtype=torch.uint8)
    label[2, 3:5, 3:5] = 1
    case = Case("S", "C", image, label, torch.ones(6, 8, 8, dtype=torch.bool), torch.ones(4),
                np.argwhere(label.numpy()), 0, slice_mm=6.0, voxel_mm3=6.0)
    fine = at_slice_spacing(case, 2.0)
    assert fine.image.shape == (4, 16, 8, 8) and fine.slice_mm == 2.0 and fine.voxel_mm3 == pytest.approx(2.0)
    assert fine.label.any(dim=(1, 2)).nonzero().ravel().tolist() == [5, 6, 7]
    assert len(fine.foreground) == 12 and fine.positive
    assert at_slice_spacing(case, None) is case and at_slice_spacing(case, 6.0) is case


def test_inference_reads_the_slices_at_the_spacing_of_the_card(tmp_path: Path) -> None:
    """A card with `slice_mm` predicts the 3 mm test stack resampled to 1 mm and returns the map on its own grid:
    the same numbers as predicting the resampled case by hand and resampling back."""
    stack, _ = make_stack(1, positive=True)
    paths = write_stack(tmp_path / "case", stack)  # 3 mm slices
    record = predict_subject(request(tmp_path / "fine", untrained_checkpoint(tmp_path / "fine.pt", slice_mm=1.0), *paths))
    native = predict_subject(request(tmp_path / "native", untrained_checkpoint(tmp_path / "native.pt"), *paths))
    fine, coarse = probability_of(tmp_path / "fine" / "probability.nii.gz"), probability_of(tmp_path / "native" / "probability.nii.gz")
    assert fine.shape == coarse.shape == SHAPE and (record["network_slice_mm"], native["network_slice_mm"]) == (1.0, None)
    assert not np.array_equal(fine, coarse)
    case = load_case(CaseSource("S001", "A", *paths, None, False), CHANNELS)
    torch.manual_seed(0)
    model = build_model(TINY_MODEL).eval()
    depth = network_depth(case.image.shape[1], case.slice_mm, 1.0)
    everywhere = torch.ones((depth, *case.image.shape[2:]), dtype=torch.bool)  # the brain is applied on the case's own grid
    by_hand = dataclasses.replace(case, image=resample_slices(case.image, depth), slice_mm=1.0, brain=everywhere)
    expected = resample_slices(predict_case(model, by_hand, 3, 4, CPU, stride=1), case.image.shape[1])
    expected = expected.masked_fill(~case.brain, OUTSIDE_LOGIT)
    torch.testing.assert_close(predict_case(model, case, 3, 4, CPU, slice_mm=1.0), expected)
    coords = np.argwhere(np.any(stack != 0, axis=3))
    box = tuple(slice(lo, hi + 1) for lo, hi in zip(coords.min(axis=0), coords.max(axis=0)))
    np.testing.assert_allclose(fine[box], torch.sigmoid(expected).permute(1, 2, 0).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="train.slice_mm"):
        TrainOptions(slice_mm=0.1)


def test_dropping_a_sequence_equals_a_missing_one(tmp_path: Path, untrained: Path) -> None:
    stack, _ = make_stack(2, positive=True)
    stack[0, 10:20, 4:8, 3] = 0.5  # FLAIR reaching beyond the other sequences: it widens the brain box while present
    full = write_stack(tmp_path / "full", stack)
    missing_stack = stack.copy()
    missing_stack[..., 3] = 0.0
    missing = write_stack(tmp_path / "missing", missing_stack, availability=[1, 1, 1, 0])
    dropped = predict_subject(request(tmp_path / "out_dropped", untrained, *full, keep=("susceptibility", "dwi", "adc")))
    predict_subject(request(tmp_path / "out_missing", untrained, *missing))
    predict_subject(request(tmp_path / "out_full", untrained, *full))
    as_dropped, as_missing, as_full = (probability_of(tmp_path / f"out_{name}" / "probability.nii.gz")
                                       for name in ("dropped", "missing", "full"))
    assert np.array_equal(as_dropped, as_missing)
    assert not as_dropped[0].any() and as_full[0].any(), "a dropped sequence no longer counts towards the brain box"
    assert not np.allclose(as_dropped, as_full), "dropping FLAIR must change what the model sees"
    assert dropped["availability"] == {"susceptibility": 1, "dwi": 1, "adc": 1, "flair": 0}
    assert dropped["dropped_by_request"] == ["flair"]


@pytest.mark.bad_input
def test_sequence_selection_checks_names() -> None:
    availability = np.array([1, 1, 1, 0], dtype=np.float32)
    assert select_channels(availability, CHANNELS, None).tolist() == [1, 1, 1, 0]
    assert select_channels(availability, CHANNELS, ["dwi", "adc"]).tolist() == [0, 1, 1, 0]
    with pytest.raises(InferenceError, match=r"\['t2'\].*susceptibility.*dwi.*adc.*flair"):
        select_channels(availability, CHANNELS, ["dwi", "t2"])
    with pytest.raises(InferenceError, match="no available channel"):
        select_channels(availability, CHANNELS, ["flair"])
    image = np.ones((2, 2, 2, 4), dtype=np.float32)
    assert zero_missing(image, np.array([1, 0, 1, 0]))[..., [1, 3]].sum() == 0 and image.all(), "the input is not changed"


# --- predict_subject: outputs and refusals -------------------------------------------------------------


def test_predict_subject_writes_maps_on_the_stack_grid_and_a_record(tmp_path: Path, untrained: Path) -> None:
    stack, _ = make_stack(3, positive=True)
    angle = np.radians(20)
    affine = np.array([[2 * np.cos(angle), -2 * np.sin(angle), 0, -30.0], [2 * np.sin(angle), 2 * np.cos(angle), 0, 12.5],
                       [0, 0, 3.0, -40.0], [0, 0, 0, 1]])
    post = tmp_path / "postprocessing.json"
    post.write_text(json.dumps(Postprocessing(0.5, 30.0, ("V1",), 0.7, CRITERION).to_dict()))
    record = predict_subject(request(tmp_path / "out", untrained, *write_stack(tmp_path / "in", stack, affine=affine),
                                     postprocessing=post))
    probability, mask = nib.load(str(tmp_path / "out" / "probability.nii.gz")), nib.load(str(tmp_path / "out" / "mask.nii.gz"))
    for image, dtype in ((probability, np.float32), (mask, np.uint8)):
        assert image.shape == SHAPE and image.get_data_dtype() == dtype
        np.testing.assert_allclose(image.affine, affine, atol=1e-5)
        np.testing.assert_allclose(image.get_qform(), affine, atol=1e-5)
    mask_data = np.asarray(mask.dataobj)
    # voxels of 2 x 2 x 3 = 12 mm^3: a 30 mm^3 filter drops components of 1 or 2 voxels
    assert np.array_equal(mask_data > 0, apply_postprocessing(np.asarray(probability.dataobj), Postprocessing(0.5, 30.0),
                                                              voxel_mm3=12.0))
    saved = json.loads((tmp_path / "out" / "record.json").read_text())
    assert saved == json.loads(json.dumps(record))
    assert saved["checkpoint_sha256"] == sha256_file(untrained) and saved["code_version"]["thrombus"]
    assert (saved["threshold"], saved["min_component_mm3"], saved["postprocessing"]["chosen_on"]) == (0.5, 30.0, ["V1"])
    assert saved["subject"] == "S001" and saved["center"] == "A" and saved["device"] == "cpu" and saved["seconds"] > 0
    assert sum(saved["component_voxels"]) == int(mask_data.sum()) == saved["predicted_voxels"]
    assert saved["components"] == len(saved["component_voxels"])
    assert saved["predicted_volume_ml"] == pytest.approx(mask_data.sum() * 12.0 / 1000.0)
    # The same stack with its channels listed in another order gives the same map.
    order = [2, 0, 3, 1]
    shuffled = write_stack(tmp_path / "shuffled", np.ascontiguousarray(stack[..., order]), tuple(CHANNELS[i] for i in order),
                           affine=affine)
    predict_subject(request(tmp_path / "out_shuffled", untrained, *shuffled))
    np.testing.assert_allclose(probability_of(tmp_path / "out_shuffled" / "probability.nii.gz"), np.asarray(probability.dataobj),
                               atol=1e-6)


@pytest.mark.bad_input
def test_checkpoint_with_other_channels_is_refused(tmp_path: Path) -> None:
    other = ModelConfig(**{**TINY_MODEL.to_dict(), "channels": ("susceptibility", "dwi", "adc", "t2")})
    checkpoint = untrained_checkpoint(tmp_path / "other.pt", other)
    stack, _ = make_stack(4, positive=False)
    with pytest.raises(CheckpointError, match=r"other\.pt.*channels.*t2.*lacks \['t2'\]"):
        predict_subject(request(tmp_path / "out", checkpoint, *write_stack(tmp_path / "in", stack)))
    assert not (tmp_path / "out").exists(), "nothing is written for a refused checkpoint"


@pytest.mark.bad_input
def test_stack_lacking_a_model_channel_or_harmonised_otherwise_is_refused(tmp_path: Path, untrained: Path) -> None:
    stack, _ = make_stack(5, positive=False)
    three = write_stack(tmp_path / "three", np.ascontiguousarray(stack[..., :3]), CHANNELS[:3])
    with pytest.raises(CheckpointError, match=r"best\.pt.*S001.*lacks \['flair'\]"):
        predict_subject(request(tmp_path / "out", untrained, *three))
    four = write_stack(tmp_path / "four", stack)
    with pytest.raises(CheckpointError, match=r"best\.pt.*harmonise\.method.*histogram"):
        predict_subject(request(tmp_path / "out", untrained, *four, harmonise={**HARMONISE, "method": "histogram"}))
    predict_subject(request(tmp_path / "out", untrained, *four, harmonise=HARMONISE))
    assert (tmp_path / "out" / "mask.nii.gz").exists()
    # A model loaded once for many subjects is checked against each subject's stack all the same.
    loaded = load_model(untrained, CHANNELS, HARMONISE, "stack.nii.gz of subject S001")
    predict_subject(request(tmp_path / "again", untrained, *four, harmonise=HARMONISE), loaded)
    assert np.array_equal(probability_of(tmp_path / "again" / "probability.nii.gz"), probability_of(tmp_path / "out" / "probability.nii.gz"))
    with pytest.raises(CheckpointError, match=r"lacks \['flair'\]"):
        predict_subject(request(tmp_path / "again", untrained, *three), loaded)


def test_predict_command(tmp_path: Path, untrained: Path, caplog: pytest.LogCaptureFixture) -> None:
    parser = argparse.ArgumentParser()
    add_predict_parsers(parser.add_subparsers(dest="command", required=True))
    stack, summary = write_stack(tmp_path / "in", make_stack(6, positive=True)[0])

    def run(checkpoint: Path, *extra: str) -> int:
        args = parser.parse_args([
            "predict", "--checkpoint", str(checkpoint), "--stack", str(stack), "--summary", str(summary),
            "--out-probability", str(tmp_path / "out" / "p.nii.gz"), "--out-mask", str(tmp_path / "out" / "m.nii.gz"),
            "--record", str(tmp_path / "out" / "r.json"), "--subject", "S009", "--center", "B", "--device", "cpu", *extra,
        ])
        return args.func(args)

    assert run(untrained, "--sequences", "susceptibility", "dwi", "--harmonise", json.dumps(HARMONISE)) == 0
    record = json.loads((tmp_path / "out" / "r.json").read_text())
    assert record["subject"] == "S009" and record["availability"]["adc"] == 0 and record["postprocessing"]["source"] is None
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert run(tmp_path / "absent.pt") == 1
        assert run(untrained, "--sequences", "t1") == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2 and "absent.pt does not exist" in errors[0] and "'t1'" in errors[1] and "S009" in errors[1]


# --- postprocessing and calibration -------------------------------------------------------------------


def test_apply_postprocessing_removes_small_components() -> None:
    probability = np.zeros((12, 12, 12), dtype=np.float32)
    probability[1:4, 1:4, 1:4] = 0.9  # 27 voxels
    probability[8, 8, 8] = probability[8, 8, 9] = 0.9  # 2 voxels
    probability[6, 0, 0] = probability[7, 1, 1] = probability[8, 2, 2] = 0.8  # corner-touching: one component under 26-connectivity
    probability[10, 10, 0] = 0.45  # below the threshold
    kept = apply_postprocessing(probability, Postprocessing(threshold=0.5, min_component_mm3=3.0), voxel_mm3=1.0)
    assert kept.dtype == bool
    assert kept[1:4, 1:4, 1:4].all() and kept[6, 0, 0] and kept[8, 2, 2]
    assert not kept[8, 8, 8] and not kept[10, 10, 0] and kept.sum() == 30
    assert apply_postprocessing(probability, Postprocessing(threshold=0.5), voxel_mm3=1.0).sum() == 32
    assert apply_postprocessing(probability, Postprocessing(threshold=0.4), voxel_mm3=1.0).sum() == 33
    assert apply_postprocessing(probability, Postprocessing(threshold=0.5, min_component_mm3=28.0), voxel_mm3=1.0).sum() == 0
    # The size is a volume: the same 3 mm^3 filter on 2 mm^3 voxels keeps the 2-voxel speck (4 mm^3) ...
    assert apply_postprocessing(probability, Postprocessing(threshold=0.5, min_component_mm3=3.0), voxel_mm3=2.0).sum() == 32
    # ... and a 60 mm^3 filter keeps the 27-voxel blob on 4.86 mm^3 voxels (131 mm^3) but not on 2 mm^3 ones (54 mm^3)
    assert apply_postprocessing(probability, Postprocessing(threshold=0.5, min_component_mm3=60.0), voxel_mm3=4.86).sum() == 27
    assert apply_postprocessing(probability, Postprocessing(threshold=0.5, min_component_mm3=60.0), voxel_mm3=2.0).sum() == 0


@pytest.mark.bad_input
def test_postprocessing_counting_voxels_is_refused_with_the_way_out() -> None:
    with pytest.raises(ValueError, match="in voxels.*rerun the model's train job"):
        Postprocessing.from_dict({"threshold": 0.5, "min_component_voxels": 20})


def blob(value: float, corner: tuple[int, int, int], size: int, shape: tuple[int, int, int] = (20, 20, 20)) -> np.ndarray:
    volume = np.zeros(shape, dtype=np.float32)
    volume[corner[0] : corner[0] + size, corner[1] : corner[1] + size, corner[2] : corner[2] + size] = value
    return volume


def test_calibration_scores_each_setting_after_the_lesion_gate() -> None:
    """A faint clot (p 0.35) and, on a thrombus-negative subject without a lesion, a look-alike too large for any
    size filter (p 0.45): without the gate no threshold serves both and the tie goes to 0.5, missing the clot;
    with it the look-alike is dropped whatever the threshold, and 0.3 finds the clot."""
    from thrombus.inference.lesion_gate import CaseGate, GateDecision

    truth = (blob(1, (12, 2, 2), 3) > 0).astype(np.uint8)
    positive, negative = blob(0.35, (12, 2, 2), 3), blob(0.45, (10, 10, 10), 4)
    plain = choose_postprocessing([positive, negative], [truth, np.zeros_like(truth)], ["P1", "N1"])
    assert plain.threshold == 0.5 and plain.score == pytest.approx(0.5)
    right = CaseGate(GateDecision(("right",), midline_x=5.0, lesion_ml=2.0), np.eye(4))  # the clot at x 13 is on the right
    nothing = CaseGate(GateDecision((), midline_x=10.0, lesion_ml=0.0), np.eye(4))
    gated = choose_postprocessing([positive, negative], [truth, np.zeros_like(truth)], ["P1", "N1"], gates=[right, nothing])
    assert gated.threshold == pytest.approx(0.3) and gated.score == pytest.approx(1.0)
    assert gated.criterion == CRITERION + ", after the lesion gate (2 of 2 subjects with an ADC map)"


def test_calibration_threshold_removes_a_faint_false_positive_on_a_negative_case() -> None:
    truth = (blob(1, (2, 2, 2), 3) > 0).astype(np.uint8)
    positive = blob(0.45, (2, 2, 2), 3)  # a faint but right thrombus: missed at 0.5
    negative = blob(0.35, (10, 10, 10), 4)  # a 64-voxel look-alike on a healthy subject, too big for any size filter
    chosen = choose_postprocessing([positive, negative], [truth, np.zeros_like(truth)], ["P1", "N1"])
    assert chosen.threshold == pytest.approx(0.4)
    assert chosen.score == pytest.approx(1.0) and chosen.chosen_on == ("P1", "N1") and chosen.criterion == CRITERION
    assert not apply_postprocessing(negative, chosen, voxel_mm3=1.0).any()
    assert apply_postprocessing(positive, chosen, voxel_mm3=1.0).sum() == 27


def test_calibration_cannot_choose_a_filter_that_deletes_the_smallest_clot() -> None:
    """The grid stops below the smallest clot's volume on the coarsest grid a center uses (6 mm T2*: 5 voxels of 4.9 mm^3)."""
    smallest_clot_mm3 = 5 * 0.9 * 0.9 * 6.0
    assert max(SIZES_MM3) < smallest_clot_mm3
    truth = (blob(1, (2, 2, 2), 3) > 0).astype(np.uint8)
    positives = [blob(0.9, (2, 2, 2), 3) for _ in range(MIN_POSITIVES)]
    # many large false positives on the negatives: an unbounded grid would filter them away, and the clot with them
    big = blob(0.9, (10, 10, 10), 6)
    chosen = choose_postprocessing([*positives, big], [truth] * MIN_POSITIVES + [np.zeros_like(truth)],
                                   [f"P{i}" for i in range(MIN_POSITIVES)] + ["N1"], voxel_volumes=[4.86] * (MIN_POSITIVES + 1),
                                   min_positives=MIN_POSITIVES)
    assert apply_postprocessing(positives[0], chosen, voxel_mm3=4.86).sum() == 27
    scores = {(c[0], c[1]): c[2] for c in chosen.candidates}
    assert len(scores) == len(THRESHOLDS) * len(SIZES_MM3) and max(scores.values()) == chosen.score
    assert Postprocessing.from_dict(json.loads(json.dumps(chosen.to_dict()))) == chosen


def test_calibration_on_too_few_positive_subjects_keeps_the_defaults_and_says_why() -> None:
    truth = (blob(1, (2, 2, 2), 3) > 0).astype(np.uint8)
    chosen = choose_postprocessing([blob(0.45, (2, 2, 2), 3), blob(0.35, (10, 10, 10), 4)], [truth, np.zeros_like(truth)],
                                   ["P1", "N1"], min_positives=2)
    assert (chosen.threshold, chosen.min_component_mm3, chosen.candidates) == (0.5, 0.0, ())
    assert chosen.criterion == FEW_CRITERION.format(2, 1) and chosen.chosen_on == ("P1", "N1")


def test_calibration_size_filter_and_tie_breaks() -> None:
    truth = (blob(1, (2, 2, 2), 3) > 0).astype(np.uint8)
    positive = blob(0.9, (2, 2, 2), 3)
    speck = np.zeros((20, 20, 20), dtype=np.float32)
    speck[12, 12, 12:17] = 0.9  # a 5-voxel false positive
    chosen = choose_postprocessing([positive, speck], [truth, np.zeros_like(truth)], ["P1", "N1"])
    assert (chosen.threshold, chosen.min_component_mm3) == (0.5, 10.0), "threshold nearest 0.5, then the smallest size"
    # On voxels of 3 mm^3 the 5-voxel speck is 15 mm^3: the smallest filter that removes it is 20 mm^3.
    coarse = choose_postprocessing([positive, speck], [truth, np.zeros_like(truth)], ["P1", "N1"], voxel_volumes=[3.0, 3.0])
    assert (coarse.threshold, coarse.min_component_mm3) == (0.5, 20.0)
    assert chosen.score == pytest.approx(1.0)
    default = choose_postprocessing([], [], [])
    assert (default.threshold, default.min_component_mm3, default.criterion, default.score) == (0.5, 0.0, DEFAULT_CRITERION, None)
    assert Postprocessing.from_dict(json.loads(json.dumps(chosen.to_dict()))) == chosen
    with pytest.raises(ValueError, match="treshold"):
        Postprocessing.from_dict({"treshold": 0.3})


def test_settings_follow_the_channels_a_prediction_did_not_use() -> None:
    """The subset calibrated with the most of the missing channels removed, and nothing else; else every sequence's."""
    def post(subset: str, removed: tuple[str, ...], threshold: float) -> Postprocessing:
        return Postprocessing(threshold, subset=subset, removed=removed, chosen_on=("P1",), score=0.5)

    diffusion, susceptibility = post("no_diffusion", ("dwi", "adc"), 0.8), post("no_susceptibility", ("susceptibility",), 0.7)
    only = post("susceptibility_only", ("dwi", "adc", "flair"), 0.9)
    settings = Postprocessing(0.4, 5.0, by_subset=(susceptibility, diffusion, only))
    assert settings.for_unused([]) is settings and settings.for_unused(["flair"]) is settings
    assert settings.for_unused(["adc"]) is settings, "without DWI too, ADC alone is not what no_diffusion was calibrated without"
    assert settings.for_unused(["adc", "dwi"]) == diffusion and settings.for_unused(["dwi", "adc", "flair"]) == only
    assert settings.for_unused(["dwi", "adc", "susceptibility"]) == diffusion, "the most channels removed wins"
    assert Postprocessing.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings
    assert "by_subset" not in diffusion.applied() and diffusion.applied()["removed"] == ["dwi", "adc"]


# --- a trained model end to end -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def overfit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny network trained on one positive and one negative subject, validated (and calibrated) on them."""
    root = tmp_path_factory.mktemp("overfit")
    sources = []
    for subject, positive in (("P001", True), ("N001", False)):
        stack, mask = make_stack(10 if positive else 11, positive)
        stack_path, summary = write_stack(root / subject, stack, mask=mask)
        sources.append(CaseSource(subject, "A", stack_path, summary, root / subject / "thrombus.nii.gz", positive))
    cases = [load_case(source, CHANNELS) for source in sources]
    options = TrainOptions(iterations=120, batch_size=4, val_every=60, slab_depth=3, patch_size=(32, 32), learning_rate=1e-2,
                           foreground_probability=0.7, augmentation=AugmentOptions(enabled=False), gmd=GMDSettings(mode="none"))
    card = make_card(TINY_MODEL, HARMONISE, {"slab_depth": 3, "patch_size": [32, 32]},
                     {**options.card_dict(), "seed": 1, "split": {"name": "overfit"}})
    train(TrainRun(train_cases=cases, val_cases=cases, model=TINY_MODEL, options=options, card=card, out_dir=root / "model",
                   seed=1, threads=1, device="cpu", progress=False))
    # the calibration stage, as `thrombus calibrate` runs it: best.pt, the card's slabs, the validation cases
    payload = load_checkpoint(root / "model" / "best.pt", {})
    network = build_model(ModelConfig.from_mapping(payload["card"]["model"]))
    network.load_state_dict(payload["model"])
    slab_depth, stride, tile, _ = card_prediction(payload["card"])
    post = calibrate(network, cases, slab_depth, 4, torch.device("cpu"), stride=stride, tile=tile, progress=False)
    write_json(root / "model" / "postprocessing.json", {**post.to_dict(), "weights_sha256": payload["weights_sha256"]})
    return root


def test_overfit_model_finds_its_thrombus_through_predict_subject(overfit: Path) -> None:
    model_dir = overfit / "model"
    post = json.loads((model_dir / "postprocessing.json").read_text())
    assert set(post) == {"threshold", "min_component_mm3", "chosen_on", "score", "criterion", "candidates", "weights_sha256",
                         "subset", "removed", "by_subset"}
    # one thrombus-positive validation subject is too few to choose on: the defaults, and the reason
    assert post["chosen_on"] == ["P001", "N001"] and post["criterion"] == FEW_CRITERION.format(MIN_POSITIVES, 1)
    assert (post["threshold"], post["min_component_mm3"], post["candidates"]) == (0.5, 0.0, [])
    record = predict_subject(request(overfit / "predicted", model_dir / "best.pt", overfit / "P001" / "stack.nii.gz",
                                     overfit / "P001" / "stack.json", postprocessing=model_dir / "postprocessing.json",
                                     harmonise=HARMONISE))
    predicted = np.asarray(nib.load(str(overfit / "predicted" / "mask.nii.gz")).dataobj) > 0
    truth = np.asarray(nib.load(str(overfit / "P001" / "thrombus.nii.gz")).dataobj) > 0
    dice = 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum())
    assert dice > 0.8, (dice, record)
    assert record["threshold"] == post["threshold"] and record["components"] >= 1


def test_the_lesion_gate_keeps_a_thrombus_with_a_lesion_and_drops_it_without(overfit: Path, tmp_path: Path) -> None:
    """The overfit model on P001 with an ADC map: a core on the right keeps its (midline) clot, none drops it, a
    subset without ADC is not gated, and an ADC map on another grid is refused."""
    model_dir = overfit / "model"
    stack_path = overfit / "P001" / "stack.nii.gz"
    affine = nib.load(str(stack_path)).affine
    brain = np.any(np.asarray(nib.load(str(stack_path)).dataobj) != 0, axis=3)
    adc = np.where(brain, 800.0, 0.0).astype(np.float32)
    healthy = tmp_path / "healthy_adc.nii.gz"
    nib.save(nib.Nifti1Image(adc, affine), healthy)
    adc[20:26, 12:18, 4:8] = 450.0  # 144 voxels of 12 mm^3: 1.7 ml of core on the patient's right
    lesioned = tmp_path / "adc.nii.gz"
    nib.save(nib.Nifti1Image(adc, affine), lesioned)
    gate = LesionGate()

    def run(name: str, adc_path: Path | None, **changes: object) -> tuple[dict, np.ndarray]:
        settings = {"postprocessing": model_dir / "postprocessing.json", "adc": adc_path, "lesion_gate": gate, **changes}
        record = predict_subject(request(tmp_path / name, model_dir / "best.pt", stack_path, overfit / "P001" / "stack.json",
                                         **settings))
        return record, np.asarray(nib.load(str(tmp_path / name / "mask.nii.gz")).dataobj) > 0

    plain, ungated = run("plain", None, lesion_gate=None)
    assert plain["lesion_gate"] == {"enabled": False} and ungated.any()
    record, mask = run("lesion", lesioned)
    assert record["lesion_gate"]["applied"] and record["lesion_gate"]["lesion_sides"] == ["right"]
    truth = np.asarray(nib.load(str(overfit / "P001" / "thrombus.nii.gz")).dataobj) > 0
    assert (mask & truth).sum() == (ungated & truth).sum() > 0, "the clot (on the midline) is kept"
    assert not (mask & ~ungated).any() and record["lesion_gate"]["components_dropped"] == plain["components"] - record["components"]
    record, mask = run("healthy", healthy)
    assert record["lesion_gate"]["lesion_sides"] == [] and not mask.any() and record["components"] == 0
    assert record["lesion_gate"]["components_dropped"] == plain["components"]
    record, mask = run("no_adc", healthy, keep=("susceptibility", "flair"))
    assert not record["lesion_gate"]["applied"] and "ADC is not among the sequences used" in record["lesion_gate"]["reason"]
    record, _ = run("none", None)
    assert not record["lesion_gate"]["applied"] and "no ADC map" in record["lesion_gate"]["reason"]
    other = tmp_path / "other_grid.nii.gz"
    nib.save(nib.Nifti1Image(adc[:, :, :10], affine), other)
    with pytest.raises(VolumeError, match=r"ADC map .*other_grid.nii.gz .*not on the grid of its stack"):
        run("other", other)


def overfit_network(root: Path) -> torch.nn.Module:
    payload = load_checkpoint(root / "model" / "best.pt", {})
    network = build_model(ModelConfig.from_mapping(payload["card"]["model"]))
    network.load_state_dict(payload["model"])
    return network


def test_calibration_chooses_each_subsets_settings_on_the_cases_without_its_channels(overfit: Path) -> None:
    """Four copies of the positive subject and the negative one: each subset's settings are those chosen on the
    cases with its channels zeroed and flagged missing; a subset naming no channel of the model adds nothing."""
    network = overfit_network(overfit)
    sources = [CaseSource(subject, "A", overfit / subject / "stack.nii.gz", overfit / subject / "stack.json",
                          overfit / subject / "thrombus.nii.gz", subject == "P001") for subject in ("P001", "N001")]
    positive, negative = (load_case(source, CHANNELS) for source in sources)
    cases = [dataclasses.replace(positive, subject=f"P00{i}") for i in range(1, MIN_POSITIVES + 1)] + [negative]
    subsets = {"all": [], "no_susceptibility": ["susceptibility"], "no_t1": ["t1"]}
    post = calibrate(network, cases, 3, 4, torch.device("cpu"), progress=False, subsets=subsets, channels=CHANNELS)
    assert post == dataclasses.replace(calibrate(network, cases, 3, 4, torch.device("cpu"), progress=False), by_subset=post.by_subset)
    (subset,) = post.by_subset
    assert (subset.subset, subset.removed, subset.chosen_on) == ("no_susceptibility", ("susceptibility",), post.chosen_on)
    stripped = [without_channels(case, [0]) for case in cases]
    assert all(not case.image[0].any() and case.availability[0] == 0 for case in stripped) and cases[0].image[0].any()
    alone = calibrate(network, stripped, 3, 4, torch.device("cpu"), progress=False)
    assert (subset.threshold, subset.min_component_mm3, subset.candidates) == (alone.threshold, alone.min_component_mm3,
                                                                                alone.candidates)
    assert subset.candidates != post.candidates, "the network reads the case differently without its susceptibility channel"


def test_a_prediction_without_a_channel_takes_the_settings_calibrated_without_it(overfit: Path, tmp_path: Path) -> None:
    model_dir = overfit / "model"
    settings = Postprocessing.from_dict(json.loads((model_dir / "postprocessing.json").read_text()))
    strict = Postprocessing(0.95, 20.0, subset="no_susceptibility", removed=("susceptibility",), weights_sha256=settings.weights_sha256)
    path = write_json(tmp_path / "postprocessing.json", dataclasses.replace(settings, by_subset=(strict,)).to_dict())
    stack, summary = overfit / "P001" / "stack.nii.gz", overfit / "P001" / "stack.json"
    every = predict_subject(request(tmp_path / "all", model_dir / "best.pt", stack, summary, postprocessing=path))
    assert (every["threshold"], every["postprocessing"]["subset"]) == (settings.threshold, None)
    without = predict_subject(request(tmp_path / "without", model_dir / "best.pt", stack, summary, postprocessing=path,
                                      keep=("dwi", "adc", "flair")))
    assert (without["threshold"], without["min_component_mm3"]) == (0.95, 20.0)
    assert without["postprocessing"]["subset"] == "no_susceptibility" and "by_subset" not in without["postprocessing"]


@pytest.mark.bad_input
def test_postprocessing_of_other_weights_is_refused(overfit: Path, untrained: Path, tmp_path: Path) -> None:
    """The overfit model's calibrated settings given with another checkpoint: refused, naming both files."""
    stack, _ = make_stack(3, positive=True)
    post = overfit / "model" / "postprocessing.json"
    with pytest.raises(CheckpointError, match=r"postprocessing file .*postprocessing.json was calibrated for other weights "
                                              r"than those of checkpoint .*"):
        predict_subject(request(tmp_path / "out", untrained, *write_stack(tmp_path / "in", stack), postprocessing=post))
    assert not (tmp_path / "out").exists()


@pytest.mark.bad_input
@pytest.mark.parametrize("output, same_as", [("out_probability", "stack"), ("out_probability", "out_mask"),
                                             ("out_record", "summary"), ("out_mask", "checkpoint")])
def test_an_output_on_an_input_or_another_output_is_refused_before_anything_is_written(
    tmp_path: Path, untrained: Path, output: str, same_as: str
) -> None:
    stack, _ = make_stack(3, positive=True)
    inputs = write_stack(tmp_path / "in", stack)
    base = request(tmp_path / "out", untrained, *inputs)
    before = {path: path.read_bytes() for path in (*inputs, untrained)}
    with pytest.raises(InferenceError, match=r"--[a-z-]+ .* is the same file as --[a-z-]+; every output needs a path"):
        predict_subject(request(tmp_path / "out", untrained, *inputs, **{output: getattr(base, same_as)}))
    assert {path: path.read_bytes() for path in before} == before and not (tmp_path / "out").exists()


@pytest.mark.bad_input
def test_a_summary_of_another_subject_or_grid_is_refused(tmp_path: Path, untrained: Path) -> None:
    stack, _ = make_stack(3, positive=True)
    stack_path, summary = write_stack(tmp_path / "in", stack)
    document = json.loads(summary.read_text())
    summary.write_text(json.dumps({**document, "subject": "S002", "center": "A", "shape": list(stack.shape[:3])}))
    with pytest.raises(VolumeError, match=r"summary .*stack.json is that of subject S002 \(center A\)"):
        predict_subject(request(tmp_path / "out", untrained, stack_path, summary))
    summary.write_text(json.dumps({**document, "subject": "S001", "center": "A", "shape": [9, 9, 9]}))
    with pytest.raises(VolumeError, match=r"describes \[9, 9, 9\]"):
        predict_subject(request(tmp_path / "out", untrained, stack_path, summary))
    summary.write_text(json.dumps({**document, "subject": "S001", "center": "A", "shape": list(stack.shape[:3])}))
    assert predict_subject(request(tmp_path / "out", untrained, stack_path, summary))["subject"] == "S001"


@pytest.mark.bad_input
@pytest.mark.parametrize("argv", [["predict", "--threads", "0"], ["predict", "--batch-size", "-1"],
                                  ["calibrate", "--threads", "x"], ["predict-fold", "--threads", "0"]])
def test_a_count_below_one_is_a_usage_error_not_a_traceback(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from thrombus.cli import _parser

    with pytest.raises(SystemExit) as exit_info:
        _parser().parse_args(argv)
    assert exit_info.value.code == 2 and "expected a whole number of at least 1" in capsys.readouterr().err


def test_sequences_may_be_named_as_the_user_knows_them() -> None:
    """`--sequences swi dwi` means the channels they fill: susceptibility and dwi."""
    sources = {"susceptibility": ["swi", "t2star"], "dwi": ["dwi"], "adc": ["adc"], "flair": ["flair"]}
    assert channel_names(["swi", "dwi"], sources) == ["susceptibility", "dwi"]
    assert channel_names(["t2star", "susceptibility", "adc"], sources) == ["susceptibility", "adc"]
    assert channel_names(["t2"], sources) == ["t2"] and channel_names(None, sources) is None
