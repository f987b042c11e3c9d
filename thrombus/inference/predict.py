"""Inference on one subject: a harmonised stack in, a thrombus probability map, a mask and a record out.

The prediction is made exactly as validation made it during training (`thrombus.model.sliding.predict_case`: the
brain's bounding box, slabs along Z at the card's `predict_stride`, overlapping slices averaged, bf16 autocast on CUDA), so
the postprocessing calibrated on validation subjects applies unchanged. No ground truth is needed: this
is the step that runs on new data.

The checkpoint's card is checked against the stack before anything runs: the same channels (reordered
to the model's order when the stack lists them in another order) and, when the harmonise settings are
given, the same harmonisation; a model is never silently run on inputs it was not trained on.
`--sequences` simulates missing sequences at test time: the channels left out are zero-filled and
flagged unavailable, exactly what harmonisation produces for a sequence a center did not acquire.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from thrombus.inference.lesion_gate import LesionGate, apply_gate
from thrombus.inference.postprocess import Postprocessing, apply_postprocessing, component_sizes
from thrombus.io import read_json, sha256_file, write_json
from thrombus.model import ModelConfig, build_model
from thrombus.inference.measure import measurements
from thrombus.nifti import VolumeError, load_volume, save_array
from thrombus.training.card import (
    HARMONISE_KEYS,
    CheckpointError,
    LoadedModel,
    card_differences,
    card_prediction,
    load_checkpoint,
    plain,
)
from thrombus.training.data import Case, _brain_box
from thrombus.device import resolve_device, set_threads
from thrombus.model.sliding import predict_case

log = logging.getLogger(__name__)


class InferenceError(ValueError):
    """A request inference cannot honour as given (e.g. --sequences naming a channel the model lacks)."""


@dataclass(frozen=True)
class PredictRequest:
    """One subject's inference: inputs, settings, outputs.

    Attributes:
        postprocessing: `postprocessing.json` written by calibration after training; None uses the
            defaults (threshold 0.5, no size filter), with a warning.
        harmonise: the config's harmonise section; when given, the checkpoint must have been trained
            on stacks harmonised the same way.
        keep: channels to keep (`--sequences`); the others are treated as missing. None keeps all.
        device: auto (CUDA when present), cpu or cuda.
        batch_size: slabs per forward pass (memory, not results).
        out_measurements: where the per-component readout goes (`measure.measurements`); None: not written.
        adc: the ADC map on the stack's grid (registration's output), for the lesion gate.
        lesion_gate: drop candidates on a side of the brain without a diffusion lesion (`lesion_gate`); None: off.
    """

    checkpoint: Path
    stack: Path
    summary: Path
    out_probability: Path
    out_mask: Path
    out_record: Path
    subject: str
    center: str
    postprocessing: Path | None = None
    harmonise: Mapping[str, Any] | None = None
    keep: tuple[str, ...] | None = None
    threads: int = 1
    device: str = "auto"
    batch_size: int = 4
    out_measurements: Path | None = None
    adc: Path | None = None
    lesion_gate: LesionGate | None = None

    @property
    def what(self) -> str:
        return f"subject {self.subject} (center {self.center})"


def predict_probability(
    model: nn.Module,
    image: np.ndarray,
    availability: np.ndarray,
    slab_depth: int,
    batch_size: int,
    device: torch.device,
    what: str = "stack",
    stride: int = 1,
    tile: tuple[int, int] | None = None,
    slice_mm: float = 0.0,
    network_slice_mm: float | None = None,
) -> np.ndarray:
    """Thrombus probability (X, Y, Z) float32 on the stack's full grid, zero outside the brain (`predict_case`).

    `image` is (X, Y, Z, C) with missing channels zero-filled; the brain is where it has signal, so a
    dropped sequence counts as a missing one, not towards it. The box and slab order are those of
    `load_case` / `predict_case`, so this is the validation pass of training on unlabelled data. The
    model is moved to `device` and run in eval mode (its mode is restored afterwards).
    """
    if image.ndim != 4 or image.shape[3] != len(availability):
        raise VolumeError(f"{what}: image {image.shape} and availability of {len(availability)} channels do not match")
    box = _brain_box(np.any(image != 0, axis=3), what)
    cropped = torch.from_numpy(np.ascontiguousarray(np.transpose(image[box], (3, 2, 0, 1)), dtype=np.float32))
    depth, height, width = cropped.shape[1:]
    case = Case(
        subject=what,
        center="",
        image=cropped,
        label=torch.zeros((depth, height, width), dtype=torch.uint8),
        brain=torch.from_numpy(np.any(cropped.numpy() != 0, axis=0)),
        availability=torch.as_tensor(np.asarray(availability, dtype=np.float32)),
        foreground=np.zeros((0, 3), dtype=np.int64),
        label_outside=0,
        slice_mm=slice_mm,
    )
    was_training = model.training
    model.to(device).eval()
    try:
        logits = predict_case(model, case, slab_depth, batch_size, device, stride, tile, network_slice_mm)
    finally:
        model.train(was_training)
    probability = np.zeros(image.shape[:3], dtype=np.float32)
    probability[box] = torch.sigmoid(logits).permute(1, 2, 0).numpy()
    return probability


def channel_names(keep: Sequence[str] | None, sources: Mapping[str, Sequence[str]]) -> list[str] | None:
    """`--sequences` in the names a user knows: a sequence (swi, t2star) stands for the channel it fills.

    `sources` is the card's harmonise `channels` ({channel: [sequences]}); channel names pass as they are.
    """
    if keep is None:
        return None
    by_sequence = {sequence: channel for channel, sequences in sources.items() for sequence in sequences}
    names = [name if name in sources else by_sequence.get(name, name) for name in keep]
    return list(dict.fromkeys(names))


def select_channels(availability: np.ndarray, channels: Sequence[str], keep: Sequence[str] | None) -> np.ndarray:
    """The availability after `--sequences`: channels not kept are flagged 0 (zero them with `zero_missing`).

    Keeping a channel the subject lacks changes nothing (it stays missing, with a warning); naming a
    channel the model does not have is an error, since it is almost always a typo.
    """
    result = np.asarray(availability, dtype=np.float32).copy()
    if keep is None:
        return result
    unknown = [name for name in keep if name not in channels]
    if unknown:
        raise InferenceError(f"--sequences names {unknown}, which are neither channels of the model nor sequences that fill "
                             f"them; its channels are {list(channels)}")
    absent = [name for name in keep if result[list(channels).index(name)] == 0]
    if absent:
        log.warning("--sequences keeps %s, which this subject does not have: they stay missing", absent)
    for index, name in enumerate(channels):
        if name not in keep:
            result[index] = 0.0
    if not result.any():
        raise InferenceError(f"--sequences {list(keep)} leaves no available channel (channels {list(channels)}, "
                             f"availability {np.asarray(availability).tolist()}): keep at least one the subject has")
    return result


def zero_missing(image: np.ndarray, availability: np.ndarray) -> np.ndarray:
    """The stack with every unavailable channel zero-filled, as harmonisation writes a missing sequence."""
    missing = np.asarray(availability) == 0
    if not missing.any():
        return image
    image = image.copy()
    image[..., missing] = 0.0
    return image


def harmonise_expected(harmonise: Mapping[str, Any] | None) -> dict[str, Any]:
    """The part of a model card the harmonise settings must match (the card's own keys, `HARMONISE_KEYS`)."""
    if harmonise is None:
        return {}
    return {"harmonise": {key: plain(harmonise[key]) for key in HARMONISE_KEYS if key in harmonise}}


def check_card(card: Mapping[str, Any], checkpoint: Path, stack_channels: Sequence[str],
               harmonise: Mapping[str, Any] | None, what: str) -> None:
    """Refuse a card whose harmonisation or channels differ from the stack's (channels in any order).

    The channels are compared as a set, since a stack listing the same sequences in another order is
    usable once reordered; a real difference gets the card's own message, naming the checkpoint.
    """
    differences = card_differences(card, harmonise_expected(harmonise))
    model_channels = list(card.get("channels", []))
    if sorted(model_channels) != sorted(stack_channels):
        differences += card_differences(card, {"channels": list(stack_channels)})
    if not differences:
        return
    missing = [name for name in model_channels if name not in stack_channels]
    unused = [name for name in stack_channels if name not in model_channels]
    raise CheckpointError(
        f"checkpoint {checkpoint} was made under another configuration; differing keys: {'; '.join(differences)}. "
        + (f"The stack {what} lacks {missing or 'none'} of the model's channels and has {unused or 'none'} it does not use. "
           if missing or unused else "")
        + "Harmonise with the configuration the model was trained with, or use a checkpoint trained with this one"
    )


def load_model(checkpoint: Path, stack_channels: Sequence[str], harmonise: Mapping[str, Any] | None, what: str) -> LoadedModel:
    """The network of a checkpoint (eval mode, CPU) after `check_card` against the stack it will see.

    `what` names that stack in errors, e.g. "results/.../stack.nii.gz of subject S001 (center A)".
    """
    payload = load_checkpoint(checkpoint, {})
    check_card(payload["card"], checkpoint, stack_channels, harmonise, what)
    network = build_model(ModelConfig.from_mapping(payload["card"]["model"]))
    network.load_state_dict(payload["model"])
    return LoadedModel(network.eval(), payload["card"], payload.get("weights_sha256"))


def read_stack(request: PredictRequest) -> tuple[np.ndarray, np.ndarray, list[str], Any]:
    """The stack (X, Y, Z, C), its availability, channel names and NIfTI image, checked against its summary."""
    what = f"{request.what} stack"
    data, image = load_volume(request.stack, what, allow_4d=True)
    if not Path(request.summary).exists():
        raise VolumeError(f"{what}: summary {request.summary} (stack.json beside the stack) does not exist: rerun harmonisation")
    summary = read_json(request.summary)
    summarised = summary.get("subject"), summary.get("center")
    if summarised[0] is not None and summarised != (request.subject, request.center):
        raise VolumeError(
            f"{what}: summary {request.summary} is that of subject {summarised[0]} (center {summarised[1]}), not of "
            f"this stack's subject: give the stack.json beside {request.stack}"
        )
    if "shape" in summary and list(summary["shape"]) != list(data.shape[:3]):
        raise VolumeError(f"{what}: {request.stack} has the grid {list(data.shape[:3])} but its summary {request.summary} "
                          f"describes {list(summary['shape'])}: give the stack.json beside it, or rerun harmonisation")
    channels = [str(name) for name in summary.get("channels", [])]
    availability = np.asarray(summary.get("availability", []), dtype=np.float32)
    if data.ndim == 3 and len(channels) == 1:
        data = data[..., None]
    if data.ndim != 4 or data.shape[3] != len(channels) or len(availability) != len(channels):
        raise VolumeError(
            f"{what} {request.stack} has shape {data.shape} but its summary {request.summary} lists channels {channels} "
            f"with availability {availability.tolist()}: rerun harmonisation for this subject"
        )
    return data, availability, channels, image


def read_postprocessing(path: Path | None) -> tuple[Postprocessing, str | None]:
    """The calibrated settings, or the defaults with a warning when no file is given."""
    if path is None:
        log.warning("no postprocessing file given: using threshold 0.5 and no size filter (not calibrated)")
        return Postprocessing(), None
    path = Path(path)
    if not path.exists():
        raise InferenceError(f"postprocessing file {path} does not exist: `thrombus calibrate` writes it beside best.pt")
    try:
        return Postprocessing.from_dict(read_json(path)), str(path)
    except (TypeError, ValueError) as error:
        raise InferenceError(f"postprocessing file {path} is not usable ({error}): retrain, or leave it out") from error


def check_weights(post: Postprocessing, loaded: LoadedModel, post_path: Path | None, checkpoint: Path) -> None:
    """Refuse settings calibrated on other weights than the checkpoint's: their threshold means nothing there.

    A CheckpointError, so that a fold's inference stops as a whole instead of failing each subject.
    Settings without a checksum (the defaults, files from before it) are taken as they are.
    """
    if post.weights_sha256 and loaded.weights_sha256 and post.weights_sha256 != loaded.weights_sha256:
        raise CheckpointError(
            f"postprocessing file {post_path} was calibrated for other weights than those of checkpoint {checkpoint} "
            f"(weights {post.weights_sha256[:12]}... vs {loaded.weights_sha256[:12]}...): give the postprocessing.json "
            "that `thrombus calibrate` wrote beside this checkpoint, or calibrate it"
        )


def check_paths(request: PredictRequest) -> None:
    """Refuse an output that would overwrite an input or another output, before anything is written."""
    inputs = {"--checkpoint": request.checkpoint, "--stack": request.stack, "--summary": request.summary,
              "--postprocessing": request.postprocessing}
    outputs = {"--out-probability": request.out_probability, "--out-mask": request.out_mask, "--record": request.out_record,
               "--out-measurements": request.out_measurements}
    seen = {Path(path).resolve(): option for option, path in inputs.items() if path is not None}
    for option, path in outputs.items():
        if path is None:
            continue
        resolved = Path(path).resolve()
        if resolved in seen:
            raise InferenceError(f"{request.what}: {option} {path} is the same file as {seen[resolved]}; "
                                 "every output needs a path of its own, apart from the inputs")
        seen[resolved] = option


def lesion_gated(request: PredictRequest, mask: np.ndarray, brain: np.ndarray, image: Any, channels: Sequence[str],
                 used: Sequence[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """The mask through the lesion gate, and what the gate did. A prediction made as if ADC were missing (a
    sequence subset without it) is not gated with it either: that subset stands for a scan without ADC."""
    assert request.lesion_gate is not None
    if "adc" in channels and "adc" not in used:
        return mask, {**request.lesion_gate.to_dict(), "applied": False, "reason": "ADC is not among the sequences used"}
    adc = None
    if request.adc is not None:
        adc, adc_image = load_volume(request.adc, f"ADC map of {request.what}")
        if adc.shape != mask.shape or not np.allclose(adc_image.affine, image.affine, atol=1e-3):
            raise VolumeError(f"{request.what}: ADC map {request.adc} (shape {adc.shape}) is not on the grid of its stack "
                              f"{request.stack} (shape {mask.shape}); give the ADC registered to the reference sequence")
    return apply_gate(mask, adc, brain, image.affine, request.lesion_gate)


def predict_subject(request: PredictRequest, loaded: LoadedModel | None = None) -> dict[str, Any]:
    """Predict one subject and write the probability map, the mask and the record; returns the record.

    `loaded` is the checkpoint's network already in memory (from `load_model`), for callers that
    predict many subjects with one model; its card is still checked against this subject's stack.
    """
    started = time.perf_counter()
    check_paths(request)
    set_threads(request.threads)
    try:
        device = resolve_device(request.device, "--device")
    except ValueError as error:
        raise InferenceError(str(error)) from error
    data, availability, stack_channels, image = read_stack(request)
    post, post_source = read_postprocessing(request.postprocessing)
    stack_what = f"{request.stack} of {request.what}"
    if loaded is None:
        loaded = load_model(request.checkpoint, stack_channels, request.harmonise, stack_what)
    else:
        check_card(loaded.card, request.checkpoint, stack_channels, request.harmonise, stack_what)
    check_weights(post, loaded, request.postprocessing, request.checkpoint)
    channels = list(loaded.card["channels"])
    order = [stack_channels.index(name) for name in channels]
    if order != list(range(len(channels))):
        log.info("%s: stack channels %s reordered to the model's %s", request.what, stack_channels, channels)
    data, availability = data[..., order], availability[order]
    brain = np.any(data != 0, axis=-1)
    selected = select_channels(availability, channels, channel_names(request.keep, loaded.card.get("harmonise", {}).get("channels", {})))
    data = zero_missing(data, selected)
    slab_depth, stride, tile, network_mm = card_prediction(loaded.card)
    probability = predict_probability(
        loaded.network, data, selected, slab_depth, request.batch_size, device, f"{request.what} stack {request.stack}", stride,
        tile, slice_mm=float(image.header.get_zooms()[2]), network_slice_mm=network_mm,
    )
    affine = image.affine
    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    used = [name for name, keep in zip(channels, selected) if keep]
    post = post.for_unused([name for name in channels if name not in used])
    mask = apply_postprocessing(probability, post, voxel_mm3=voxel_mm3)
    gate = {"enabled": False}
    if request.lesion_gate is not None:
        mask, gate = lesion_gated(request, mask, brain, image, channels, used)
    save_array(probability, affine, request.out_probability, np.float32)
    save_array(mask, affine, request.out_mask, np.uint8)
    sizes = component_sizes(mask)
    voxel_ml = voxel_mm3 / 1000.0
    if request.out_measurements is not None:
        write_json(request.out_measurements, measurements(request.subject, request.center, mask, probability, affine, brain, used))
    record = {
        "subject": request.subject,
        "center": request.center,
        "stack": str(request.stack),
        "checkpoint": str(request.checkpoint),
        "checkpoint_sha256": sha256_file(request.checkpoint),
        "code_version": loaded.card.get("code"),
        "channels": channels,
        "availability": dict(zip(channels, (int(v) for v in selected))),
        "dropped_by_request": [n for n, a, s in zip(channels, availability, selected) if a and not s],
        "postprocessing": {**post.applied(), "source": post_source},
        "predict_stride": stride,
        "predict_tile": list(tile) if tile else None,
        "network_slice_mm": network_mm,
        "threshold": post.threshold,
        "min_component_mm3": post.min_component_mm3,
        "lesion_gate": gate,
        "components": len(sizes),
        "component_voxels": sizes,
        "predicted_voxels": int(mask.sum()),
        "predicted_volume_ml": round(int(mask.sum()) * voxel_ml, 6),
        "max_probability": round(float(probability.max()), 6),
        "outputs": {"probability": str(request.out_probability), "mask": str(request.out_mask),
                    **({} if request.out_measurements is None else {"measurements": str(request.out_measurements)})},
        "device": str(device),
        "threads": request.threads,
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_json(request.out_record, record)
    log.info("%s: %d component(s), %.3f ml, in %.1f s on %s", request.what, len(sizes), record["predicted_volume_ml"],
             record["seconds"], device)
    return record
