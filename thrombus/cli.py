"""The `thrombus` command: one subcommand per workflow step, each a thin wrapper over a module.

Heavy libraries are imported inside the subcommand that needs them, so `thrombus --help` and the
light steps start fast (Snakemake pays this start-up once per job).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from thrombus import SEQUENCES, __version__

log = logging.getLogger("thrombus")

def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by the user's data or config: reported as one clear line, without a traceback."""
    from thrombus.convert import ConversionError, SeriesError
    from thrombus.nifti import VolumeError
    from thrombus.samples import ConfigError, SampleSheetError

    return (ConversionError, SeriesError, VolumeError, SampleSheetError, ConfigError, FileNotFoundError)


def _cmd_synth(args: argparse.Namespace) -> int:
    from thrombus.synth import generate_cohort

    summary = generate_cohort(preset=args.preset, out_dir=Path(args.out), seed=args.seed, progress=not args.quiet)
    log.info("wrote %d subjects of centers %s to %s in %.1f s", summary.n_subjects, ", ".join(summary.centers), summary.out_dir, summary.seconds)
    print(summary.samples_tsv)
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from thrombus.convert import ConvertRequest, convert_sequence

    request = ConvertRequest(
        subject=args.subject, center=args.center, sequence=args.sequence, dicom_dir=Path(args.dicom_dir),
        series=args.series, patterns=json.loads(args.patterns) if args.patterns else {}, derive_adc=args.derive_adc,
    )
    try:
        record = convert_sequence(request, args.out, args.sidecar, args.record)
    except _user_errors() as err:
        _write_failure(args.record, "convert", args.subject, args.center, err)
        raise
    log.info("%s: %s %s", request.what, record["outputs"]["shape"], record["qc"]["note"])
    return 0


def _write_failure(record: str | None, step: str, subject: str, center: str, err: BaseException) -> None:
    """Leave the failure in the job's JSON log, so a table of failures can be built from the logs."""
    if record:
        from thrombus.io import write_json

        write_json(record, {"step": step, "subject": subject, "center": center, "error": str(err), "error_type": type(err).__name__})


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thrombus", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"thrombus {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    synth = commands.add_parser("synth", help="generate the synthetic multi-center DICOM cohort")
    synth.add_argument("--preset", default="demo", help="tiny, demo, or a preset YAML file (default: demo)")
    synth.add_argument("--out", required=True, help="output folder (dicom/, truth/, samples.tsv, qc/)")
    synth.add_argument("--seed", type=int, default=None, help="override the preset's seed")
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    synth.set_defaults(func=_cmd_synth)

    convert = commands.add_parser("convert", help="DICOM series -> NIfTI + scrubbed sidecar for one subject and sequence")
    convert.add_argument("--subject", required=True)
    convert.add_argument("--center", required=True)
    convert.add_argument("--sequence", required=True, choices=SEQUENCES)
    convert.add_argument("--dicom-dir", required=True, help="the subject's DICOM folder")
    convert.add_argument("--series", default="auto", help="series folder (absolute or relative to --dicom-dir), or 'auto'")
    convert.add_argument("--patterns", default="", help="JSON {sequence: regex} used with --series auto")
    convert.add_argument("--derive-adc", action=argparse.BooleanOptionalAction, default=True,
                         help="compute ADC from the DWI series when no ADC series exists")
    convert.add_argument("--out", required=True, help="output .nii.gz")
    convert.add_argument("--sidecar", required=True, help="output JSON sidecar (identifiers scrubbed)")
    convert.add_argument("--record", default=None, help="JSON step record (checksums, versions, QC)")
    convert.set_defaults(func=_cmd_convert)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    handler: Callable[[argparse.Namespace], int] = args.func
    try:
        return handler(args)
    except _user_errors() as err:
        log.error("%s", err)
        return 1
