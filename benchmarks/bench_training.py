"""Benchmark: does the slab loader keep up with training, and what do UpAttLLSTM and MONAI's AttentionUnet cost?

1. Loader against training step, in slabs per second: the loader alone (`SlabDataset` with MONAI
   augmentation, batched by the DataLoader as in training, in the main process) against the training
   step alone (`Trainer.step`: GMD, forward, Dice + BCE, backward, optimiser) on the same settings. The
   loader must deliver at least 3x what the step consumes.
2. UpAttLLSTM against MONAI's AttentionUnet (same widths and depth) on the same input: training-step
   throughput and peak memory. On CPU each model runs in its own child process and the peak is that
   child's high-water RSS minus its RSS before the model was built; on CUDA (bf16 autocast) the peak is
   torch's maximum allocated memory, and the batch is the largest power of two under 8 GB. On CPU the
   two models take turns, three times each, and each one's median run is compared.

Data are demo-sized synthetic cases built in memory (the loader's speed does not depend on where the
stacks came from). Results go to stdout and, with --out, to a JSON file.

    .venv/bin/python benchmarks/bench_training.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from thrombus.model import ModelConfig, build_model, count_parameters

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import Figure, memory_gib, render_text, run_isolated  # noqa: E402  (a sibling script, not a package)
from thrombus.training.data import AugmentOptions, Case
from thrombus.device import autocast, set_threads
from thrombus.training.optim import make_loss
from thrombus.training.options import TrainOptions
from thrombus.training.trainer import Trainer, TrainRun, batches, slab_dataset

GIB = 1024**3


def synthetic_cases(count: int, shape: tuple[int, int, int], seed: int = 0) -> list[Case]:
    """Demo-sized cases in memory: noise in an ellipsoid brain, a small thrombus in every other case."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij"))
    brain = (grid**2).sum(axis=0) < 1.0
    cases = []
    for index in range(count):
        image = rng.normal(size=(4, *shape)).astype(np.float32) * brain
        label = np.zeros(shape, dtype=np.uint8)
        if index % 2 == 0:
            z, x, y = shape[0] // 2, shape[1] // 2 + 10, shape[2] // 2 - 20
            label[z - 3 : z + 3, x : x + 3, y : y + 4] = 1
        cases.append(Case(
            subject=f"S{index:03d}", center="X", image=torch.from_numpy(image), label=torch.from_numpy(label),
            brain=torch.from_numpy(brain), availability=torch.ones(4), foreground=np.argwhere(label > 0), label_outside=0,
        ))
    return cases


def make_run(cases: list[Case], model: ModelConfig, options: TrainOptions, threads: int, device: str, out: Path) -> TrainRun:
    return TrainRun(train_cases=cases, val_cases=[], model=model, options=options, card={}, out_dir=out,
                    seed=1, threads=threads, device=device, progress=False)


def loader_rate(cases: list[Case], options: TrainOptions, batches_to_time: int) -> float:
    """Slabs per second of the training loader alone (augmented, collated, in the main process)."""
    run = make_run(cases, ModelConfig(), options, 1, "cpu", Path("."))
    dataset = slab_dataset(run)
    list(batches(dataset, run, 0, 2, torch.device("cpu")))  # warm-up: MONAI's imports and first calls
    started = time.perf_counter()
    count = sum(batch["image"].shape[0] for batch in batches(dataset, run, 0, batches_to_time, torch.device("cpu")))
    return count / (time.perf_counter() - started)


