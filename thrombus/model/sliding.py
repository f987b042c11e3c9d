"""Whole-volume prediction by sliding slabs: how validation, calibration and inference all read a volume.

It lives beside the network rather than in the training or the inference package because all three
stages need it and must predict exactly alike (a threshold calibrated on validation predictions has to
mean the same on test predictions), while training must not depend on inference.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from thrombus.device import autocast


class Volume(Protocol):
    """What a prediction reads of a subject: the stack (C, Z, X, Y), slice axis first, its availability (C,) and
    its brain (Z, X, Y): where the subject's stack has signal in any sequence."""

    image: Tensor
    availability: Tensor
    slice_mm: float
    brain: Tensor


#: The logit given to voxels outside the brain: a probability of exactly 0 in float32.
OUTSIDE_LOGIT = -1.0e4


def network_depth(depth: int, slice_mm: float, target_mm: float | None) -> int:
    """Slices of a volume of `depth` slices `slice_mm` apart once resampled to about `target_mm` apart.

    The first and last slice centres are kept, so the spacing becomes (depth - 1) * slice_mm / (n - 1),
    within half a slice of the target. None (or an unknown spacing) keeps the volume as it is.
    """
    if not target_mm or slice_mm <= 0 or depth < 2:
        return depth
    return max(int(round((depth - 1) * slice_mm / target_mm)) + 1, 2)


def resample_slices(volume: Tensor, depth: int) -> Tensor:
    """`volume` (..., Z, X, Y) linearly interpolated along Z to `depth` slices, end slice centres kept.

    A 2.5D network reads D adjacent slices: at 6 mm they span 30 mm and a clot shows on one or two of
    them, at 2 mm 10 mm and five or more. Resampling every subject to one slice spacing before the
    network (nnU-Net's target spacing, along the slice axis only) gives it one geometry to learn.
    """
    if volume.shape[-3] == depth:
        return volume
    lead, (slices, height, width) = volume.shape[:-3], volume.shape[-3:]
    flat = volume.reshape(-1, 1, slices, height * width).float()
    out = F.interpolate(flat, size=(depth, height * width), mode="bilinear", align_corners=True)
    return out.reshape(*lead, depth, height, width)


def crop_padded(volume: Tensor, start: list[int] | tuple[int, ...], size: list[int] | tuple[int, ...]) -> Tensor:
    """The box [start, start + size) of the last len(size) axes, zero where it leaves the volume."""
    lead = volume.shape[: volume.ndim - len(size)]
    out = volume.new_zeros((*lead, *size))
    source, target = [], []
    for begin, length, extent in zip(start, size, volume.shape[len(lead) :]):
        low, high = max(begin, 0), min(begin + length, extent)
        if high <= low:
            return out
        source.append(slice(low, high))
        target.append(slice(low - begin, high - begin))
    out[(..., *target)] = volume[(..., *source)]
    return out


def slab_centres(depth: int, slab_depth: int, stride: int = 1) -> list[int]:
    """Centres of the slabs that cover a volume of `depth` slices, `stride` apart (one padded slab if it is thinner).

    The last slab always ends on the last slice, so a stride that does not divide the depth still
    covers every slice; a stride above the slab depth would leave gaps and is refused.
    """
    if not 1 <= stride <= slab_depth:
        raise ValueError(f"slab stride must be between 1 and the slab depth {slab_depth}, got {stride}")
    radius = slab_depth // 2
    last = max(depth - radius - 1, radius)
    centres = list(range(radius, last + 1, stride))
    if centres[-1] != last:
        centres.append(last)
    return centres


def tile_starts(extent: int, tile: int) -> list[int]:
    """Starts of tiles of `tile` voxels covering `extent`, half a tile apart, the last one flush with the end."""
    if extent <= tile:
        return [0]
    step = max(tile // 2, 1)
    starts = list(range(0, extent - tile + 1, step))
    if starts[-1] != extent - tile:
        starts.append(extent - tile)
    return starts


def _forward_tiled(model: nn.Module, slabs: Tensor, availability: Tensor, tile: tuple[int, int] | None,
                   device: torch.device) -> Tensor:
    """Logits (B, D, H, W) of slabs (B, C, D, H, W), in-plane tiles of the training patch size averaged.

    GroupNorm normalises each sample over its whole plane, so a network trained on 64 x 64 patches sees
    other statistics on a whole 180 x 200 slice, a third of it the zero background around the brain;
    tiles of the training patch size give it the inputs it was trained on, as nnU-Net's sliding window does.
    """
    height, width = slabs.shape[-2:]
    if tile is None or (height <= tile[0] and width <= tile[1]):
        with autocast(device):
            return model(slabs.to(device), availability.to(device)).float().cpu()[:, 0]
    total = torch.zeros(slabs.shape[0], slabs.shape[2], height, width)
    count = torch.zeros(1, 1, height, width)
    for top in tile_starts(height, tile[0]):
        for left in tile_starts(width, tile[1]):
            window = (slice(top, top + tile[0]), slice(left, left + tile[1]))
            with autocast(device):
                logits = model(slabs[..., window[0], window[1]].to(device), availability.to(device)).float().cpu()[:, 0]
            total[..., window[0], window[1]] += logits
            count[..., window[0], window[1]] += 1
    return total / count


@torch.no_grad()
def predict_case(
    model: nn.Module, case: Volume, slab_depth: int, batch_size: int, device: torch.device, stride: int = 1,
    tile: tuple[int, int] | None = None, slice_mm: float | None = None,
) -> Tensor:
    """Logits (Z, X, Y) over a case's brain box: slabs `stride` slices apart, overlapping slices averaged.

    With stride 1 each slice is seen in up to `slab_depth` slabs, at every position of the slab, so
    the average smooths out the slab edges where the recurrence has context on one side only; a
    larger stride trades that smoothing for `stride` times fewer forward passes (BENCHMARKS.md).
    With `tile` (the training patch size) each slab is read in overlapping in-plane tiles of that size.
    With `slice_mm` the network reads the case resampled to that slice spacing (`resample_slices`) and
    the logits are resampled back to the case's own slices.

    Voxels outside the case's brain get `OUTSIDE_LOGIT`. The stack is zero there (skull stripping), so the
    network has nothing to read; what it answers there is an artefact of the zero padding. Such components
    sat on the empty first and last slices of the brain's box: 3 of the 7 of a demo model's held-out
    predictions. A thrombus lies in the skull-stripped brain, so this cannot remove one the network saw.
    """
    native = case.image.shape[1]
    image = resample_slices(case.image, network_depth(native, case.slice_mm, slice_mm))
    channels, depth, height, width = image.shape
    radius = slab_depth // 2
    total = torch.zeros(depth, height, width)
    count = torch.zeros(depth, 1, 1)
    centres = slab_centres(depth, slab_depth, stride)
    for first in range(0, len(centres), batch_size):
        chunk = centres[first : first + batch_size]
        slabs = torch.stack([crop_padded(image, (c - radius, 0, 0), (slab_depth, height, width)) for c in chunk])
        availability = case.availability.expand(len(chunk), channels)
        logits = _forward_tiled(model, slabs, availability, tile, device)
        for centre, slab_logits in zip(chunk, logits):
            low, high = max(centre - radius, 0), min(centre + radius + 1, depth)
            total[low:high] += slab_logits[low - (centre - radius) : high - (centre - radius)]
            count[low:high] += 1
    logits = resample_slices(total / count.clamp_min(1), native)
    return logits.masked_fill(~case.brain.to(torch.bool), OUTSIDE_LOGIT)
