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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thrombus.inference.cli import add_lesion_gate_argument, lesion_gate_option
from thrombus.inference.fold import add_fold_model_arguments
from thrombus.options import positive_int

if TYPE_CHECKING:  # scipy behind postprocess stays out of `thrombus --help`
    from thrombus.inference.lesion_gate import CaseGate, LesionGate
    from thrombus.inference.postprocess import Postprocessing

log = logging.getLogger(__name__)


def calibrate(
    model: Any, cases: Sequence[Any], slab_depth: int, batch_size: int, device: Any, *, stride: int = 1,
    tile: tuple[int, int] | None = None, slice_mm: float | None = None,
    progress: bool = True, gates: Sequence[CaseGate | None] | None = None,
) -> Postprocessing:
    """Predict the validation cases as validation does (whole volumes, slabs `stride` apart) and choose the settings.

    With `gates` (one per case: `lesion_gate.case_gates`) each setting is scored after the lesion gate, as
    inference applies it. The model is put in eval mode for the predictions and handed back in the mode it came in.
    """
    import torch
    from tqdm import tqdm

    from thrombus.inference.postprocess import MIN_POSITIVES, choose_postprocessing
    from thrombus.model.sliding import predict_case

    if not cases:
        return choose_postprocessing([], [], [])
    was_training = model.training
    model.eval()
    probabilities, truths = [], []
    try:
        for case in tqdm(cases, desc="calibrating", unit="subject", leave=False, disable=not progress):
            logits = predict_case(model, case, slab_depth, batch_size, device, stride, tile, slice_mm)
            probabilities.append(torch.sigmoid(logits).numpy())
            truths.append(case.label.numpy())
    finally:
        model.train(was_training)
    outside = [int(case.label_outside) for case in cases]
    return choose_postprocessing(probabilities, truths, [case.subject for case in cases], truth_outside=outside,
                                 voxel_volumes=[case.voxel_mm3 for case in cases], min_positives=MIN_POSITIVES, gates=gates)


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
                         progress=request.progress, gates=gates)
    post = dataclasses.replace(post, weights_sha256=loaded.weights_sha256)
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
    request = CalibrationRequest(
        sheet=Path(args.sheet), splits=Path(args.splits), fold=args.fold, stacks_root=Path(args.stacks_root),
        checkpoint=Path(args.checkpoint), out=Path(args.out), threads=args.threads, device=args.device,
        batch_size=args.batch_size, progress=not args.quiet, lesion_gate=gate,
    )
    try:
        post = calibrate_fold(request)
    except (CheckpointError, SplitsError) as error:
        log.error("%s", error)
        return 1
    log.info("fold %d: threshold %.2f, smallest component %g mm^3 (%s)", args.fold, post.threshold,
             post.min_component_mm3, post.criterion)
    return 0
