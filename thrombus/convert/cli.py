"""`thrombus convert`: the command-line side of the `convert` rule (one subject's sequences, DICOM -> NIfTI)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from thrombus import SEQUENCES
from thrombus.errors import user_errors, write_failure

if TYPE_CHECKING:
    from thrombus.convert import ConvertRequest

log = logging.getLogger("thrombus")


def _convert_requests(args: argparse.Namespace) -> list[ConvertRequest]:
    """One request per sequence of `--series` ({sequence: folder or 'auto'}), in the order given."""
    from thrombus.convert import ConvertRequest
    from thrombus.samples import ConfigError

    try:
        series = json.loads(args.series)
    except json.JSONDecodeError as err:
        raise ConfigError(f"center {args.center}, subject {args.subject}: --series is not JSON ({err})") from None
    if not isinstance(series, dict) or not series or set(series) - set(SEQUENCES):
        raise ConfigError(f"center {args.center}, subject {args.subject}: --series must map sequences of "
                          f"{', '.join(SEQUENCES)} to series folders or 'auto', got {args.series!r}")
    patterns = json.loads(args.patterns) if args.patterns else {}
    return [
        ConvertRequest(subject=args.subject, center=args.center, sequence=sequence, dicom_dir=Path(args.dicom_dir),
                       series=folder, patterns=patterns, derive_adc=args.derive_adc)
        for sequence, folder in series.items()
    ]


def _cmd_convert(args: argparse.Namespace) -> int:
    from thrombus.convert import convert_subject

    try:
        record = convert_subject(_convert_requests(args), args.out_dir, args.record)
    except user_errors() as err:
        write_failure(args.record, "convert", args.subject, args.center, err)
        raise
    log.info("center %s, subject %s: %s converted in %.1f s", args.center, args.subject,
             ", ".join(record["outputs"]), record["timing"]["seconds"])
    return 0


def add_convert_parser(commands: argparse._SubParsersAction) -> None:
    """Register the `convert` subcommand."""
    convert = commands.add_parser("convert", help="DICOM series -> NIfTI + scrubbed sidecar for every sequence of one subject")
    convert.add_argument("--subject", required=True)
    convert.add_argument("--center", required=True)
    convert.add_argument("--dicom-dir", required=True, help="the subject's DICOM folder")
    convert.add_argument("--series", required=True,
                         help='JSON {sequence: series folder (absolute or relative to --dicom-dir) or "auto"}')
    convert.add_argument("--patterns", default="", help="JSON {sequence: regex} used for the 'auto' series")
    convert.add_argument("--derive-adc", action=argparse.BooleanOptionalAction, default=True,
                         help="compute ADC from the DWI series when no ADC series exists")
    convert.add_argument("--out-dir", required=True,
                         help="the subject's output folder: <sequence>.nii.gz and <sequence>.json (identifiers scrubbed)")
    convert.add_argument("--record", default=None, help="JSON step record (checksums, versions, QC)")
    convert.set_defaults(func=_cmd_convert)
