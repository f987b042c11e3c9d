"""`thrombus evaluate` and `thrombus tables`: the command-line side of the `evaluate` and `tables` rules."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from thrombus.options import json_object

log = logging.getLogger(__name__)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from thrombus.evaluation.fold import evaluate_fold, write_fold
    from thrombus.io import read_json
    from thrombus.training.pretrained import start_description

    options = json_object(args.options, "--options")
    result = evaluate_fold(Path(args.sheet), Path(args.predictions), args.experiment, args.fold, options)
    card = read_json(args.card) if args.card else {}
    extra = {
        "experiment": args.experiment,
        "fold": args.fold,
        "iterations": card.get("result", {}).get("iterations"),
        "device": card.get("result", {}).get("device"),
        "start": start_description(card) if card else None,
        "options": options,
    }
    write_fold(result, Path(args.out), Path(args.record), extra)
    for failure in result.failures:
        log.warning("not scored: %s", failure)
    log.info("%s fold %d: %d rows, %d failures", args.experiment, args.fold, len(result.rows), len(result.failures))
    return 0


def _cmd_tables(args: argparse.Namespace) -> int:
    from thrombus.evaluation.assemble import TableRequest, assemble_table
    from thrombus.evaluation.paired import BootstrapOptions

    options = json_object(args.options, "--options")
    request = TableRequest(
        name=args.table,
        title=args.title,
        experiments=args.experiments,
        subsets=args.subsets,
        evaluations=[Path(p) for p in args.evaluations],
        records=[Path(p) for p in args.records],
        sheet=Path(args.sheet),
        stacks_root=Path(args.stacks_root),
        out_dir=Path(args.out_dir),
        overlays=options.get("overlays", True),
        bootstrap=BootstrapOptions(samples=int(options.get("bootstrap_samples", BootstrapOptions.samples)), seed=args.seed),
    )
    for path in assemble_table(request):
        log.info("wrote %s", path)
    return 0


def _cmd_prediction_figure(args: argparse.Namespace) -> int:
    from thrombus.evaluation.figures import prediction_overview

    prediction_overview(args.stack, args.mask, args.out, f"{args.subject} (center {args.center})")
    return 0


def add_evaluation_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register `evaluate`, `tables` and `prediction-figure`."""
    figure = subparsers.add_parser("prediction-figure", help="a new subject's prediction drawn on its susceptibility channel")
    figure.add_argument("--stack", required=True, help="harmonised stack (its first channel is drawn)")
    figure.add_argument("--mask", required=True, help="predicted mask on the stack's grid")
    figure.add_argument("--subject", required=True)
    figure.add_argument("--center", required=True)
    figure.add_argument("--out", required=True, help="PNG")
    figure.set_defaults(func=_cmd_prediction_figure)

    evaluate = subparsers.add_parser("evaluate", help="per-subject metrics of one experiment's fold, every subset")
    evaluate.add_argument("--sheet", required=True, help="sample sheet (TSV): labels and reference masks")
    evaluate.add_argument("--predictions", required=True, help="the fold's prediction folder (predict-fold)")
    evaluate.add_argument("--experiment", required=True)
    evaluate.add_argument("--fold", type=int, required=True)
    evaluate.add_argument("--card", default=None, help="model_card.json of the fold's model (iterations, device)")
    evaluate.add_argument("--options", default="{}", help="JSON of the config's evaluation section")
    evaluate.add_argument("--out", required=True, help="per-subject TSV")
    evaluate.add_argument("--record", required=True, help="JSON: failures and context")
    evaluate.set_defaults(func=_cmd_evaluate)

    tables = subparsers.add_parser("tables", help="one result table: overall and per center, CSV + Markdown + LaTeX, figures")
    tables.add_argument("--table", required=True, help="table name (file stem)")
    tables.add_argument("--title", required=True)
    tables.add_argument("--experiments", nargs="+", required=True, help="experiments, in the order of the rows")
    tables.add_argument("--subsets", nargs="+", required=True, help="subsets, in the order of the rows")
    tables.add_argument("--evaluations", nargs="+", required=True, help="per-fold TSVs of `thrombus evaluate`")
    tables.add_argument("--records", nargs="+", required=True, help="their JSON records")
    tables.add_argument("--sheet", required=True)
    tables.add_argument("--stacks-root", required=True, help="the workflow's working directory")
    tables.add_argument("--options", default="{}", help="JSON of the config's evaluation section")
    tables.add_argument("--seed", type=int, default=0, help="seed of the paired comparison's bootstrap (the config's seed)")
    tables.add_argument("--out-dir", required=True)
    tables.set_defaults(func=_cmd_tables)
