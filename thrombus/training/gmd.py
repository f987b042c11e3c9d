"""Gradual modality dropout (GMD), as in the authors' public code, with three deliberate differences.

What the authors' nnU-Net fork does (sofiavarib/Gradual-modality-dropout, `nnUNetTrainer.train_step`),
on training batches only, after augmentation:

* a strength s steps through 0.25, 0.5, 0.75, 1.0 over the four quarters of training (`gradual`), or
  stays at 1 (`gradual=0`: plain modality dropout, the baseline);
* each sample is picked with probability p (their example 0.2);
* for a picked sample, every modality in the drop list is multiplied by (1 - s) + e, e ~ N(0, 0.1),
  one scalar per modality. Early on a "dropped" modality is only dimmed and rescaled (a site
  difference); at the end it is gone (a missing sequence).

Where we differ, and why:

* **The intended factor.** Their loop assigns the factor to the variable that held s, so the next
  modality gets 1 - ((1 - s) + e) + e' = s - e + e': within a batch the factors alternate between
  about 1 - s and about s, and the alternation carries on from one picked sample to the next (at s = 1
  every other "dropped" modality keeps about its full intensity). We apply (1 - s) + e to every dropped
  modality, which is what the method describes.
* **Removal is a missing sequence.** At s = 1 their factor is pure noise N(0, 0.1) (sign-flipped half
  the time) while the availability is unchanged. At test time a missing sequence is zero-filled and
  flagged 0 (harmonisation), and our networks mask it out of the sequence attention; so at s = 1 we zero
  the channel exactly and set its availability to 0, which makes a "removed" training modality identical
  to a missing test one. For s < 1 the factor is (1 - s) + e unclipped, as theirs.
* **At least one sequence survives.** They drop every listed modality of a picked sample, all of them if
  all are listed. We never remove all *available* modalities of a sample: when every available one is in
  the drop list, one of them (drawn from the generator) is spared, i.e. neither scaled nor removed.

Channels already missing (availability 0) are never touched; channels outside the drop list neither.
With `heterogeneity` on, the picked droppable modalities that are still present (dimmed or spared) also
get the site-heterogeneity perturbations of `thrombus.training.heterogeneity`, scaled by s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from thrombus.options import check_known_keys
from thrombus.training.heterogeneity import HeterogeneityOptions, perturb_site

#: `gradual`: s = 0.25, 0.5, 0.75, 1 by quarter of training; `full`: s = 1 (plain modality dropout);
#: `none`: no dropout.
MODES: tuple[str, ...] = ("gradual", "full", "none")


@dataclass(frozen=True)
class GMDOptions:
    """Settings of gradual modality dropout.

    Attributes:
        mode: one of `MODES`.
        p: probability that a sample is picked.
        sigma: standard deviation of the noise e added to each dropped modality's factor.
        droppable: indices of the channels that may be dropped (the authors' `-mod`); None = all.
        heterogeneity: also apply the site-heterogeneity perturbations to picked modalities.
        heterogeneity_options: their magnitudes at s = 1.
    """

    mode: str = "gradual"
    p: float = 0.2
    sigma: float = 0.1
    droppable: tuple[int, ...] | None = None
    heterogeneity: bool = True
    heterogeneity_options: HeterogeneityOptions = field(default_factory=HeterogeneityOptions)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"GMD mode {self.mode!r} is unknown: choose one of {', '.join(MODES)}")
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"GMD probability p must be in [0, 1], got {self.p}")
        if self.sigma < 0:
            raise ValueError(f"GMD sigma must be non-negative, got {self.sigma}")
        if self.droppable is not None and any(index < 0 for index in self.droppable):
            raise ValueError(f"GMD droppable channels are indices from 0, got {self.droppable}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> GMDOptions:
        """Build from a config section; unknown keys are an error, not ignored."""
        check_known_keys(cls, values, "GMD")
        converted = dict(values)
        if converted.get("droppable") is not None:
            converted["droppable"] = tuple(converted["droppable"])
        if isinstance(converted.get("heterogeneity_options"), Mapping):
            converted["heterogeneity_options"] = HeterogeneityOptions(**converted["heterogeneity_options"])
        return cls(**converted)


def strength(progress: float, mode: str) -> float:
    """GMD strength s at a point of training (`progress` = fraction of training done, in [0, 1]).

    `gradual` steps at the quarters as the authors' epoch thresholds 250/500/750 of 1000 do: s = 0.25
    for progress < 0.25, 0.5 below 0.5, 0.75 below 0.75, then 1.
    """
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"training progress must be in [0, 1], got {progress}")
    if mode == "gradual":
        return min(int(progress * 4) + 1, 4) / 4
    if mode == "full":
        return 1.0
    if mode == "none":
        return 0.0
    raise ValueError(f"GMD mode {mode!r} is unknown: choose one of {', '.join(MODES)}")


def droppable_mask(channels: int, droppable: tuple[int, ...] | None, device: torch.device) -> Tensor:
    """Boolean (C,) mask of the channels GMD may touch."""
    mask = torch.zeros(channels, dtype=torch.bool, device=device)
    if droppable is None:
        mask[:] = True
        return mask
    if any(index >= channels for index in droppable):
        raise ValueError(f"GMD droppable channels {droppable} do not exist in a batch of {channels} channels")
    mask[list(droppable)] = True
    return mask


def choose_drops(availability: Tensor, options: GMDOptions, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Which modalities of which samples GMD touches, and the noise of their factors.

    Returns (touched, dropped, noise), (B, C) each: `touched` = available droppable modalities of picked
    samples; `dropped` = touched minus the one spared where nothing else would remain; `noise` = e.
    Draws a fixed number of values from the generator whatever is picked, so a seed fixes the sequence.
    """
    batch, channels = availability.shape
    device = availability.device
    picked = torch.rand(batch, generator=generator, device=generator.device).to(device) < options.p
    noise = torch.randn(batch, channels, generator=generator, device=generator.device).to(device) * options.sigma
    spare_scores = torch.rand(batch, channels, generator=generator, device=generator.device).to(device)
    available = availability > 0
    allowed = droppable_mask(channels, options.droppable, device)
    touched = available & allowed & picked[:, None]
    # A sample whose available modalities are all droppable would lose every one of them.
    nothing_else = ~(available & ~allowed).any(dim=1)
    needs_spare = touched.any(dim=1) & nothing_else
    spare_index = spare_scores.masked_fill(~touched, -1.0).argmax(dim=1)
    spared = F.one_hot(spare_index, channels).bool() & needs_spare[:, None]
    return touched, touched & ~spared, noise


def apply_gmd(
    batch: Tensor, availability: Tensor, progress: float, options: GMDOptions, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Gradual modality dropout on one training batch (after augmentation): (B, C, ...) and (B, C).

    Returns the batch with dropped modalities scaled by (1 - s) + e (zeroed when s = 1) and the
    availability with removed modalities set to 0, as new tensors; the inputs are never modified (and
    are returned as they are when GMD is off). The same seed and generator device give the same result.
    """
    if batch.ndim < 3 or tuple(availability.shape) != tuple(batch.shape[:2]):
        raise ValueError(
            f"GMD expects a batch (B, C, ...) and availability (B, C), got {tuple(batch.shape)} and {tuple(availability.shape)}"
        )
    if options.heterogeneity and batch.ndim != 5:
        raise ValueError(
            f"site heterogeneity needs slabs (B, C, D, H, W) with D the slice axis, got {tuple(batch.shape)}: "
            "set heterogeneity=False for other batches"
        )
    s = strength(progress, options.mode)
    if s == 0.0 or options.p == 0.0:
        return batch, availability
    touched, dropped, noise = (t.to(batch.device) for t in choose_drops(availability, options, generator))
    removed = dropped if s >= 1.0 else torch.zeros_like(dropped)
    out = batch.clone()
    kept = touched & ~removed
    if options.heterogeneity and kept.any():
        out[kept] = perturb_site(out[kept], s, generator, options.heterogeneity_options)
    factors = torch.where(removed, torch.zeros_like(noise), (1.0 - s) + noise).to(out.dtype)
    spatial = (1,) * (batch.ndim - 2)
    out = torch.where(dropped.reshape(*dropped.shape, *spatial), out * factors.reshape(*factors.shape, *spatial), out)
    new_availability = availability.clone()
    new_availability[removed.to(availability.device)] = 0
    return out, new_availability
