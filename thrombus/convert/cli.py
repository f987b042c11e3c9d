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
        ConvertRequest(subject=args.subject, center=args.center, sequence=sequence, dicom_dir=_folder(args, sequence),
                       series=folder, patterns=patterns, derive_adc=args.derive_adc)
        for sequence, folder in series.items()
    ]


def _folder(args: argparse.Namespace, sequence: str) -> Path:
    """The folder a sequence's series is found from: the subject's, or the sequence's own link under --sources."""
    return Path(args.sources) / sequence if args.sources else Path(args.dicom_dir)


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


def add_convert_parsers(commands: argparse._SubParsersAction) -> None:
    """Register the `convert` and `duplicate-scans` subcommands."""
    _add_convert_parser(commands)
    add_duplicates_parser(commands)


def _add_convert_parser(commands: argparse._SubParsersAction) -> None:
    convert = commands.add_parser("convert", help="DICOM series -> NIfTI + scrubbed sidecar for every sequence of one subject")
    convert.add_argument("--subject", required=True)
    convert.add_argument("--center", required=True)
    where = convert.add_mutually_exclusive_group(required=True)
    where.add_argument("--dicom-dir", help="the subject's DICOM folder")
    where.add_argument("--sources", help="a folder with one link per sequence, to its series folder or (for 'auto') "
                                         "the subject's folder; series folders in --series are then relative to the link "
                                         "(the workflow's results/dicom/<center>/<subject>, which keeps source paths out of "
                                         "records and logs)")
    convert.add_argument("--series", required=True,
                         help='JSON {sequence: series folder (absolute or relative to --dicom-dir) or "auto"}')
    convert.add_argument("--patterns", default="", help="JSON {sequence: regex} used for the 'auto' series")
    convert.add_argument("--derive-adc", action=argparse.BooleanOptionalAction, default=True,
                         help="compute ADC from the DWI series when no ADC series exists")
    convert.add_argument("--out-dir", required=True,
                         help="the subject's output folder: <sequence>.nii.gz and <sequence>.json (identifiers scrubbed)")
    convert.add_argument("--record", default=None, help="JSON step record (checksums, versions, QC)")
    convert.set_defaults(func=_cmd_convert)


def _cmd_duplicate_scans(args: argparse.Namespace) -> int:
    from thrombus.convert.duplicates import find_duplicates, write_duplicates

    table = find_duplicates(args.converted, args.labelled)
    write_duplicates(table, args.out)
    log.info("%d group(s) of subjects share a scan among %d conversion folder(s)", len(table), len(args.converted))
    return 0


def add_duplicates_parser(commands: argparse._SubParsersAction) -> None:
    """Register the `duplicate-scans` subcommand."""
    duplicates = commands.add_parser(
        "duplicate-scans", help="subjects whose converted series share a series UID or voxels (one scan, two pseudonyms)"
    )
    duplicates.add_argument("--converted", nargs="+", required=True, help="the subjects' conversion folders")
    duplicates.add_argument("--labelled", nargs="*", default=[], help="subjects with a thrombus label (0 or 1)")
    duplicates.add_argument("--out", required=True, help="TSV: subjects, centers, sequences, evidence, labelled")
    duplicates.set_defaults(func=_cmd_duplicate_scans)
