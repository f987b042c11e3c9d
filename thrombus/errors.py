"""What the command line treats as the user's mistake, and where a failed step leaves its reason."""

from __future__ import annotations


class UserError(Exception):
    """Base of the errors caused by the user's data or config (a sheet, a series, a volume, a conversion).

    The stages' error classes derive from it beside their builtin base, so this module needs to know none
    of them: a base module that imported every stage would close an import circle with each.
    """


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by the user's data or config: reported as one clear line, without a traceback."""
    return (UserError, FileNotFoundError)


def write_failure(record: str | None, step: str, subject: str, center: str, err: BaseException) -> None:
    """Leave the failure in the job's JSON log, so a table of failures can be built from the logs."""
    if record:
        from thrombus.io import write_json

        write_json(record, {"step": step, "subject": subject, "center": center, "error": str(err), "error_type": type(err).__name__})
