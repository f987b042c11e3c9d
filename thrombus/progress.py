"""Progress bars that suit both a terminal and a job's log file."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


def progress(iterable: Any = None, **options: Any) -> tqdm:
    """A tqdm bar: lively on a terminal, one line every 30 s in a log file (a Snakemake job's stderr).

    Redrawn a few times a second into a file, a bar buries the log's real messages under thousands of
    carriage-return updates; every 30 s it still shows that a long job is alive and how far it is.
    """
    options.setdefault("mininterval", 0.5 if sys.stderr.isatty() else 30.0)
    options.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **options)