def step_rate(cases: list[Case], model: ModelConfig, options: TrainOptions, threads: int, device: str, steps: int) -> dict[str, float]:
    """Slabs per second and seconds per iteration of `Trainer.step`, batches prepared beforehand."""
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(make_run(cases, model, options, threads, device, Path(out)))
        prepared = list(batches(slab_dataset(trainer.run), trainer.run, 0, steps + 2, trainer.device))
        trainer.step(prepared[0])
        trainer.step(prepared[1])
        _synchronise(trainer.device)
        started = time.perf_counter()
        for batch in prepared[2:]:
            trainer.step(batch)
        _synchronise(trainer.device)
        seconds = (time.perf_counter() - started) / steps
    return {"seconds_per_iteration": seconds, "slabs_per_second": options.batch_size / seconds}


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def model_step_cost(architecture: str, shape: tuple[int, ...], threads: int, device_name: str, steps: int) -> dict[str, Any]:
    """Training-step throughput and peak memory of one architecture on random slabs of `shape`."""
    set_threads(threads)  # as every stage of the package: subnormals flushed on every thread
    torch.manual_seed(0)
    device = torch.device(device_name)
    before = memory_gib("VmRSS")
    model = build_model(ModelConfig(architecture=architecture)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = make_loss()
    x = torch.randn(shape, device=device)
    availability = torch.ones(shape[0], shape[1], device=device)
    target = (torch.rand(shape[0], 1, *shape[2:], device=device) > 0.995).float()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step() -> None:
        with autocast(device):
            logits = model(x, availability)
        loss = loss_fn(logits.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    _synchronise(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    _synchronise(device)
    seconds = (time.perf_counter() - started) / steps
    peak = torch.cuda.max_memory_allocated() / GIB if device.type == "cuda" else memory_gib("VmHWM") - before
    return {
        "architecture": architecture, "device": device_name, "input": list(shape), "parameters": count_parameters(model),
        "seconds_per_step": round(seconds, 4), "slabs_per_second": round(shape[0] / seconds, 2), "peak_gib": round(peak, 3),
        "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
    }


def fine_tune_step_cost(flush: bool, threads: int, steps: int, shipped: str = "paper_loco_c") -> dict[str, Any]:
    """Seconds per `Trainer.step` of a training that starts from a shipped model, as `make demo` does.

    A trained network's deep gradients (and Adam's second moments) fall below float32's smallest normal
    value, where x86 cores compute slowly; `device.set_threads` has every thread flush them to zero.
    With `flush` False this child keeps them, as training did before, for the comparison.
    """
    import dataclasses

    import thrombus.device as device
    from thrombus.training.pretrained import initial_weights, shipped_card

    if not flush:
        device.flush_subnormals = lambda: None  # this child only: the baseline, subnormals computed
    card = shipped_card(shipped)
    model = ModelConfig.from_mapping(card["model"])
    start = initial_weights(shipped, model, card["harmonise"])
    cases = synthetic_cases(6, (60, 160, 190))
    with tempfile.TemporaryDirectory() as out:
        run = dataclasses.replace(make_run(cases, model, TrainOptions(), threads, "cpu", Path(out)), initial_state=start.state)
        trainer = Trainer(run)
        prepared = list(batches(slab_dataset(trainer.run), trainer.run, 0, steps + 2, trainer.device))
        trainer.step(prepared[0])
        trainer.step(prepared[1])
        times = []
        for batch in prepared[2:]:
            started = time.perf_counter()
            trainer.step(batch)
            times.append(time.perf_counter() - started)
    return {"flush": flush, "seconds_per_step": round(float(np.median(times)), 4), "steps": steps, "shipped": shipped}


def fine_tune_costs(threads: int, steps: int, rounds: int) -> dict[str, float]:
    """Median step of the fine-tuning with subnormals flushed and kept, each child in turn (`rounds` each)."""
    runs: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(rounds):
        for flush in (True, False):
            runs[flush].append(run_isolated(fine_tune_step_cost, flush, threads, steps)["seconds_per_step"])
    return {"flushed_seconds_per_step": float(np.median(runs[True])), "kept_seconds_per_step": float(np.median(runs[False])),
            "rounds": rounds, "steps": steps}


def _forward_backward_ms(part: Any, shapes: list[tuple[int, ...]], repeats: int) -> float:
    """Median milliseconds of one forward and backward pass of `part` on random inputs of `shapes`."""
    inputs = [torch.randn(shape, requires_grad=True) for shape in shapes]
    times = []
    for _ in range(repeats + 2):  # the first two warm up the allocator and oneDNN's kernel choice
        started = time.perf_counter()
        part(*inputs).sum().backward()
        times.append(time.perf_counter() - started)
    return 1000.0 * float(np.median(times[2:]))


def part_costs(shape: tuple[int, ...], threads: int, repeats: int = 7) -> dict[str, float]:
    """Milliseconds of forward + backward of each part of UpAttLLSTM, on what that part sees in a step on `shape`.

    Says where the time goes that MONAI's AttentionUnet (a plain U-Net with gates) does not spend: the
    per-sequence stems and the fusion at full resolution, the slice recurrence at the bottleneck.
    """
    set_threads(threads)  # as every stage of the package: subnormals flushed on every thread
    torch.manual_seed(0)
    config = ModelConfig()
    model = build_model(config)
    batch, channels, depth, height, width = shape
    slices, widths = batch * depth, config.widths
    size = [(height >> level, width >> level) for level in range(config.depth + 1)]
    availability = torch.ones(slices, channels)
    costs = {
        "per-sequence stems": _forward_backward_ms(model.stems, [(slices, channels, *size[0])], repeats),
        "attention fusion": _forward_backward_ms(lambda streams: model.fusion(streams, availability),
                                                 [(slices, channels, config.stem_width, *size[0])], repeats),
        "slice ConvLSTM": _forward_backward_ms(lambda x: model.lstms[str(config.depth)](x, depth),
                                               [(slices, widths[-1], *size[-1])], repeats),
        "skip attention gates": sum(
            _forward_backward_ms(model.gates[level], [(slices, widths[level], *size[level]), (slices, widths[level + 1], *size[level + 1])], repeats)
            for level in range(config.depth)),
    }
    encoder_inputs = [config.stem_width, *widths[:-1]]
    costs["U-Net encoder and decoder"] = sum(
        [_forward_backward_ms(block, [(slices, encoder_inputs[level], *size[max(level - 1, 0)])], repeats)
         for level, block in enumerate(model.encoder)]
        + [_forward_backward_ms(model.upsamples[level], [(slices, widths[level + 1], *size[level + 1])], repeats)
           + _forward_backward_ms(model.decoder[level], [(slices, 2 * widths[level], *size[level])], repeats)
           for level in range(config.depth)])
    return {name: round(ms, 1) for name, ms in costs.items()}


def largest_batch_under(architecture: str, slab: tuple[int, ...], budget_gib: float, steps: int) -> dict[str, Any]:
    """On CUDA: the largest power-of-two batch whose training step stays under `budget_gib`, and its cost."""
    best: dict[str, Any] | None = None
    batch = 1
    while batch <= 256:
        try:
            cost = model_step_cost(architecture, (batch, *slab), 1, "cuda", steps)
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
        if cost["peak_gib"] > budget_gib:
            break
        best, batch = cost, batch * 2
    return best or {"architecture": architecture, "error": f"batch 1 does not fit {budget_gib} GiB"}


def alternating_costs(architectures: tuple[str, ...], shape: tuple[int, ...], threads: int, steps: int, rounds: int) -> list[dict[str, Any]]:
    """Each architecture's CPU step cost, measured `rounds` times in turn, each time in a fresh process.

    One measurement of each swings by 20% on a shared 2-core machine; taking turns puts the same drift
    on both, and the median run of each (its time; the highest peak of its runs) is what is compared.
    """
    runs: dict[str, list[dict[str, Any]]] = {architecture: [] for architecture in architectures}
    for _ in range(rounds):
        for architecture in architectures:
            runs[architecture].append(run_isolated(model_step_cost, architecture, shape, threads, "cpu", steps))
    summary = []
    for architecture, measured in runs.items():
        ordered = sorted(measured, key=lambda cost: cost["seconds_per_step"])
        median = dict(ordered[len(ordered) // 2])
        median["peak_gib"] = max(cost["peak_gib"] for cost in measured)
        median["rounds"] = rounds
        summary.append(median)
    return summary


def measure(threads: int, steps: int, loader_batches: int) -> dict[str, Any]:
    """Every figure of this benchmark as a JSON-able dict (the `--out` file)."""
    set_threads(threads)  # as every stage of the package: subnormals flushed on every thread
    options = TrainOptions()
    cases = synthetic_cases(6, (60, 160, 190))
    results: dict[str, Any] = {"machine": platform.processor() or platform.machine(), "threads": threads,
                               "torch": torch.__version__, "options": {"batch_size": options.batch_size,
                               "slab_depth": options.slab_depth, "patch_size": list(options.patch_size)}}
    loader = loader_rate(cases, options, loader_batches)
    raw = loader_rate(cases, TrainOptions(augmentation=AugmentOptions(enabled=False)), loader_batches)
    step = step_rate(cases, ModelConfig(), options, threads, "cpu", steps)
    results["loader"] = {"augmented_slabs_per_second": round(loader, 1), "raw_slabs_per_second": round(raw, 1),
                         "train_step_slabs_per_second": round(step["slabs_per_second"], 2),
                         "seconds_per_iteration": round(step["seconds_per_iteration"], 3),
                         "loader_over_step": round(loader / step["slabs_per_second"], 1)}
    shape = (options.batch_size, 4, options.slab_depth, *options.patch_size)
    results["models_cpu"] = alternating_costs(("upattllstm", "monai_attention_unet"), shape, threads, steps, rounds=3)
    results["parts_cpu_ms"] = run_isolated(part_costs, shape, threads)
    results["fine_tune_cpu"] = fine_tune_costs(threads, steps=10, rounds=2)
    if torch.cuda.is_available():
        results["gpu"] = torch.cuda.get_device_name()
        slab = (4, options.slab_depth, *options.patch_size)
        results["models_cuda"] = [largest_batch_under(arch, slab, 8.0, steps) for arch in ("upattllstm", "monai_attention_unet")]
        gpu_step = step_rate(cases, ModelConfig(), options, threads, "cuda", steps)
        results["loader"]["cuda_train_step_slabs_per_second"] = round(gpu_step["slabs_per_second"], 2)
    return results


def figures_of(results: dict[str, Any]) -> list[Figure]:
    """The benchmark table's rows: loader against step, ours against MONAI's AttentionUnet."""
    loader, threads = results["loader"], results["threads"]
    rows = [Figure(
        step=f"training loader (augmented) vs training step, {threads} CPU threads",
        figure=f"{loader['augmented_slabs_per_second']:.1f} slabs/s",
        baseline=f"{loader['train_step_slabs_per_second']:.2f} slabs/s (UpAttLLSTM training step)",
        ratio=loader["augmented_slabs_per_second"] / loader["train_step_slabs_per_second"],
        target=">= 3x", met=loader["augmented_slabs_per_second"] >= 3 * loader["train_step_slabs_per_second"],
    )]
    if "cuda_train_step_slabs_per_second" in loader:
        gpu = loader["cuda_train_step_slabs_per_second"]
        rows.append(Figure(
            step=f"training loader (1 process) vs training step on {results['gpu']}",
            figure=f"{loader['augmented_slabs_per_second']:.1f} slabs/s", baseline=f"{gpu:.1f} slabs/s (GPU training step)",
            ratio=loader["augmented_slabs_per_second"] / gpu, target=">= 1x per loader worker",
            met=loader["augmented_slabs_per_second"] >= gpu,
        ))
    for key, where in (("models_cpu", f"{threads} CPU threads"), ("models_cuda", results.get("gpu", ""))):
        models = {row.get("architecture"): row for row in results.get(key, []) if "error" not in row}
        ours, monai = models.get("upattllstm"), models.get("monai_attention_unet")
        if not (ours and monai):
            continue
        rows.append(Figure(
            step=f"training step, UpAttLLSTM vs MONAI AttentionUnet, {where}, input {ours['input']}",
            figure=f"{ours['slabs_per_second']:.2f} slabs/s, {ours['peak_gib']:.2f} GiB",
            baseline=f"{monai['slabs_per_second']:.2f} slabs/s, {monai['peak_gib']:.2f} GiB (MONAI AttentionUnet, same widths)",
            ratio=ours["slabs_per_second"] / monai["slabs_per_second"],
        ))
    if "fine_tune_cpu" in results:
        tune = results["fine_tune_cpu"]
        rows.append(Figure(
            step=f"training step from the shipped model (make demo's fine-tuning), {threads} CPU threads, subnormals flushed",
            figure=f"{tune['flushed_seconds_per_step']:.2f} s",
            baseline=f"{tune['kept_seconds_per_step']:.2f} s (subnormals computed, as before)",
            ratio=tune["flushed_seconds_per_step"] / tune["kept_seconds_per_step"],
        ))
    if "parts_cpu_ms" in results:
        parts = dict(results["parts_cpu_ms"])
        unet = parts.pop("U-Net encoder and decoder")
        rows.append(Figure(
            step=f"UpAttLLSTM's own parts, forward + backward, {threads} CPU threads, each alone",
            figure=", ".join(f"{name} {ms:.0f} ms" for name, ms in parts.items()),
            baseline=f"{unet:.0f} ms (its U-Net encoder and decoder, the part MONAI's AttentionUnet also has)",
            ratio=sum(parts.values()) / unet,
        ))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per measurement")
    parser.add_argument("--loader-batches", type=int, default=40)
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    args = parser.parse_args()
    results = measure(args.threads, args.steps, args.loader_batches)
    print(json.dumps(results, indent=2))
    print(render_text(figures_of(results)))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
