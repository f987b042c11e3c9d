"""Memory requests of the workflow's jobs, from the peaks that the rules' `benchmark:` files measured.

A request far above the peak wastes a cluster's nodes (jobs wait for memory they never use); one
below it gets the job killed. So each rule with a fixed cost asks for its largest measured peak times
HEADROOM, rounded up to 100 MB, and twice that on each retry after an out-of-memory kill. `train`
and `infer` scale with their inputs instead (`workflow/rules/common.smk`).

The peaks are max_rss of Snakemake's benchmark files for a demo run (`logs/benchmarks/<rule>/`);
`benchmarks/rule_memory.py` prints them beside these requests, so a peak that outgrows its request
shows there. Bigger grids than the demo's (e.g. 0.5 mm isotropic references) need a higher figure:
raise it with `--set-resources <rule>:mem_mb=...` or in a profile.
"""

from __future__ import annotations

import math

#: Largest max_rss (MB) measured per rule (see the module docstring for where they come from).
PEAK_MB: dict[str, float] = {
    "convert": 670.0,
    "skullstrip": 2700.0,
    "brainmask": 1300.0,
    "register": 2000.0,
    "harmonise": 1300.0,
    "learn_histograms": 2700.0,
    "qc_center": 670.0,
    "splits": 330.0,
    "evaluate": 1300.0,
    "tables": 1300.0,
}

#: Request = peak x HEADROOM: room for subjects larger than the measured ones.
HEADROOM = 1.5


def request_mb(rule: str, attempt: int = 1) -> int:
    """MB to request for a job of `rule` on its `attempt`-th try (1-based)."""
    if rule not in PEAK_MB:
        raise KeyError(f"no measured peak for rule {rule!r}; add it to thrombus.resources.PEAK_MB")
    return int(math.ceil(PEAK_MB[rule] * HEADROOM / 100.0) * 100) * max(int(attempt), 1)
