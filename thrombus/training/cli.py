"""`thrombus splits` and `thrombus train`: the command-line side of the `splits` and `train` rules.

`thrombus.cli` calls `add_train_parser(subcommands)`; everything heavy (torch, MONAI) is imported inside
the commands so that `thrombus --help` stays fast.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from thrombus.options import json_object, positive_int

log = logging.getLogger(__name__)

#: Keys of the config's `train` section used by the splits, not by the training loop.
SPLIT_KEYS: tuple[str, ...] = ("val_fraction", "test_fraction")
#: Keys of the `train` section the workflow uses (which experiments and folds to run, resuming).
WORKFLOW_KEYS: tuple[str, ...] = ("experiments", "resume")


def _split_options(train_section: Mapping[str, Any]) -> Any:
    from thrombus.training.splits import SplitOptions

    return SplitOptions(**{key: train_section[key] for key in SPLIT_KEYS if key in train_section})


def _cmd_splits(args: argparse.Namespace) -> int:
    from thrombus.samples import read_sheet, subjects
    from thrombus.training.splits import SplitsError, ensure_splits, labelled_subjects

    train_section = json_object(args.options, "--options")
    try:
        labelled = labelled_subjects(subjects(read_sheet(args.sheet), {}))
        ensure_splits(args.out, labelled, args.experiment, args.seed, _split_options(train_section))
    except SplitsError as error:
        log.error("%s", error)
        return 1
    return 0


def _model_config(model_section: Mapping[str, Any], harmonise: Mapping[str, Any]) -> Any:
    """The model's config; its channels default to the harmonised stack's, and must equal them if given."""
    from thrombus.model import ModelConfig
    from thrombus.samples import ConfigError

    stack_channels = list(harmonise.get("channels", {})) or None
    values = dict(model_section)
    if stack_channels and "channels" not in values:
        values["channels"] = stack_channels
    try:
        config = ModelConfig.from_mapping(values)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    if stack_channels and list(config.channels) != stack_channels:
        raise ConfigError(
            f"model.channels {list(config.channels)} differ from the stack's channels {stack_channels} (harmonise.channels)"
        )
    return config


def _train_options(train_section: Mapping[str, Any]) -> Any:
    from thrombus.samples import ConfigError
    from thrombus.training.options import TrainOptions

    try:
        return TrainOptions.from_mapping(train_section, ignore=SPLIT_KEYS + WORKFLOW_KEYS)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"train section: {error}") from error


def _cmd_train(args: argparse.Namespace) -> int:
    from thrombus.io import sha256_file
    from thrombus.samples import read_sheet, subjects
    from thrombus.training.card import CheckpointError, make_card
    from thrombus.training.data import case_sources, load_cases
    from thrombus.training.pretrained import PretrainedError, initial_weights
    from thrombus.training.splits import SplitsError, fold_of, labelled_subjects, read_splits
    from thrombus.training.trainer import TrainRun, train

    sections = json_object(args.options, "--options")
    harmonise = json_object(args.harmonise, "--harmonise")
    model = _model_config(sections.get("model", {}), harmonise)
    options = _train_options(sections.get("train", {}))
    by_id = {s.subject: s for s in subjects(read_sheet(args.sheet), {})}
    try:
        initial = initial_weights(options.init_from, model, harmonise) if options.init_from else None
        document = read_splits(args.splits, labelled_subjects(by_id.values()))
        fold = fold_of(document, args.fold, args.splits)
        train_cases = load_cases(case_sources([by_id[s] for s in fold["train"]], args.stacks_root), model.channels)
        val_cases = load_cases(case_sources([by_id[s] for s in fold["val"]], args.stacks_root), model.channels)
        split = {
            "experiment": document["experiment"],
            "fold": args.fold,
            "name": fold["name"],
            "file_sha256": sha256_file(args.splits),
            "train": fold["train"],
            "val": fold["val"],
        }
        card = make_card(
            model,
            harmonise,
            {"slab_depth": options.slab_depth, "patch_size": list(options.patch_size), "predict_stride": options.stride,
             "predict_tile": list(options.tile) if options.tile else None, "slice_mm": options.slice_mm},
            {**options.card_dict(), "seed": args.seed, "split": split, **(initial.source if initial else {})},
        )
        result = train(
            TrainRun(
                train_cases=train_cases,
                val_cases=val_cases,
                model=model,
                options=options,
                card=card,
                out_dir=Path(args.out_dir),
                seed=args.seed,
                threads=args.threads,
                device=args.device,
                resume=args.resume,
                stop_after=args.stop_after,
                progress=not args.quiet,
                initial_state=initial.state if initial else None,
            )
        )
    except (SplitsError, CheckpointError, PretrainedError) as error:
        log.error("%s", error)
        return 1
    log.info(
        "fold %d (%s): %d iterations in %.0f s, best %s",
        args.fold,
        fold["name"],
        result.iterations_done,
        result.seconds,
        {k: v for k, v in result.best.items() if k != "score"},
    )
    return 0


def add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the `splits` and `train` subcommands."""
    splits = subparsers.add_parser("splits", help="center-aware split file of one experiment (kept once written)")
    splits.add_argument("--sheet", required=True, help="sample sheet (TSV)")
    splits.add_argument("--experiment", required=True, choices=("monocentric", "loco"))
    splits.add_argument("--options", default="{}", help="JSON of the config's train section (val_fraction, test_fraction)")
    splits.add_argument("--seed", type=int, required=True)
    splits.add_argument("--out", required=True, help="split file, e.g. results/splits/loco.json")
    splits.set_defaults(func=_cmd_splits)

    train = subparsers.add_parser("train", help="train one fold of a split file (UpAttLLSTM with GMD by default)")
    train.add_argument("--sheet", required=True, help="sample sheet (TSV): thrombus labels and mask paths")
    train.add_argument("--stacks-root", required=True, help="the workflow's working directory (holds results/harmonise/...)")
    train.add_argument("--splits", required=True, help="split file written by `thrombus splits`")
    train.add_argument("--fold", type=int, required=True)
    train.add_argument("--options", default="{}", help='JSON {"train": {...}, "model": {...}} of the config sections')
    train.add_argument("--harmonise", default="{}", help="JSON of the config's harmonise section (recorded in the model card)")
    train.add_argument("--out-dir", required=True, help="where best.pt, latest.pt, model_card.json and the logs go")
    train.add_argument("--threads", type=positive_int, default=1, help="torch threads (the rule passes its own)")
    train.add_argument("--seed", type=int, required=True)
    train.add_argument("--resume", action="store_true", help="continue from OUT_DIR/latest.pt when it exists")
    train.add_argument("--stop-after", type=positive_int, default=None, help="stop after this many iterations (resumable)")
    train.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=_cmd_train)

