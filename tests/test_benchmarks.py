"""The benchmark scripts still run against the package they measure.

They are not part of the suite's figures (BENCHMARKS.md is made by `make bench`), but a signature change
in the code they call broke the training section silently once (it printed FAILED in BENCHMARKS.md); these
run their measuring functions on tiny inputs so that such a change fails here instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench_training():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_training

        yield bench_training
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_the_training_benchmark_measures_the_loader_and_a_step(bench_training) -> None:  # type: ignore[no-untyped-def]
    from thrombus.model import ModelConfig
    from thrombus.training.data import AugmentOptions
    from thrombus.training.options import TrainOptions

    cases = bench_training.synthetic_cases(2, (8, 40, 40))
    options = TrainOptions(batch_size=2, slab_depth=3, patch_size=(32, 32), augmentation=AugmentOptions(enabled=False))
    assert bench_training.loader_rate(cases, options, 2) > 0
    tiny = ModelConfig(base_width=4, depth=2, max_width=16, stem_width=4, fusion_key_width=4, norm_groups=2)
    rate = bench_training.step_rate(cases, tiny, options, 1, "cpu", 1)
    assert rate["slabs_per_second"] > 0 and rate["seconds_per_iteration"] > 0
