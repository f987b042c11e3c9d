"""The paper's tables of a `make paper` run, kept beside RESULTS.md with the run's provenance.

RESULTS.md is re-rendered by `thrombus ladder --report-only` on any checkout, where the paper run's
working directory (hours of training) is long gone. So `thrombus paper-report` copies what the run's
`tables` rules wrote (each table and its paired comparison, as Markdown) and how the run was made (the
configs and their SHA-256, the commit each model was trained at, the time each kind of job took, the
machine) into a store committed beside RESULTS.md (`RESULTS.paper.json`); the rendering reads only that.
With `--add` a run joins the store's earlier runs, so tables trained in a later session sit beside them.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thrombus.errors import UserError
from thrombus.io import read_json, sha256_file, write_json

log = logging.getLogger(__name__)

#: The store's name beside RESULTS.md.
STORE_NAME = "RESULTS.paper.json"

#: Job kinds whose Snakemake benchmark files are summed into the run's time.
TIMED_RULES: tuple[str, ...] = ("train", "calibrate", "infer", "evaluate", "tables")


class PaperReportError(UserError, ValueError):
    """A run's tables or models cannot be collected: names the file."""


@dataclass(frozen=True)
class RunSource:
    """Where a paper run is and how it was started."""

    root: Path
    config_files: Sequence[Path]
    ran_by: str
    command: str
    remarks: Sequence[str] = ()


def table_body(path: Path) -> tuple[str, list[str]]:
    """A table file's Markdown without its heading, and its notes apart (they repeat from table to table)."""
    if not path.exists():
        raise PaperReportError(f"paper-report: {path} is missing; run the `tables` rule of this run first")
    lines = path.read_text().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    if "Notes:" in lines:
        cut = lines.index("Notes:")
        notes = [line[2:] for line in lines[cut + 1:] if line.startswith("- ")]
        lines = lines[:cut]
    else:
        notes = []
    return "\n".join(lines).strip("\n"), notes


def table_runs(root: Path, name: str) -> list[tuple[str, int]]:
    """(experiment, fold) of the models behind one table, read from the rows it was made of (a replicate's
    rows name their declared experiment and, in `run`, their own)."""
    path = root / "results" / "tables" / f"{name}_subjects.tsv"
    if not path.exists():
        raise PaperReportError(f"paper-report: {path} is missing; run the `tables` rule of this run first")
    with path.open() as handle:
        return sorted({(row.get("run") or row["experiment"], int(row["fold"])) for row in csv.DictReader(handle, delimiter="\t")})


def model_record(root: Path, experiment: str, fold: int) -> dict[str, Any]:
    """What a model's card says of how and where it was trained."""
    path = root / "results" / "models" / experiment / f"fold{fold}" / "model_card.json"
    if not path.exists():
        raise PaperReportError(f"paper-report: the card of {experiment} fold {fold} is missing at {path}")
    card = read_json(path)
    result = card.get("result", {})
    return {
        "experiment": experiment,
        "fold": fold,
        "commit": card.get("code", {}).get("git_commit"),
        "iterations": result.get("iterations"),
        "seconds": result.get("seconds"),
        "device": result.get("device"),
        "threads": result.get("threads"),
        "seed": card.get("training", {}).get("seed"),
    }


def _benchmark_seconds(path: Path) -> float:
    """The wall seconds of a Snakemake benchmark file (its first row)."""
    with path.open() as handle:
        return float(next(csv.DictReader(handle, delimiter="\t"))["s"])


def rule_seconds(root: Path, runs: Sequence[tuple[str, int]], tables: Sequence[str]) -> dict[str, float]:
    """Wall seconds of each timed job kind over the runs and the collected tables, from Snakemake's benchmark
    files (a table the run made but the store leaves out does not count)."""
    totals: dict[str, float] = {}
    for rule in TIMED_RULES:
        paths = ([root / "logs" / "benchmarks" / rule / e / f"fold{f}.tsv" for e, f in runs] if rule != "tables"
                 else [root / "logs" / "benchmarks" / "tables" / f"{name}.tsv" for name in tables])
        seconds = [_benchmark_seconds(p) for p in paths if p.exists()]
        if seconds:
            totals[rule] = round(sum(seconds), 1)
    return totals


