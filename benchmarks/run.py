"""Every benchmark of the project in one run: prints the table and writes it, with the machine, to BENCHMARKS.md.

Sections (each a sibling script that also runs alone, with more detail):

* skull stripping: our HD-BET against the stock package on a real head (`bench_skullstrip.py`);
* preprocessing: each step's seconds, peak memory and share of one subject, and one subject through
  Snakemake against the same commands run bare (`bench_preprocess.py`);
* scale: the DAG of a generated 1000 x 5 sheet, per-job overhead, start-up and imports (`bench_dag.py`);
* inference: one subject, ours against MONAI's sliding-window inference (`bench_inference.py`);
* training: loader against step, UpAttLLSTM against MONAI's AttentionUnet (`bench_training.py`);
* time to quality: CPU minutes to Dice 0.5 on the ladder's monocentric rung, the current training
  recipe against the one before issue 17 (`bench_quality.py`; needs the paper cohort's stacks, about
  25 minutes; left out by `--quick`);
* per-rule peak memory of a workflow run, from Snakemake's `benchmark:` files (`rule_memory.py`),
  when `--rule-benchmarks` names a run's `benchmarks/` folder.

A section that fails is reported as failed in the table and the others still run. `--quick` leaves out
the minutes-long parts (the stock HD-BET run, the registration backends' comparison, the 1000-subject
DAG: 100 x 5 instead).

    .venv/bin/python benchmarks/run.py              # or: make bench
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_dag  # noqa: E402  (sibling scripts, not a package)
import bench_inference  # noqa: E402
import bench_preprocess  # noqa: E402
import bench_quality  # noqa: E402
import bench_skullstrip  # noqa: E402
import bench_training  # noqa: E402
import rule_memory  # noqa: E402
from figures import REPO, Figure, render_text, write_markdown  # noqa: E402


def sections(args: argparse.Namespace) -> dict[str, Callable[[], list[Figure]]]:
    subjects = 100 if args.quick else args.subjects
    chosen: dict[str, Callable[[], list[Figure]]] = {
        "Skull stripping": lambda: bench_skullstrip.figures(args.threads, repeats=1 if args.quick else 3),
        # --quick: ANTs alone, so the registration backends' comparison (about 8 minutes) is left out
        "Preprocessing of one subject": lambda: bench_preprocess.figures(args.threads, args.cohort, ("ants",) if args.quick else None),
        "Scale": lambda: bench_dag.figures(subjects, args.centers, args.jobs),
        "Inference": lambda: bench_inference.figures(args.threads, args.stack),
        "Training": lambda: bench_training.figures_of(bench_training.measure(args.threads, 5, 40)),
        "Time to quality": lambda: bench_quality.figures(args.paper_root, args.threads),
    }
    if args.quick:
        chosen.pop("Skull stripping")
        chosen.pop("Time to quality")
    if args.rule_benchmarks:
        chosen["Peak memory per rule"] = lambda: rule_memory.figures(args.rule_benchmarks)
    if args.only:
        chosen = {name: call for name, call in chosen.items() if any(o.lower() in name.lower() for o in args.only)}
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="threads/cores of every measurement (default 2)")
    parser.add_argument("--subjects", type=int, default=1000, help="subjects of the generated sheet (scale)")
    parser.add_argument("--centers", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=40, help="jobs of the per-job overhead run")
    parser.add_argument("--cohort", type=Path, default=None, help="a generated cohort for the preprocessing section")
    parser.add_argument("--stack", type=Path, default=None, help="a harmonised stack for the inference section")
    parser.add_argument("--paper-root", type=Path, default=REPO,
                        help="workflow folder with the paper cohort's stacks (time to quality; `make results` makes them)")
    parser.add_argument("--rule-benchmarks", type=Path, default=None,
                        help="a workflow run's benchmarks/ folder: adds the peak memory of every rule")
    parser.add_argument("--only", nargs="+", default=None, help="sections whose title contains one of these words")
    parser.add_argument("--quick", action="store_true", help="leave out the stock HD-BET run; 100 x 5 DAG")
    parser.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    args = parser.parse_args(argv)

    results: dict[str, list[Figure]] = {}
    notes: list[str] = []
    for title, call in sections(args).items():
        print(f"== {title}", flush=True)
        started = time.perf_counter()
        try:
            results[title] = call()
        except Exception as error:  # one failed section must not lose the others' figures
            traceback.print_exc()
            results[title] = [Figure(title, "FAILED", f"{type(error).__name__}: {str(error).splitlines()[0][:200]}")]
        notes.append(f"{title}: measured in {time.perf_counter() - started:.0f} s")
        print(render_text(results[title]), flush=True)
    command = "python benchmarks/run.py" + (" " + shlex.join(argv if argv is not None else sys.argv[1:]) if (argv or sys.argv[1:]) else "")
    write_markdown(args.out, results, command, notes)
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
