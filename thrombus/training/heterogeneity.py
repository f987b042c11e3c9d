"""Site-heterogeneity augmentation: make a picked sample's sequence look as if another center acquired it.

Centers differ by noise level, coil bias field, contrast and slice thickness; harmonisation removes the
global scale but not these. Gradual modality dropout (`thrombus.training.gmd`) already dims and
rescales a picked modality early in training; this augmentation adds the other site differences on the
same schedule, with every magnitude scaled by the GMD strength s, to the same picked modalities:

* a smooth multiplicative bias field, exp(second-order polynomial of the coordinates), applied around
  the volume's minimum (z-scored intensities are signed; a coil bias multiplies the raw, positive ones);
* a gamma change of contrast on the volume's own [min, max] range (nnU-Net's gamma augmentation);
* a Gaussian blur along the slice axis, as thicker slices would give (partial volume along Z);
* additive Gaussian noise.

The zero background of the skull-stripped stack is kept: every step is undone outside the voxels that
were non-zero, so a perturbed sample still looks like a harmonised one. All draws come from the given
`torch.Generator` and everything is vectorised over volumes and voxels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class HeterogeneityOptions:
    """Magnitudes at strength s = 1 (each is scaled by s).

    Attributes:
        noise_sd: largest standard deviation of the additive noise, in z-score units; each volume
            draws its own from U(0, noise_sd * s).
        bias_log_sd: standard deviation of each coefficient of the log bias-field polynomial (9 terms
            in 3D; 0.1 gives a field within about +-35% over the slab at s = 1).
        gamma_log_sd: standard deviation of log(gamma).
        blur_max_sigma: largest Gaussian sigma of the slice-axis blur, in slices; each volume draws its
            own from U(0, blur_max_sigma * s).
    """

    noise_sd: float = 0.1
    bias_log_sd: float = 0.1
    gamma_log_sd: float = 0.2
    blur_max_sigma: float = 1.0


def perturb_site(volumes: Tensor, strength: float, generator: torch.Generator, options: HeterogeneityOptions) -> Tensor:
    """Apply bias field, gamma, slice blur and noise to each volume of (n, D, *in_plane), D the slice axis.

    Returns a new tensor; `strength` 0 returns the input values unchanged.
    """
    if volumes.shape[0] == 0 or strength <= 0:
        return volumes.clone()
    foreground = volumes != 0
    out = _bias_field(volumes, foreground, strength * options.bias_log_sd, generator)
    out = _gamma(out, foreground, strength * options.gamma_log_sd, generator)
    out = _blur_slices(out, strength * options.blur_max_sigma, generator)
    noise_sd = _per_volume(_uniform(out.shape[0], strength * options.noise_sd, generator, out), out.ndim)
    out = out + noise_sd * _randn(out.shape, generator, out)
    return torch.where(foreground, out, torch.zeros_like(out))


def _randn(shape: tuple[int, ...] | torch.Size, generator: torch.Generator, like: Tensor) -> Tensor:
    """Standard normal draws from `generator` (on its device), moved next to `like`."""
    return torch.randn(tuple(shape), generator=generator, device=generator.device).to(like.device, like.dtype)


def _uniform(n: int, high: float, generator: torch.Generator, like: Tensor) -> Tensor:
    """One U(0, high) draw per volume: (n,)."""
    return torch.rand(n, generator=generator, device=generator.device).to(like.device, like.dtype) * high


def _per_volume(values: Tensor, ndim: int) -> Tensor:
    """Shape per-volume values (n,) to broadcast over a (n, ...) tensor of `ndim` dimensions."""
    return values.reshape(values.shape[0], *([1] * (ndim - 1)))


def _masked_extrema(volumes: Tensor, foreground: Tensor) -> tuple[Tensor, Tensor]:
    """Per-volume min and max over the foreground (0 and 0 for an empty volume), broadcastable."""
    flat = volumes.flatten(1)
    mask = foreground.flatten(1)
    has = mask.any(dim=1)
    low = torch.where(mask, flat, torch.full_like(flat, math.inf)).amin(dim=1)
    high = torch.where(mask, flat, torch.full_like(flat, -math.inf)).amax(dim=1)
    zeros = torch.zeros_like(low)
    return _per_volume(torch.where(has, low, zeros), volumes.ndim), _per_volume(torch.where(has, high, zeros), volumes.ndim)


def polynomial_basis(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> Tensor:
    """Second-order monomials of coordinates in [-1, 1] over a grid: (terms, *shape), constant excluded.

    The constant is left out because a global scale is GMD's own factor's business.
    """
    axes = [(torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2) / max((size - 1) / 2, 1) for size in shape]
    grids = torch.meshgrid(*axes, indexing="ij")
    terms = list(grids) + [grids[i] * grids[j] for i in range(len(grids)) for j in range(i, len(grids))]
    return torch.stack(terms)


def _bias_field(volumes: Tensor, foreground: Tensor, log_sd: float, generator: torch.Generator) -> Tensor:
    """Multiply by exp(random smooth polynomial), around each volume's foreground minimum."""
    basis = polynomial_basis(tuple(volumes.shape[1:]), volumes.device, volumes.dtype)
    coefficients = _randn((volumes.shape[0], basis.shape[0]), generator, volumes) * log_sd
    field = torch.exp(torch.tensordot(coefficients, basis, dims=1))
    low, _ = _masked_extrema(volumes, foreground)
    return low + (volumes - low) * field


def _gamma(volumes: Tensor, foreground: Tensor, log_sd: float, generator: torch.Generator) -> Tensor:
    """Gamma curve on each volume's own [min, max] foreground range, range kept."""
    gamma = _per_volume(torch.exp(_randn((volumes.shape[0],), generator, volumes) * log_sd), volumes.ndim)
    low, high = _masked_extrema(volumes, foreground)
    span = (high - low).clamp_min(1e-6)
    unit = ((volumes - low) / span).clamp(0.0, 1.0)
    return low + span * unit**gamma


def _blur_slices(volumes: Tensor, max_sigma: float, generator: torch.Generator) -> Tensor:
    """Gaussian blur along axis 1 (the slice axis) with a per-volume sigma, edges replicated.

    The taps (at most 2 * ceil(3 * max_sigma) + 1) are the only loop; each is one gather over all volumes.
    """
    sigma = _uniform(volumes.shape[0], max_sigma, generator, volumes).clamp_min(1e-3)
    radius = math.ceil(3 * max_sigma)
    depth = volumes.shape[1]
    if radius == 0 or depth == 1:
        return volumes
    offsets = torch.arange(-radius, radius + 1, device=volumes.device)
    weights = torch.exp(-(offsets[None, :].to(volumes.dtype) ** 2) / (2 * sigma[:, None] ** 2))
    weights = weights / weights.sum(dim=1, keepdim=True)  # (n, taps)
    slices = torch.arange(depth, device=volumes.device)
    out = torch.zeros_like(volumes)
    for tap, offset in enumerate(offsets.tolist()):
        shifted = volumes.index_select(1, (slices + offset).clamp(0, depth - 1))
        out = out + _per_volume(weights[:, tap], volumes.ndim) * shifted
    return out