def collect(source: RunSource, config: Mapping[str, Any], machine: str, commit: str,
            only: Sequence[str] | None = None) -> dict[str, Any]:
    """The store's content: the configured tables (`only` these, when a run made only some) with their paired
    comparisons, and the run's provenance; the tables left out are named in the store."""
    unknown = sorted(set(only or ()) - set(config["tables"]))
    if unknown:
        raise PaperReportError(f"paper-report: --tables {' '.join(unknown)}: not tables of the config (its tables: "
                               f"{', '.join(config['tables'])})")
    tables, runs = [], set()
    for name, settings in config["tables"].items():
        if only and name not in only:
            continue
        body, table_notes = table_body(source.root / "results" / "tables" / f"{name}.md")
        paired, paired_notes = None, []
        if len(settings["experiments"]) > 1:  # a one-experiment table's paired file says only that nothing is compared
            paired, paired_notes = table_body(source.root / "results" / "tables" / f"{name}_paired.md")
        tables.append({"name": name, "title": settings.get("title", name), "table": body, "paired": paired,
                       "notes": list(dict.fromkeys([*table_notes, *paired_notes]))})
        runs |= set(table_runs(source.root, name))
    # a note every table has (the matching rule) is said once; the others stay under their table
    common = [note for note in tables[0]["notes"] if all(note in table["notes"] for table in tables)] if tables else []
    for table in tables:
        table["notes"] = [note for note in table["notes"] if note not in common]
    models = [model_record(source.root, e, f) for e, f in sorted(runs)]
    return {
        "ran_by": source.ran_by,
        "remarks": list(source.remarks),
        "command": source.command,
        "collected": datetime.date.today().isoformat(),
        "collected_at_commit": commit,
        "machine": machine,
        "root": str(source.root),
        "configs": {str(path): sha256_file(path) for path in source.config_files},
        "iterations": config.get("train", {}).get("iterations"),
        "seed": config.get("seed"),
        "tables": tables,
        "tables_not_run": [name for name in config["tables"] if only and name not in only],
        "notes": common,
        "models": models,
        "rule_seconds": rule_seconds(source.root, sorted(runs), [table["name"] for table in tables]),
    }


def _short(commit: object) -> str:
    """A commit's first 12 characters, keeping what follows it ("abc123 with uncommitted changes")."""
    head, _, rest = str(commit).partition(" ")
    return f"{head[:12]} {rest}" if rest else head[:12]


def _commits(models: Sequence[Mapping[str, Any]]) -> str:
    counts = Counter(_short(model["commit"]) for model in models)
    return ", ".join(f"{commit} ({n} model{'s' if n > 1 else ''})" for commit, n in sorted(counts.items()))


