"""`thrombus ladder`: the learnability ladder of the training recipes, written to RESULTS.md."""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
from pathlib import Path

from thrombus.options import positive_int
from thrombus.provenance import checkout_commit

log = logging.getLogger(__name__)


def rows_beside(results: str | None, out_dir: Path) -> Path:
    """The row store a run adds to: beside the Markdown it renders (RESULTS.md -> RESULTS.json), so the rows
    are committed with the page and a run on another machine adds to them instead of starting a new table;
    with no Markdown named, `out_dir/ladder.json`."""
    return Path(results).with_suffix(".json") if results else out_dir / "ladder.json"


def _cmd_ladder(args: argparse.Namespace) -> int:
    import yaml

    from thrombus.io import write_text
    from thrombus.ladder import gate_rows, load_ladder_config, read_results, render_results, run_ladder

    base = yaml.safe_load(Path(args.workflow_config).read_text())
    settings = load_ladder_config(Path(args.config), base)
    settings["samples"] = args.samples or settings.get("samples") or base["samples"]
    if args.only:
        settings["only"] = args.only
    out_dir = Path(args.out_dir)
    seed = int(settings.get("seed", base.get("seed", 0)))
    threads = int(args.threads or settings.get("threads", 2))
    rows = Path(args.rows) if args.rows else rows_beside(args.results, out_dir)
    if args.gate_only:
        if not args.only or not rows.exists():
            log.error("ladder --gate-only: name the rows with --only and keep their store (%s)", rows)
            return 1
        gate_rows(settings, Path(args.root), out_dir, seed, threads, rows, commit=checkout_commit(), train_seed=args.train_seed)
    elif not args.report_only:
        run_ladder(settings, Path(args.root), out_dir, seed, threads, progress=not args.quiet, commit=checkout_commit(), rows=rows,
                   train_seed=args.train_seed)
    elif not rows.exists():
        log.error("ladder: no row store at %s to render (run some rungs first, or name it with --rows)", rows)
        return 1
    raw = yaml.safe_load(Path(args.config).read_text())["ladder"]["recipes"]
    context = {
        "command": "thrombus " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("thrombus") else "thrombus ladder ...",
        "config": args.config,
        "samples": settings["samples"],
        "seed": seed,
        "rows": str(rows),
        "date": datetime.date.today().isoformat(),
        "recipes": raw,
        "results": args.results,
    }
    text = render_results(read_results(rows), context)
    if args.results:
        write_text(Path(args.results), text)
        log.info("wrote %s", args.results)
    else:
        print(text)
    return 0


def add_ladder_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the `ladder` subcommand."""
    ladder = subparsers.add_parser("ladder", help="learnability ladder of training recipes (overfit, monocentric, mixed, loco)")
    ladder.add_argument("--config", default="config/ladder.yaml", help="the ladder's rungs and recipes")
    ladder.add_argument("--workflow-config", default="config/config.yaml", help="model/train/harmonise sections the recipes override")
    ladder.add_argument("--samples", default=None, help="sample sheet (default: the ladder config's, else the workflow's)")
    ladder.add_argument("--root", default=".", help="workflow directory holding results/harmonise/")
    ladder.add_argument("--out-dir", default="results/ladder", help="checkpoints (and ladder.json when no --results)")
    ladder.add_argument("--results", default=None, help="write the Markdown here (e.g. RESULTS.md's ladder part)")
    ladder.add_argument("--rows", default=None,
                        help="the row store to add to and render (default: --results with .json, e.g. RESULTS.json)")
    ladder.add_argument("--threads", type=positive_int, default=None)
    ladder.add_argument("--train-seed", type=int, default=None,
                        help="train with this seed on the ladder seed's subjects; its rows sit beside the ladder seed's")
    ladder.add_argument("--only", nargs="*", default=None, help="recipe/rung pairs to run, e.g. new/overfit")
    ladder.add_argument("--report-only", action="store_true", help="render the Markdown from the row store, running nothing")
    ladder.add_argument("--gate-only", action="store_true",
                        help="add the lesion gate's figures to the --only rows from the final weights they left in --out-dir")
    ladder.add_argument("--quiet", action="store_true")
    ladder.set_defaults(func=_cmd_ladder)
