"""Thread counts: every stage sets them through `thrombus.device.set_threads`, which first has every thread
flush subnormals (the reason is in `flush_subnormals`) and takes MKL's vector
math out of the race of its first parallel call (the reason is in `warm_vector_math`)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "thrombus"

# A fresh process: `set_threads(2)`, then a first exp over a tensor torch splits between the two threads,
# compared with the same exp computed on one thread afterwards.
_FIRST_PARALLEL_EXP = """
import torch
from thrombus.device import set_threads
set_threads(2)
x = torch.linspace(-6.0, 0.0, 8192)
first = torch.exp(x)
torch.set_num_threads(1)
print(int(torch.equal(first, torch.exp(x))))
"""


def test_only_the_device_module_sets_torch_threads() -> None:
    calls = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr == "set_num_threads":
                calls.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert calls and all(call.startswith("device.py:") for call in calls), calls


def test_set_threads_sets_the_count() -> None:
    import torch

    from thrombus.device import set_threads, torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
        set_threads(2)
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before


@pytest.mark.slow
def test_a_first_parallel_exp_in_fresh_processes_equals_its_one_thread_value() -> None:
    """Without the warm-up, 3-15% of fresh processes got the second thread's half wrong (torch 2.13.0, an
    AVX-512 Xeon, 2 cores): 20 processes catch that most of the time, never with it."""
    wrong = 0
    for _ in range(20):
        done = subprocess.run([sys.executable, "-c", _FIRST_PARALLEL_EXP], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        wrong += done.stdout.strip() != "1"
    assert wrong == 0, f"{wrong} of 20 fresh processes computed their first parallel exp differently"


# A fresh process: `set_threads(2)`, then a product whose every value is subnormal (1e-40), split by torch
# between its two threads; counts the values left non-zero in each half.
_SUBNORMAL_PRODUCT = """
import torch
from thrombus.device import set_threads
set_threads(2)
product = torch.full((1 << 20,), 1e-20) * 1e-20
half = product.numel() // 2
print(int((product[:half] != 0).sum()), int((product[half:] != 0).sum()))
"""


def test_every_thread_flushes_subnormals_after_set_threads() -> None:
    """Subnormal operands made a fine-tuning step about twice as slow (`flush_subnormals`). The flag is per
    thread: set after torch started its pool, it left the second thread's half of such a product
    subnormal, so this runs in a fresh process, where `set_threads` is the first call into torch."""
    done = subprocess.run([sys.executable, "-c", _SUBNORMAL_PRODUCT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["0", "0"], done.stdout