def stored_runs(store: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The runs a store holds, oldest first; a store written before runs could be added is one run at its top level."""
    return [dict(run) for run in store["runs"]] if "runs" in store else [dict(store)]


def with_run(runs: Sequence[Mapping[str, Any]], new: Mapping[str, Any]) -> list[dict[str, Any]]:
    """`runs` and then `new`: a table shows once, from the latest run that collected it.

    Why runs are added rather than the store rewritten: a make paper run's working directory is gone by the
    time a later session trains the tables it did not make, and its figures must not be lost with it. A run
    left with none of its tables is dropped; one that keeps some is told which were replaced (its list of
    models still names theirs).
    """
    names = {table["name"] for table in new["tables"]}
    kept = []
    for run in runs:
        tables = [table for table in run["tables"] if table["name"] not in names]
        replaced = [table["name"] for table in run["tables"] if table["name"] in names]
        if tables:
            remarks = list(run.get("remarks", []))
            if replaced:
                remarks.append(f"Its {', '.join(replaced)} table(s) were replaced by a later run's; the models listed "
                               "above include theirs.")
            kept.append({**run, "tables": tables, "remarks": remarks})
    return [*kept, dict(new)]


def _run_lines(run: Mapping[str, Any], made_elsewhere: set[str]) -> list[str]:
    """One run's provenance paragraph, remarks and tables."""
    models, seconds = run["models"], run["rule_seconds"]
    timing = ", ".join(f"{rule} {value / 60:.0f} min" for rule, value in seconds.items())
    configs = "; ".join(f"`{path}` (SHA-256 {digest[:12]})" for path, digest in run["configs"].items())
    lines = [
        f"Run by `{run['ran_by']}`; collected by `{run['command']}` on {run['collected']} (commit {_short(run['collected_at_commit'])}) on "
        f"{run['machine']}, from the run in `{run['root']}`; configs {configs}. {len(models)} models of "
        f"{run['iterations']} iterations, seed {run['seed']}, trained at commits {_commits(models)}, on "
        f"{', '.join(sorted({str(m['device']) for m in models}))} with {', '.join(sorted({str(m['threads']) for m in models}))} "
        f"threads. Wall time of the jobs behind these tables (one at a time): {timing}. The notes all the run's tables share are "
        "listed once, after its tables.",
    ]
    if run.get("remarks"):
        lines += ["", *[f"- {remark}" for remark in run["remarks"]]]
    not_run = [name for name in run.get("tables_not_run", []) if name not in made_elsewhere]
    if not_run:
        lines += ["", f"Tables of the config this run did not make: {', '.join(not_run)}."]
    for table in run["tables"]:
        lines += ["", f"### {table['title']}", "", table["table"]]
        if table["paired"]:
            lines += ["", f"Paired against the first row's experiment (`results/tables/{table['name']}_paired.md`):", "",
                      table["paired"]]
        if table.get("notes"):
            lines += ["", "Notes of this table:", "", *[f"- {note}" for note in table["notes"]]]
    lines += ["", "Notes of every table above:", "", *[f"- {note}" for note in run["notes"]]]
    return lines


def render(store: Mapping[str, Any]) -> list[str]:
    """RESULTS.md's section on the paper's tables, from the store: each run's provenance before its tables."""
    runs = stored_runs(store)
    made = {table["name"] for run in runs for table in run["tables"]}
    lines = ["", "## The paper's tables", ""]
    if len(runs) > 1:
        lines += [f"The tables below come from {len(runs)} runs; each run's provenance comes before its tables.", ""]
    for index, run in enumerate(runs, 1):
        if len(runs) > 1:
            titles = ", ".join(table["title"] for table in run["tables"])
            lines += [*(["", "---", ""] if index > 1 else []), f"**Run {index} of {len(runs)}** ({titles}).", ""]
        lines += _run_lines(run, made)
    return lines


def render_stored(results: Path) -> list[str]:
    """The section from the store beside `results` (RESULTS.md), or nothing when no paper run was collected."""
    store = Path(results).with_name(STORE_NAME)
    return render(read_json(store)) if store.exists() else []


def merged_config(paths: Sequence[Path]) -> dict[str, Any]:
    """The config files laid over each other as Snakemake lays several --configfile (mappings merged, lists replaced)."""
    import yaml

    from thrombus.experiments import deep_merge

    config: dict[str, Any] = {}
    for path in paths:
        if not Path(path).exists():
            raise PaperReportError(f"paper-report: config file {path} is missing")
        config = deep_merge(config, yaml.safe_load(Path(path).read_text()) or {})
    if not config.get("tables"):
        raise PaperReportError(f"paper-report: the configs {', '.join(map(str, paths))} declare no tables")
    return config


def _cmd_paper_report(args: argparse.Namespace) -> int:
    import shlex
    import sys

    from thrombus.provenance import checkout_commit, machine_description

    paths = [Path(p) for p in args.config]
    source = RunSource(root=Path(args.root), config_files=paths, ran_by=args.ran_by,
                       command=shlex.join(["thrombus", *sys.argv[1:]]), remarks=args.remark)
    run = collect(source, merged_config(paths), machine_description(), checkout_commit(), only=args.tables)
    target = Path(args.store)
    earlier = stored_runs(read_json(target)) if args.add and target.exists() else []
    runs = with_run(earlier, run)
    write_json(target, {"runs": runs})
    log.info("wrote %s: %d tables, %d models; %d run(s)", args.store, len(run["tables"]), len(run["models"]), len(runs))
    return 0


def add_paper_report_parser(commands: argparse._SubParsersAction) -> None:
    """Register the `paper-report` subcommand."""
    report = commands.add_parser("paper-report", help=f"keep a paper run's tables and provenance in {STORE_NAME} (RESULTS.md renders it)")
    report.add_argument("--root", default=".", help="the run's working directory (results/tables, results/models, logs)")
    report.add_argument("--config", nargs="+", required=True, help="the run's config files, in the order it laid them")
    report.add_argument("--ran-by", required=True, help="the command that made the run, as RESULTS.md should say")
    report.add_argument("--remark", action="append", default=[],
                        help="what a reader of the figures must know of the run (say, what else ran beside it); repeatable")
    report.add_argument("--tables", nargs="+", default=None, help="only these tables of the config (default: all of them)")
    report.add_argument("--add", action="store_true",
                        help="keep the store's earlier runs (a table this run collects replaces theirs); default: this run alone")
    report.add_argument("--store", default=STORE_NAME, help=f"where to write (default: {STORE_NAME}, beside RESULTS.md)")
    report.set_defaults(func=_cmd_paper_report)
