"""Peak memory and time of every rule of a workflow run, from the `benchmark:` files Snakemake wrote.

Every rule writes `logs/benchmarks/<rule>/<wildcards>.tsv` (Snakemake's own measurement of the job's
process tree: seconds, max_rss in MB, CPU time). This reads them all, and sets each rule's peak beside
the memory request the rule makes on its first attempt (`thrombus.resources`, which the rules read),
so a request that the measured peaks outgrow shows here first.

    .venv/bin/python benchmarks/rule_memory.py logs/benchmarks
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import Figure, render_text  # noqa: E402  (a sibling script, not a package)

from thrombus.resources import PEAK_MB, request_mb  # noqa: E402


@dataclass(frozen=True)
class RuleCost:
    rule: str
    jobs: int
    peak_mb: float
    median_seconds: float
    max_seconds: float


def read_costs(folder: Path) -> list[RuleCost]:
    """One RuleCost per rule folder under `folder`; files without a number (a killed job's) are skipped."""
    costs = []
    for rule_folder in sorted(p for p in folder.iterdir() if p.is_dir()):
        peaks, seconds = [], []
        for path in sorted(rule_folder.rglob("*.tsv")):
            with path.open(newline="") as handle:
                for row in csv.DictReader(handle, delimiter="\t"):
                    try:
                        peaks.append(float(row["max_rss"]))
                        seconds.append(float(row["s"]))
                    except (KeyError, ValueError):
                        continue
        if peaks:
            costs.append(RuleCost(rule_folder.name, len(peaks), max(peaks), statistics.median(seconds), max(seconds)))
    return costs


def figures(folder: Path) -> list[Figure]:
    rows = []
    for cost in read_costs(Path(folder)):
        request = request_mb(cost.rule) if cost.rule in PEAK_MB else None
        rows.append(Figure(
            step=f"rule {cost.rule} ({cost.jobs} jobs)",
            figure=f"peak {cost.peak_mb:.0f} MB; {cost.median_seconds:.1f} s median, {cost.max_seconds:.1f} s max",
            baseline=f"request {request} MB (first attempt)" if request else "request scales with the input",
            ratio=cost.peak_mb / request if request else None,
            target="peak < request" if request else "",
            met=cost.peak_mb < request if request else None,
        ))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, nargs="?", default=Path("logs/benchmarks"))
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        print(f"error: {args.folder} is not a folder of Snakemake benchmark files; run the workflow first", file=sys.stderr)
        return 2
    print(render_text(figures(args.folder)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
