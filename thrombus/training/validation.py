"""The validation pass of training: whole volumes of the validation subjects, predicted as inference will."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from thrombus.model.sliding import predict_case
from thrombus.training.data import Case
from thrombus.training.options import TrainOptions

#: Fewer thrombus-positive validation subjects than this choose nothing: not the checkpoint (best.pt then
#: holds the latest validated weights) and not the postprocessing (`thrombus.inference.postprocess`, which
#: keeps its defaults below the same number). On two subjects the Dice of one clot decides; in the demo
#: it picked the weights of iteration 150 of 300 for 0.305 against 0.296, weights that found 4 of the 7
#: training clots (5 of 7 for the final ones) and put a false positive on the held-out negative subject.
MIN_POSITIVES = 4


@dataclass
class Validation:
    """Scores of one validation pass."""

    dice: float
    loss: float
    per_case: dict[str, float]


def too_few_to_choose(cases: Sequence[Case]) -> str | None:
    """Why these validation subjects cannot choose between checkpoints (`MIN_POSITIVES`), or None when they can."""
    positives = sum(1 for case in cases if case.positive)
    if positives >= MIN_POSITIVES:
        return None
    return f"latest weights: {positives} thrombus-positive validation subjects, fewer than the {MIN_POSITIVES} a choice needs"


def dice_score(logits: Tensor, case: Case) -> float:
    """Dice of the thresholded prediction (p > 0.5) against the whole mask (voxels outside the box count as missed)."""
    predicted = logits > 0
    truth = case.label > 0
    overlap = int((predicted & truth).sum())
    size = int(predicted.sum()) + int(truth.sum()) + case.label_outside
    return 2.0 * overlap / size if size else 1.0


def validate(
    model: nn.Module, cases: Sequence[Case], loss_fn: nn.Module, options: TrainOptions, device: torch.device
) -> Validation:
    """Whole-volume validation: mean Dice over thrombus-positive cases, mean loss over all cases."""
    model.eval()
    losses, dices = [], {}
    for case in cases:
        logits = predict_case(model, case, options.slab_depth, options.val_batch_size, device, options.stride, options.tile,
                              slice_mm=options.slice_mm)
        losses.append(float(loss_fn(logits[None, None], case.label[None, None].float())))
        if case.positive:
            dices[case.subject] = dice_score(logits, case)
    model.train()
    dice = float(np.mean(list(dices.values()))) if dices else math.nan
    return Validation(dice=dice, loss=float(np.mean(losses)), per_case=dices)
