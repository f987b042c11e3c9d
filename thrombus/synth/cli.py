"""`thrombus synth`: the synthetic multi-center DICOM cohort from a preset."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from thrombus.options import positive_int

log = logging.getLogger("thrombus")


def _cmd_synth(args: argparse.Namespace) -> int:
    from thrombus.synth import generate_cohort

    summary = generate_cohort(preset=args.preset, out_dir=Path(args.out), seed=args.seed, progress=not args.quiet,
                              threads=args.threads, only=args.only)
    log.info("wrote %d subjects of centers %s to %s in %.1f s", summary.n_subjects, ", ".join(summary.centers), summary.out_dir, summary.seconds)
    print(summary.samples_tsv)
    return 0


def add_synth_parser(commands: argparse._SubParsersAction) -> None:
    """Register the `synth` subcommand."""
    synth = commands.add_parser("synth", help="generate the synthetic multi-center DICOM cohort")
    synth.add_argument("--preset", default="demo", help="tiny, demo, paper, or a preset YAML file (default: demo)")
    synth.add_argument("--out", required=True, help="output folder (dicom/, truth/, samples.tsv, qc/)")
    synth.add_argument("--seed", type=int, default=None, help="override the preset's seed")
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    synth.add_argument("--threads", type=positive_int, default=1, help="worker processes (outputs are identical whatever the count)")
    synth.add_argument("--only", nargs="+", default=None, metavar="SUBJECT",
                       help="generate only these subjects, each exactly as in the whole cohort (e.g. B008)")
    synth.set_defaults(func=_cmd_synth)
