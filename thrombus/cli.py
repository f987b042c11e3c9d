"""The `thrombus` command: one subcommand per workflow step, each registered by its stage's package.

This module only assembles the parsers and turns the user's errors into one clear line. Heavy
libraries are imported inside the subcommand that needs them, so `thrombus --help` and the light steps
start fast (Snakemake pays this start-up once per job).
"""

from __future__ import annotations

import argparse
import errno
import logging
from collections.abc import Callable, Sequence

from thrombus import __version__
from thrombus.errors import user_errors

log = logging.getLogger("thrombus")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thrombus", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"thrombus {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    _add_stage_parsers(commands)
    return parser


def _add_stage_parsers(commands: argparse._SubParsersAction) -> None:
    """Subcommands that live with their stage's package (each registers its own parsers)."""
    from thrombus.sheet_cli import add_sheet_parser
    from thrombus.shipping import add_ship_parser
    from thrombus.convert.cli import add_convert_parsers
    from thrombus.evaluation.cli import add_evaluation_parsers
    from thrombus.inference.calibrate import add_calibrate_parser
    from thrombus.inference.cli import add_predict_parsers
    from thrombus.inference.fold import add_predict_fold_parser
    from thrombus.ladder_cli import add_ladder_parser
    from thrombus.paper_report import add_paper_report_parser
    from thrombus.preprocess.cli import add_preprocess_parsers
    from thrombus.synth.cli import add_synth_parser
    from thrombus.training.cli import add_train_parser

    add_synth_parser(commands)
    add_sheet_parser(commands)
    add_convert_parsers(commands)
    add_preprocess_parsers(commands)
    add_train_parser(commands)
    add_calibrate_parser(commands)
    add_predict_parsers(commands)
    add_predict_fold_parser(commands)
    add_evaluation_parsers(commands)
    add_ladder_parser(commands)
    add_ship_parser(commands)
    add_paper_report_parser(commands)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    handler: Callable[[argparse.Namespace], int] = args.func
    try:
        return handler(args)
    except user_errors() as err:
        log.error("%s", err)
        return 1
    except OSError as err:
        if err.errno not in _FULL_DISK:
            raise
        log.error("%s", _full_disk_message(args, err))
        return 1


# A full disk, an exhausted quota, a file-size limit: the same remedy, and nothing half-written to trust.
_FULL_DISK = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _full_disk_message(args: argparse.Namespace, err: OSError) -> str:
    """Names the step, its subject and the file, because the OS error alone names none of them."""
    subject = ", ".join(f"{key} {getattr(args, key)}" for key in ("center", "subject", "sequence")
                        if getattr(args, key, None))
    where = f" ({subject})" if subject else ""
    target = f" writing {err.filename}" if err.filename else ""
    return (f"thrombus {args.command}{where}: {err.strerror}{target}. Free space (or raise the quota) and rerun;"
            " outputs are written under a temporary name and renamed when complete, so none was left half-written")
