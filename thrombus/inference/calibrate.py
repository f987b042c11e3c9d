"""Calibration, the stage between training and inference: a fold's threshold and smallest component.

The settings are chosen with the weights inference will use (best.pt) on the fold's validation subjects,
so its test subjects never influence them (criterion and grid: `thrombus.inference.postprocess`). It is
a step of its own, as nnU-Net determines its postprocessing after training rather than inside it: a
change of the search (its grid, its minimum number of subjects) reruns this step and inference, never a
training, and the training package needs nothing of inference's.

The slab depth, stride and tiling of the predictions come from the checkpoint's card, so calibration
reads volumes exactly as validation did and inference will.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thrombus.inference.cli import add_lesion_gate_argument, lesion_gate_option
from thrombus.inference.fold import add_fold_model_arguments
from thrombus.options import json_object, positive_int

if TYPE_CHECKING:  # numpy, and scipy behind postprocess, stay out of `thrombus --help`
    import numpy as np

    from thrombus.inference.lesion_gate import CaseGate, LesionGate
    from thrombus.inference.postprocess import Postprocessing

log = logging.getLogger(__name__)


def calibrate(
    model: Any, cases: Sequence[Any], slab_depth: int, batch_size: int, device: Any, *, stride: int = 1,
    tile: tuple[int, int] | None = None, slice_mm: float | None = None,
    progress: bool = True, gates: Sequence[CaseGate | None] | None = None,
    subsets: Mapping[str, Sequence[str]] | None = None, channels: Sequence[str] = (),
) -> Postprocessing:
    """Predict the validation cases as validation does (whole volumes, slabs `stride` apart) and choose the settings.

    With `gates` (one per case: `lesion_gate.case_gates`) each setting is scored after the lesion gate, as
    inference applies it. With `subsets` ({name: channels removed}, names from `channels`, the model's)
    the settings of each subset that removes something are chosen too, on the same cases with those
    channels removed and without the gate where ADC is among them (`Postprocessing.by_subset`). A case
    is predicted once for each set of channels it is left with. The model is put in eval mode for the
    predictions and handed back in the mode it came in.
    """
    import torch
    from tqdm import tqdm

    from thrombus.inference.postprocess import MIN_POSITIVES, choose_postprocessing
    from thrombus.model.sliding import predict_case

    if not cases:
        return choose_postprocessing([], [], [])
    was_training = model.training
    model.eval()
    predicted: dict[tuple[str, tuple[int, ...]], np.ndarray] = {}

    def probability(case: Any) -> np.ndarray:
        """The case's map, predicted once for each set of channels it has."""
        key = (case.subject, tuple(int(i) for i in torch.nonzero(case.availability).flatten()))
        if key not in predicted:
            logits = predict_case(model, case, slab_depth, batch_size, device, stride, tile, slice_mm)
            predicted[key] = torch.sigmoid(logits).numpy()
        return predicted[key]

    def choose(variants: Sequence[Any], variant_gates: Sequence[CaseGate | None] | None) -> Postprocessing:
        probabilities = [probability(case)
                         for case in tqdm(variants, desc="calibrating", unit="subject", leave=False, disable=not progress)]
        return choose_postprocessing(probabilities, [case.label.numpy() for case in variants],
                                     [case.subject for case in variants],
                                     truth_outside=[int(case.label_outside) for case in variants],
                                     voxel_volumes=[case.voxel_mm3 for case in variants], min_positives=MIN_POSITIVES,
                                     gates=variant_gates)

    try:
        post = choose(cases, gates)
        by_subset = [_subset_settings(name, removed, cases, gates, channels, choose)
                     for name, removed in sorted((subsets or {}).items())
                     if any(channel in channels for channel in removed)]
    finally:
        model.train(was_training)
    return dataclasses.replace(post, by_subset=tuple(found for found in by_subset if found is not None))


def _subset_settings(name: str, removed: Sequence[str], cases: Sequence[Any], gates: Sequence[CaseGate | None] | None,
                     channels: Sequence[str],
                     choose: Callable[[Sequence[Any], Sequence[CaseGate | None] | None], Postprocessing]) -> Postprocessing | None:
    """One subset's settings, chosen on the cases with its channels removed (those left with no channel
    are not scored); None, with a warning, when too few thrombus-positive cases are left to choose on."""
    from thrombus.inference.postprocess import MIN_POSITIVES

    gone = [channel for channel in channels if channel in set(removed)]
    indices = [channels.index(channel) for channel in gone]
    variants, variant_gates = [], []
    for number, case in enumerate(cases):
        variant = without_channels(case, indices)
        if not bool(variant.availability.any()):
            continue
        variants.append(variant)
        variant_gates.append(None if gates is None or "adc" in gone else gates[number])
    if sum(variant.positive for variant in variants) < MIN_POSITIVES:
        log.warning("subset %s: fewer than %d thrombus-positive validation subjects keep a channel; its predictions "
                    "take the settings calibrated with more sequences", name, MIN_POSITIVES)
        return None
    post = choose(variants, variant_gates if any(gate is not None for gate in variant_gates) else None)
    return dataclasses.replace(post, subset=name, removed=tuple(gone))


def without_channels(case: Any, indices: Sequence[int]) -> Any:
    """The case with the channels at `indices` zero-filled and flagged missing, as inference's `--sequences`
    leaves a stack (`predict.select_channels`, `zero_missing`); the case itself is not changed."""
    if not indices:
        return case
    image = case.image.clone()
    availability = case.availability.clone()
    image[list(indices)] = 0.0
    availability[list(indices)] = 0.0
    return dataclasses.replace(case, image=image, availability=availability)


@dataclass(frozen=True)
class CalibrationRequest:
    """What `calibrate_fold` needs: the fold's validation subjects come from the split file."""

    sheet: Path
    splits: Path
    fold: int
    stacks_root: Path
    checkpoint: Path
    out: Path
    threads: int = 1
    device: str = "auto"
    batch_size: int = 4
    progress: bool = True
    lesion_gate: LesionGate | None = None
    subsets: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)


