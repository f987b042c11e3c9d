"""Time to quality: CPU minutes until the monocentric rung of the ladder reaches validation Dice 0.5,
the current recipe against the recipe of main before issue 17 (`before` of config/ladder.yaml), both
trained in this run on the same subjects, seed and threads.

Needs the paper cohort's preprocessed stacks (`make results` makes them); the section is reported as
failed, saying so, when they are missing. About 25 minutes on 2 cores.

    .venv/bin/python benchmarks/bench_quality.py --root . [--new clot_slabs]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import REPO, Figure, render_text  # noqa: E402

#: The ladder recipe the workflow's config now trains with.
CURRENT = "batch_slab_dice"
BASELINE = "before"


def measure(root: Path, threads: int, current: str = CURRENT) -> dict[str, object]:
    from thrombus.ladder import load_ladder_config, run_ladder

    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    settings = load_ladder_config(REPO / "config" / "ladder.yaml", base)
    settings["samples"] = str(root / settings["samples"])
    if not Path(settings["samples"]).exists():
        raise FileNotFoundError(f"{settings['samples']} is missing: run `make results` (or the paper cohort's preprocess) first")
    settings["rungs"] = ["monocentric"]
    settings["recipes"] = {name: settings["recipes"][name] for name in (BASELINE, current)}
    with tempfile.TemporaryDirectory() as out:
        results = run_ladder(settings, root, Path(out), int(base["seed"]), threads)
    return {r.recipe: r for r in results}


def figures(root: Path, threads: int, current: str = CURRENT) -> list[Figure]:
    results = measure(root, threads, current)
    old, new = results[BASELINE], results[current]
    old_minutes, new_minutes = old.minutes_to(0.5), new.minutes_to(0.5)
    last_old, last_new = old.points[-1], new.points[-1]
    rows = [
        Figure(
            f"CPU minutes to validation Dice 0.5, monocentric rung ({current})",
            f"{new_minutes:.1f} min" if new_minutes is not None else f"not reached in {last_new.cpu_seconds / 60:.1f} min",
            f"{old_minutes:.1f} min ({BASELINE})" if old_minutes is not None
            else f"not reached in {last_old.cpu_seconds / 60:.1f} min ({BASELINE})",
            ratio=(new_minutes / old_minutes) if new_minutes is not None and old_minutes else None,
            target="reaches Dice 0.5",
            met=new_minutes is not None,
        ),
        Figure(
            f"Dice and detection after {last_new.iteration} iterations ({current})",
            f"Dice {last_new.dice:.2f}, {last_new.detected}/{last_new.positives} detected",
            f"Dice {last_old.dice:.2f}, {last_old.detected}/{last_old.positives} ({BASELINE})",
            ratio=(last_new.dice / last_old.dice) if last_old.dice else None,
        ),
    ]
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO, help="workflow folder holding the paper cohort's results/harmonise")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new", default=CURRENT, help="ladder recipe to compare with the old one")
    args = parser.parse_args()
    print(render_text(figures(args.root, args.threads, args.new)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
