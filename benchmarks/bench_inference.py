"""Benchmark: inference of one subject, ours against MONAI's sliding-window inference, on the same volume.

* ours: `predict_probability` (what `thrombus predict` and the `infer` rule run) with the demo's
  UpAttLLSTM: the brain's bounding box, slabs of 5 slices along Z at the default stride (5: each slice
  predicted once); and again at stride 1 (every slice averaged over five slabs, the behaviour before
  `train.predict_stride`), the before of that change;
* MONAI, per slice: `monai.inferers.SliceInferer` running MONAI's 2D AttentionUnet with our widths on
  every axial slice of the same box (the ablation's `monai_attention_unet`, inferred MONAI's way);
* MONAI, 3D: `sliding_window_inference` of a 3D AttentionUnet (the same widths) with 96x96x32 windows,
  overlap 0.25 (MONAI's default), Gaussian blending, on the same box.

The networks have random weights: their speed does not depend on the values. Each variant runs in its
own fresh process, so its peak memory (high-water RSS minus RSS before the model was built) is its own.
The volume is demo-sized (190 x 220 x 72, four channels, an ellipsoid brain), or `--stack` names a
harmonised stack. On a CUDA device the same three run again on the GPU.

    .venv/bin/python benchmarks/bench_inference.py --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import Figure, memory_gib, render_text, run_isolated  # noqa: E402  (a sibling script, not a package)

DEMO_SHAPE = (190, 220, 72)
VARIANTS = ("ours", "ours_stride1", "monai_slices", "monai_3d")


def demo_volume(shape: tuple[int, int, int] = DEMO_SHAPE, seed: int = 0) -> np.ndarray:
    """(X, Y, Z, 4) float32: z-scored noise inside an ellipsoid that fills most of the grid."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1.15, 1.15, n, dtype=np.float32) for n in shape], indexing="ij"))
    brain = (grid**2).sum(axis=0) < 1.0
    return (rng.normal(size=(*shape, 4)).astype(np.float32) * brain[..., None]).astype(np.float32)


def load_volume(stack: Path | None) -> np.ndarray:
    if stack is None:
        return demo_volume()
    import nibabel as nib

    return np.asarray(nib.load(str(stack)).dataobj, dtype=np.float32)


def _brain_box(volume: np.ndarray) -> np.ndarray:
    """(1, C, X, Y, Z) tensor layout of the brain's bounding box, the region every variant is run on."""
    from thrombus.training.data import _brain_box as box_of

    box = box_of(np.any(volume != 0, axis=3), "benchmark volume")
    return np.ascontiguousarray(np.transpose(volume[box], (3, 0, 1, 2)))[None]


def run_variant(variant: str, stack: Path | None, threads: int, device_name: str) -> dict[str, Any]:
    """One variant on the volume, timed from the volume in memory to the probability map (warm-up run first)."""
    import torch

    from thrombus.device import set_threads

    set_threads(threads)  # every variant as the package runs: subnormals flushed on every thread
    torch.manual_seed(0)
    device = torch.device(device_name)
    volume = load_volume(stack)
    before = memory_gib("VmRSS")
    if variant.startswith("ours"):
        from thrombus.inference.predict import predict_probability
        from thrombus.model import ModelConfig, build_model
        from thrombus.training.options import TrainOptions

        model = build_model(ModelConfig()).eval()
        availability = np.ones(volume.shape[3], dtype=np.float32)
        stride = 1 if variant == "ours_stride1" else TrainOptions().stride

        def call() -> np.ndarray:
            return predict_probability(model, volume, availability, slab_depth=5, batch_size=4, device=device, stride=stride)
    else:
        from monai.inferers import SliceInferer, sliding_window_inference
        from monai.networks.nets import AttentionUnet

        from thrombus.model import ModelConfig

        widths = ModelConfig().widths
        dims = 2 if variant == "monai_slices" else 3
        network = AttentionUnet(spatial_dims=dims, in_channels=4, out_channels=1, channels=widths,
                                strides=(2,) * (len(widths) - 1)).to(device).eval()
        box = torch.from_numpy(_brain_box(volume))

        def call() -> np.ndarray:
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                if variant == "monai_slices":
                    # one window per slice: the in-plane box rounded up to the network's stride (MONAI pads)
                    roi = tuple(-(-int(n) // 2 ** (len(widths) - 1)) * 2 ** (len(widths) - 1) for n in box.shape[2:4])
                    inferer = SliceInferer(roi_size=roi, spatial_dim=2, sw_batch_size=4, overlap=0.0, progress=False)
                    logits = inferer(box.to(device), network)
                else:
                    logits = sliding_window_inference(box.to(device), (96, 96, 32), 4, network, overlap=0.25, mode="gaussian")
            return torch.sigmoid(logits.float()).cpu().numpy()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    call()  # warm-up: first-call allocations and kernels, as a job's first subject would pay once
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    call()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 1024**3 if device.type == "cuda" else memory_gib("VmHWM") - before
    return {"variant": variant, "device": device_name, "seconds": seconds, "peak_gib": peak}


def figures(threads: int = 2, stack: Path | None = None) -> list[Figure]:
    """Ours against both MONAI inferers, on CPU (and on CUDA when present)."""
    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    shape = load_volume(stack).shape
    rows = []
    for device in devices:
        results = {variant: run_isolated(run_variant, variant, stack, threads, device) for variant in VARIANTS}
        ours = results["ours"]
        where = f"{threads} CPU threads" if device == "cpu" else torch.cuda.get_device_name()
        before = results["ours_stride1"]
        rows.append(Figure(
            step=f"inference of one subject {shape[:3]}, {where}: default slab stride against stride 1",
            figure=f"{ours['seconds']:.1f} s, {ours['peak_gib']:.2f} GiB",
            baseline=f"{before['seconds']:.1f} s, {before['peak_gib']:.2f} GiB (stride 1, before train.predict_stride)",
            ratio=ours["seconds"] / before["seconds"],
        ))
        for variant, label in (("monai_slices", "MONAI SliceInferer, 2D AttentionUnet"),
                               ("monai_3d", "MONAI sliding_window_inference, 3D AttentionUnet")):
            base = results[variant]
            rows.append(Figure(
                step=f"inference of one subject {shape[:3]}, {where}",
                figure=f"{ours['seconds']:.1f} s, {ours['peak_gib']:.2f} GiB",
                baseline=f"{base['seconds']:.1f} s, {base['peak_gib']:.2f} GiB ({label})",
                ratio=ours["seconds"] / base["seconds"],
            ))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stack", type=Path, default=None, help="a harmonised stack.nii.gz (default: demo-sized volume)")
    args = parser.parse_args(argv)
    print(render_text(figures(args.threads, args.stack)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
