"""The clots of the training subjects, and foreground sampling weighted by how badly each is fitted.

Why: with the foreground slabs spread evenly over the positive subjects, a model trained on a
multi-center mix learns the clots that most of the subjects share (M1 and carotid-T clots, dark and
round on the susceptibility sequence) and scores the rarer ones (thin M2 branch clots) as look-alikes,
with p < 0.001 even in its own training subjects, while the same M2 clots are learned within 100
iterations when trained on alone (RESULTS.md, rungs `loco_t2star`, `overfit_m2`, `m2_only`). The
object-level remedy of detectors (online hard example mining, Shrivastava et al. 2016) re-weights the
sampling toward what is still missed: every `clot_reweight_every` iterations each clot's fit is read
from the current weights, and its share of the foreground slabs made `FLOOR + (1 - fit)`.

Reproducibility: the weights are a function of the model at a fixed iteration (CPU predictions are
deterministic at a given thread count), so the run is still fixed by its seed; the trainer keeps them in
its checkpoint so that a run resumed between two re-weightings continues with the same ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from thrombus.device import autocast
from thrombus.model.sliding import crop_padded
from thrombus.training.data import Case

#: Share of a perfectly fitted clot relative to a missed one (1 + FLOOR): fitted clots stay in the
#: sampling, so that what was learned is not forgotten, at a fifth to a sixth of a missed clot's share.
FLOOR = 0.2


@dataclass(frozen=True)
class Clot:
    """One connected thrombus component of a training case.

    Attributes:
        case: index of the case in the dataset's list.
        voxels: (n, 3) int64 (z, x, y) coordinates of the component.
        centre: the component's voxel nearest its mean, where the fit is read.
    """

    case: int
    voxels: np.ndarray
    centre: tuple[int, int, int]


def find_clots(cases: Sequence[Case]) -> list[Clot]:
    """Each 26-connected thrombus component of each case, in case order then by first voxel."""
    clots: list[Clot] = []
    for index, case in enumerate(cases):
        if not case.positive:
            continue
        labelled, count = ndimage.label(case.label.numpy() > 0, structure=np.ones((3, 3, 3), dtype=bool))
        for component in range(1, count + 1):
            voxels = np.argwhere(labelled == component).astype(np.int64)
            nearest = voxels[np.argmin(((voxels - voxels.mean(axis=0)) ** 2).sum(axis=1))]
            clots.append(Clot(index, voxels, (int(nearest[0]), int(nearest[1]), int(nearest[2]))))
    return clots


@torch.no_grad()
def clot_fit(
    model: nn.Module,
    cases: Sequence[Case],
    clots: Sequence[Clot],
    slab_depth: int,
    patch: tuple[int, int],
    device: torch.device,
    batch_size: int = 8,
) -> np.ndarray:
    """Soft Dice of the model on a slab centred on each clot (all of its subject's sequences, no augmentation).

    The slab is the training slab's shape, so the fit is what a foreground sample of that clot scores.
    The model is put back in training mode.
    """
    size = (slab_depth, *patch)
    fits = np.zeros(len(clots), dtype=np.float64)
    model.eval()
    try:
        for first in range(0, len(clots), batch_size):
            chunk = clots[first:first + batch_size]
            images, labels, availability = [], [], []
            for clot in chunk:
                case = cases[clot.case]
                start = [c - s // 2 for c, s in zip(clot.centre, size)]
                images.append(crop_padded(case.image, start, size))
                labels.append(crop_padded(case.label, start, size).float())
                availability.append(case.availability)
            image = torch.stack(images).float().to(device)
            with autocast(device):
                logits = model(image, torch.stack(availability).to(device))
            probability = torch.sigmoid(logits.float())[:, 0].cpu()
            label = torch.stack(labels)
            overlap = (probability * label).flatten(1).sum(dim=1)
            total = probability.flatten(1).sum(dim=1) + label.flatten(1).sum(dim=1)
            fits[first:first + len(chunk)] = (2.0 * overlap / total.clamp_min(1e-6)).double().numpy()
    finally:
        model.train()
    return fits


def sampling_weights(fits: np.ndarray) -> np.ndarray:
    """Each clot's share of the foreground slabs: FLOOR + (1 - fit), normalised to sum to 1."""
    raw = FLOOR + (1.0 - np.clip(fits, 0.0, 1.0))
    return raw / raw.sum()
