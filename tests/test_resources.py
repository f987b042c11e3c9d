"""Memory requests: every fixed-cost rule asks for its measured peak with headroom, and writes its benchmark.

The request table (`thrombus.resources`) and the rules must agree: a rule that asks for a peak nobody
measured, or a rule without a `benchmark:` file, would leave the profile's requests unchecked.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from thrombus.resources import FLOOR_MB, HEADROOM, PEAK_MB, files_mb, request_mb

RULES = Path(__file__).resolve().parents[1] / "workflow" / "rules"


def rule_blocks() -> dict[str, str]:
    """Rule name -> its text, for every rule and checkpoint of workflow/rules/*.smk."""
    blocks = {}
    for path in sorted(RULES.glob("*.smk")):
        parts = re.split(r"^(?:rule|checkpoint) (\w+):\n", path.read_text(), flags=re.MULTILINE)
        blocks.update(dict(zip(parts[1::2], parts[2::2])))
    return blocks


def test_requests_are_the_peak_with_headroom_rounded_up_and_doubled_on_retry() -> None:
    for rule, peak in PEAK_MB.items():
        first = request_mb(rule)
        assert first % 100 == 0 and first >= FLOOR_MB, rule
        assert first == FLOOR_MB or peak * HEADROOM <= first < peak * HEADROOM + 100, rule
        assert request_mb(rule, attempt=2) == 2 * first and request_mb(rule, attempt=3) == 3 * first


def test_a_rule_without_a_measured_peak_is_named() -> None:
    with pytest.raises(KeyError, match="no measured peak for rule 'nonesuch'"):
        request_mb("nonesuch")


def test_every_rule_benchmarks_itself_and_fixed_costs_come_from_the_table() -> None:
    blocks = rule_blocks()
    assert len(blocks) >= 12, sorted(blocks)
    for rule, text in blocks.items():
        assert re.search(rf'benchmark:\n\s+"logs/benchmarks/{rule}/[^"]+\.tsv"', text), f"rule {rule} has no benchmark file"
        fixed = re.search(r'mem_mb=mem_mb_for\("(\w+)"\)', text)
        if fixed:
            assert fixed.group(1) == rule, f"rule {rule} asks for the peak of {fixed.group(1)}"
            assert rule in PEAK_MB, f"rule {rule}: no measured peak"
        else:
            assert re.search(r"mem_mb=\w+_mem_mb,", text), f"rule {rule}: memory neither measured nor scaled with input"
    assert set(PEAK_MB) <= set(blocks), set(PEAK_MB) - set(blocks)


def test_files_mb_sums_the_files_that_exist(tmp_path: Path) -> None:
    """The train/infer requests read input sizes with a stat per file; a file not yet made counts 0,
    as in Snakemake's own `input.size_mb`."""
    (tmp_path / "a.nii.gz").write_bytes(b"\0" * (1024 * 1024))
    (tmp_path / "b.json").write_bytes(b"\0" * (512 * 1024))
    paths = [tmp_path / "a.nii.gz", str(tmp_path / "b.json"), tmp_path / "not_yet.nii.gz"]
    assert files_mb(paths) == 1.5
    assert files_mb([]) == 0.0
