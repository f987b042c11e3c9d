"""`thrombus sheet --bids DIR`: the parser only; the BIDS walk (`thrombus.bids_sheet`) and pandas load when
the command runs, so that every other step's start-up stays light."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def _cmd_sheet(args: argparse.Namespace) -> int:
    from thrombus import SEQUENCES
    from thrombus.bids_sheet import BidsError, sheet_from_bids, write_sheet

    out = Path(args.out)
    if out.exists() and not args.force:
        raise BidsError(f"{out} exists; pass --force to replace it")
    sheet = sheet_from_bids(args.bids, args.center, args.center_column, relative_to=out.parent)
    write_sheet(sheet, out)
    counts = ", ".join(f"{s} {int((sheet[s] != '').sum())}" for s in SEQUENCES if (sheet[s] != "").any())
    log.info("%s: %d subject(s) from %s (%s); set `samples: %s` in the config", out, len(sheet), args.bids, counts, out)
    return 0


def add_sheet_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("sheet", help="write a sample sheet from a BIDS dataset (NIfTI inputs)")
    parser.add_argument("--bids", required=True, help="BIDS dataset folder (or one with rawdata/)")
    parser.add_argument("--center", help="center of every subject")
    parser.add_argument("--center-column", help="participants.tsv column naming each subject's center")
    parser.add_argument("--out", required=True, help="sample sheet to write, e.g. config/samples.tsv")
    parser.add_argument("--force", action="store_true", help="replace an existing sheet")
    parser.set_defaults(func=_cmd_sheet)
