"""Memory requests of the workflow's jobs, from the peaks that the rules' `benchmark:` files measured.

A request far above the peak wastes a cluster's nodes (jobs wait for memory they never use); one
below it gets the job killed. So each rule with a fixed cost asks for its largest measured peak times
HEADROOM, rounded up to 100 MB (at least FLOOR_MB), and twice that on each retry after an out-of-memory kill. `train`
and `infer` scale with their inputs instead (`workflow/rules/common.smk`).

The peaks are max_rss of Snakemake's benchmark files for a demo run (`logs/benchmarks/<rule>/`);
`benchmarks/rule_memory.py` prints them beside these requests, so a peak that outgrows its request
shows there. Bigger grids than the demo's (e.g. 0.5 mm isotropic references) need a higher figure:
raise it with `--set-resources <rule>:mem_mb=...` or in a profile.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable

#: Largest max_rss (MB) measured per rule, 2026-12-02: one demo subject (190 x 220 x 72 SWI reference,
#: `benchmarks/bench_preprocess.py`, the rule's command bare and through Snakemake) and the tiny cohort's
#: whole run (`tiny_run` in the tests); the larger of the two. Rules not yet measured at demo size keep
#: a conservative figure, marked so.
PEAK_MB: dict[str, float] = {
    "convert": 135.0,            # one subject's 4 sequences, demo run (AMD, 2026-12-02 13:05); FLOOR_MB decides
    "skullstrip": 2230.0,        # 2230 MB: tiny_run's N001 in CI (2-core runner, 2026-12-05); 1442 MB in the demo run above
    "brainmask": 370.0,
    "register": 540.0,
    "harmonise": 300.0,
    "learn_histograms": 2700.0,  # not measured (histogram method only): conservative
    "qc_center": 80.0,
    "duplicate_scans": 80.0,
    "measure": 540.0,            # not measured: an ANTs affine of two brain masks, like register
    "measurements": 80.0,
    "prediction_figure": 400.0,  # not measured: one stack and mask in memory, matplotlib; conservative
    "dicom_seg": 300.0,
    "bids_description": 80.0,    # not measured: writes one JSON
    "bids_subject": 80.0,        # not measured: copies two files and writes JSON, like qc_center
    "splits": 70.0,
    "evaluate": 210.0,
    "tables": 1300.0,            # 155 MB on the tiny cohort; not measured at demo size: conservative
}

#: Request = peak x HEADROOM: room for subjects larger than the measured ones.
HEADROOM = 1.5

#: No request below this: Snakemake samples a job's memory periodically, and a job of a second may be
#: measured before its interpreter has loaded anything.
FLOOR_MB = 500


def request_mb(rule: str, attempt: int = 1) -> int:
    """MB to request for a job of `rule` on its `attempt`-th try (1-based)."""
    if rule not in PEAK_MB:
        raise KeyError(f"no measured peak for rule {rule!r}; add it to thrombus.resources.PEAK_MB")
    first = max(int(math.ceil(PEAK_MB[rule] * HEADROOM / 100.0) * 100), FLOOR_MB)
    return first * max(int(attempt), 1)


def files_mb(paths: Iterable[str | os.PathLike[str]]) -> float:
    """Total size in MiB of those of `paths` that exist (a file not yet made counts 0).

    Replaces Snakemake's `input.size_mb` for jobs with thousands of inputs (`train`, `infer` read
    every labelled stack): that property sends each file through Snakemake's storage layer, about
    0.1 s per job of 2000 inputs, which at 1000 subjects was 7% of the whole DAG build; a stat per
    local file costs about 1% of that. Snakemake evaluates the request again once the inputs exist.
    """
    total = 0
    for path in paths:
        try:
            total += os.stat(path).st_size
        except FileNotFoundError:
            continue
    return total / (1024 * 1024)
