"""Inference over one fold's test subjects, with every sequence subset an experiment's tables show.

One job per fold rather than per subject: the model is loaded once, and on a cluster one GPU job per
fold costs a fraction of the scheduling overhead of one per subject. Everything is written into a
temporary folder beside the target and renamed into place at the end, so a killed job never leaves a
folder that looks finished. A subject whose stack cannot be used is listed in `predictions.json` with
its error and the others are still predicted; the evaluation turns the listing into the table's notes.

Layout: `<out>/<subset>/<center>/<subject>/{probability,mask}.nii.gz` and `record.json`, plus
`<out>/predictions.json`.
"""

from __future__ import annotations

import argparse
import gzip
import logging
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thrombus.inference.cli import add_lesion_gate_argument, lesion_gate_option
from thrombus.io import PathLike, atomic_folder, atomic_path, write_json
from thrombus.options import json_object, positive_int

if TYPE_CHECKING:
    from thrombus.inference.lesion_gate import LesionGate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoldRequest:
    """What `predict_fold` needs: the fold's test subjects come from the split file."""

    sheet: Path
    splits: Path
    fold: int
    stacks_root: Path
    checkpoint: Path
    postprocessing: Path | None
    harmonise: Mapping[str, Any] | None
    subsets: Mapping[str, Sequence[str]]
    out_dir: Path
    threads: int = 1
    device: str = "auto"
    lesion_gate: LesionGate | None = None


def subject_folder(root: PathLike, subset: str, center: str, subject: str) -> Path:
    """Where one subject's prediction with one subset lies (shared with the evaluation)."""
    return Path(root) / subset / center / subject


def kept_channels(channels: Sequence[str], removed: Sequence[str]) -> list[str]:
    """The channels a subset keeps, in the model's order."""
    return [channel for channel in channels if channel not in set(removed)]


def predict_fold(request: FoldRequest) -> dict[str, Any]:
    """Predict every test subject of the fold with every subset; returns the listing it writes."""
    from thrombus.samples import read_sheet, subjects
    from thrombus.training.splits import fold_of, read_splits

    document = read_splits(request.splits)
    fold = fold_of(document, request.fold, request.splits)
    by_id = {s.subject: s for s in subjects(read_sheet(request.sheet), {})}
    missing = [subject for subject in fold["test"] if subject not in by_id]
    if missing:
        raise ValueError(f"split file {request.splits}, fold {request.fold}: test subjects {missing} are not in {request.sheet}")
    with atomic_folder(request.out_dir) as staging:
        listing = _predict_all(request, [by_id[s] for s in fold["test"]], staging, fold["name"])
        write_json(staging / "predictions.json", listing)
    return listing


def _predict_all(request: FoldRequest, test: Sequence[Any], staging: Path, fold_name: str) -> dict[str, Any]:
    from thrombus.progress import progress

    from thrombus.inference.lesion_gate import registered_adc
    from thrombus.inference.predict import PredictRequest, harmonise_expected, predict_subject
    from thrombus.nifti import VolumeError
    from thrombus.training.card import model_from_checkpoint

    # Read once for the fold: the harmonisation is checked here (a mismatch fails the whole fold),
    # each subject's channels in predict_subject.
    loaded = model_from_checkpoint(request.checkpoint, harmonise_expected(request.harmonise))
    card_channels = list(loaded.card["channels"])
    listing: dict[str, Any] = {
        "checkpoint": str(request.checkpoint),
        "fold": request.fold,
        "fold_name": fold_name,
        "subsets": {name: list(removed) for name, removed in request.subsets.items()},
        "predictions": [],
    }
    jobs = [(subset, s) for subset in sorted(request.subsets) for s in test]
    unreadable = _unreadable()
    predicted: dict[tuple[str, tuple[str, ...]], tuple[str, Path]] = {}  # (subject, channels used) -> (subset, folder)
    for subset, s in progress(jobs, desc="predicting", unit="case"):
        folder = subject_folder(staging, subset, s.center, s.subject)
        stack_dir = request.stacks_root / "results" / "harmonise" / s.center / s.subject
        entry = {"subset": subset, "subject": s.subject, "center": s.center}
        used = channels_used(stack_dir / "stack.json", card_channels, request.subsets[subset])
        try:
            earlier = predicted.get((s.subject, used)) if used is not None else None
            if earlier is not None:
                record = _reuse(earlier, folder, subset)
            else:
                record = predict_subject(
                    PredictRequest(
                        checkpoint=request.checkpoint,
                        stack=stack_dir / "stack.nii.gz",
                        summary=stack_dir / "stack.json",
                        postprocessing=request.postprocessing,
                        harmonise=request.harmonise,
                        keep=tuple(kept_channels(card_channels, request.subsets[subset])),
                        out_probability=folder / "probability.nii.gz",
                        out_mask=folder / "mask.nii.gz",
                        out_record=folder / "record.json",
                        subject=s.subject,
                        center=s.center,
                        threads=request.threads,
                        device=request.device,
                        adc=registered_adc(request.stacks_root, s.center, s.subject),
                        lesion_gate=request.lesion_gate,
                    ),
                    loaded,
                )
                if used is not None:
                    predicted[(s.subject, used)] = (subset, folder)
            _relocate(record, folder, subject_folder(request.out_dir, subset, s.center, s.subject))
            entry.update(status="ok", components=record.get("components"))
        except (VolumeError, FileNotFoundError, ValueError, *unreadable) as error:
            if _is_model_error(error):
                raise
            message = str(error)
            if isinstance(error, unreadable):
                message = (f"subject {s.subject} (center {s.center}): stack {stack_dir / 'stack.nii.gz'} cannot be read "
                           f"({type(error).__name__}: {error}); rerun harmonisation for this subject")
            log.error("fold %d, subset %s, subject %s (center %s): %s", request.fold, subset, s.subject, s.center, message)
            entry.update(status="failed", error=message)
        listing["predictions"].append(entry)
    return listing