def calibrate_fold(request: CalibrationRequest) -> Postprocessing:
    """Choose the fold's postprocessing with its checkpoint on its validation subjects and write it to `request.out`."""
    from thrombus.device import resolve_device, torch_threads
    from thrombus.inference.lesion_gate import case_gates
    from thrombus.io import write_json
    from thrombus.samples import read_sheet, subjects
    from thrombus.training.card import card_prediction, model_from_checkpoint
    from thrombus.training.data import case_sources, load_cases
    from thrombus.training.splits import fold_of, labelled_subjects, read_splits

    loaded = model_from_checkpoint(request.checkpoint, {})
    card = loaded.card
    by_id = {s.subject: s for s in subjects(read_sheet(request.sheet), {})}
    fold = fold_of(read_splits(request.splits, labelled_subjects(by_id.values())), request.fold, request.splits)
    model = loaded.network
    slab_depth, stride, tile, slice_mm = card_prediction(card)
    with torch_threads(request.threads):
        device = resolve_device(request.device, "--device")
        cases = load_cases(case_sources([by_id[s] for s in fold["val"]], request.stacks_root), list(card["channels"]))
        gates = None
        if request.lesion_gate is not None:
            found = case_gates([(case.center, case.subject) for case in cases], request.stacks_root, request.lesion_gate)
            gates = [found[case.subject] for case in cases]
        post = calibrate(model.to(device), cases, slab_depth, request.batch_size, device, stride=stride, tile=tile, slice_mm=slice_mm,
                         progress=request.progress, gates=gates, subsets=request.subsets, channels=list(card["channels"]))
    weights = loaded.weights_sha256
    post = dataclasses.replace(post, weights_sha256=weights,
                               by_subset=tuple(dataclasses.replace(found, weights_sha256=weights) for found in post.by_subset))
    write_json(request.out, post.to_dict())
    return post


def add_calibrate_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `thrombus calibrate` (the `calibrate` rule's command)."""
    parser = subparsers.add_parser("calibrate", help="choose a fold's threshold and smallest component on its validation subjects")
    add_fold_model_arguments(parser)
    parser.add_argument("--out", required=True, help="postprocessing.json to write (beside best.pt)")
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--batch-size", type=positive_int, default=4, help="slabs per forward pass (does not change the result)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--subsets", default="{}", help='JSON {subset: [channels removed]}: settings of their own for '
                        "predictions without those channels (predict-fold's --subsets)")
    add_lesion_gate_argument(parser)
    parser.set_defaults(func=_cmd_calibrate)


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from thrombus.training.card import CheckpointError
    from thrombus.training.splits import SplitsError

    try:
        gate = lesion_gate_option(args.lesion_gate)
    except ValueError as error:
        log.error("--lesion-gate: %s", error)
        return 1
    subsets = json_object(args.subsets, "--subsets")  # a user error: `thrombus` says which option, and stops
    request = CalibrationRequest(
        sheet=Path(args.sheet), splits=Path(args.splits), fold=args.fold, stacks_root=Path(args.stacks_root),
        checkpoint=Path(args.checkpoint), out=Path(args.out), threads=args.threads, device=args.device,
        batch_size=args.batch_size, progress=not args.quiet, lesion_gate=gate,
        subsets={str(name): [str(channel) for channel in removed] for name, removed in subsets.items()},
    )
    try:
        post = calibrate_fold(request)
    except (CheckpointError, SplitsError) as error:
        log.error("%s", error)
        return 1
    log.info("fold %d: threshold %.2f, smallest component %g mm^3 (%s)", args.fold, post.threshold,
             post.min_component_mm3, post.criterion)
    for found in post.by_subset:
        log.info("fold %d, subset %s (without %s): threshold %.2f, smallest component %g mm^3", args.fold, found.subset,
                 ", ".join(found.removed), found.threshold, found.min_component_mm3)
    return 0