def channels_used(summary: Path, channels: Sequence[str], removed: Sequence[str]) -> tuple[str, ...] | None:
    """The model channels a subset leaves the subject, as its stack.json says it has them; None when the
    summary cannot be read (predict_subject then says what is wrong with it).

    Two subsets that leave a subject the same channels give the same prediction: removing FLAIR from a
    subject without FLAIR changes nothing, and a fold of centers without FLAIR would otherwise predict
    every such subject twice or more.
    """
    from thrombus.io import read_json

    try:
        stack = read_json(summary)
        available = {str(name) for name, present in zip(stack["channels"], stack["availability"]) if present}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return tuple(channel for channel in kept_channels(channels, removed) if channel in available)


def _reuse(earlier: tuple[str, Path], folder: Path, subset: str) -> dict[str, Any]:
    """The earlier subset's prediction of the same subject with the same channels, copied under `subset`."""
    import shutil

    from thrombus.io import read_json

    source_subset, source = earlier
    folder.mkdir(parents=True, exist_ok=True)
    record = read_json(source / "record.json")
    for key, path in record["outputs"].items():
        target = folder / Path(path).name
        with atomic_path(target) as tmp:
            shutil.copyfile(source / Path(path).name, tmp)
        record["outputs"][key] = str(target)
    record["same_prediction_as_subset"] = source_subset
    log.info("%s (center %s), subset %s: the channels of subset %s, its prediction reused", record["subject"],
             record["center"], subset, source_subset)
    return record


def _unreadable() -> tuple[type[BaseException], ...]:
    """How a damaged stack.nii.gz fails when it is read (truncated or not gzip at all, not NIfTI): that
    subject's failure, not the fold's. Other OS errors (a full disk) still stop the fold. A function, so
    that nibabel is imported by the jobs that read images, not by every `thrombus` start-up."""
    from nibabel.filebasedimages import ImageFileError

    return (EOFError, gzip.BadGzipFile, zlib.error, ImageFileError)


def _relocate(record: dict[str, Any], staged: Path, final: Path) -> None:
    """Point the record's output paths at where the files will be once the folder is renamed."""
    record["outputs"] = {key: str(final / Path(path).name) for key, path in record["outputs"].items()}
    write_json(staged / "record.json", record)


def _is_model_error(error: BaseException) -> bool:
    """A checkpoint that does not fit the configuration fails the whole fold, not one subject."""
    from thrombus.training.card import CheckpointError

    return isinstance(error, CheckpointError)


def add_fold_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments naming a fold and its model: the sheet, stacks, split file, fold and checkpoint
    (`predict-fold` and `calibrate`)."""
    parser.add_argument("--sheet", required=True, help="sample sheet (TSV)")
    parser.add_argument("--stacks-root", required=True, help="the workflow's working directory (holds results/harmonise/...)")
    parser.add_argument("--splits", required=True, help="split file of the experiment")
    parser.add_argument("--fold", type=int, required=True)
    parser.add_argument("--checkpoint", required=True, help="best.pt of the fold")


def add_predict_fold_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `thrombus predict-fold` (the `infer` rule's command)."""
    parser = subparsers.add_parser("predict-fold", help="predict a fold's test subjects with every sequence subset")
    add_fold_model_arguments(parser)
    parser.add_argument("--postprocessing", default=None, help="postprocessing.json written by `thrombus calibrate`")
    parser.add_argument("--harmonise", default=None, help="JSON of the config's harmonise section (checked against the model card)")
    parser.add_argument("--subsets", default='{"all": []}', help='JSON {subset: [channels removed]}')
    add_lesion_gate_argument(parser)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.set_defaults(func=_cmd_predict_fold)


def _cmd_predict_fold(args: argparse.Namespace) -> int:
    from thrombus.training.card import CheckpointError
    from thrombus.training.splits import SplitsError

    try:
        gate = lesion_gate_option(args.lesion_gate)
    except ValueError as error:
        log.error("--lesion-gate: %s", error)
        return 1
    request = FoldRequest(
        sheet=Path(args.sheet),
        splits=Path(args.splits),
        fold=args.fold,
        stacks_root=Path(args.stacks_root),
        checkpoint=Path(args.checkpoint),
        postprocessing=Path(args.postprocessing) if args.postprocessing else None,
        harmonise=json_object(args.harmonise, "--harmonise") if args.harmonise else None,
        subsets=json_object(args.subsets, "--subsets"),
        out_dir=Path(args.out_dir),
        threads=args.threads,
        device=args.device,
        lesion_gate=gate,
    )
    try:
        listing = predict_fold(request)
    except (CheckpointError, SplitsError) as error:
        log.error("%s", error)
        return 1
    failed = [p for p in listing["predictions"] if p["status"] != "ok"]
    log.info("fold %d: %d predictions, %d failed", args.fold, len(listing["predictions"]), len(failed))
    return 0
