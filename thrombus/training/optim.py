"""Loss, optimiser and learning-rate schedule of a training run, built from its options."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from thrombus.training.options import TrainOptions


def make_loss(name: str = "dice_bce") -> nn.Module:
    """Soft Dice over the batch plus BCE (the reasons are in the module docstring), or plus focal loss.

    The focal term (gamma 2) down-weights the millions of easy background voxels that BCE keeps
    counting, so that the few hard ones (a clot's rim, a vein beside it) carry the voxel-wise gradient.
    """
    from monai.losses import DiceCELoss, DiceFocalLoss

    if name == "dice_focal":
        return DiceFocalLoss(sigmoid=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5, gamma=2.0)
    if name == "slab_dice_bce":
        return SlabDiceBCELoss()
    if name == "batch_slab_dice_bce":
        return SlabDiceBCELoss(batch_term=True)
    return DiceCELoss(sigmoid=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)


class SlabDiceBCELoss(nn.Module):
    """Soft Dice of each slab that holds thrombus, averaged over those slabs, plus BCE over every voxel.

    The batch Dice pools the foreground of the batch, so a clot missed beside one that is hit costs only
    its share of the pooled voxels, and every missed voxel gets the same small push. Averaged per slab,
    each clot's slab weighs the same whatever else is in the batch, and a missed clot's voxels get a push
    scaled by its own size. Slabs without thrombus carry only the BCE term (their Dice is undefined).
    With `batch_term` the batch Dice is added too: it is what penalises a false positive in a slab
    without thrombus beyond BCE's per-voxel share.
    """

    def __init__(self, smooth: float = 1e-5, batch_term: bool = False) -> None:
        super().__init__()
        self.smooth, self.batch_term = smooth, batch_term

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        loss = F.binary_cross_entropy_with_logits(logits, target)
        if self.batch_term:
            probability = torch.sigmoid(logits)
            overlap, total = (probability * target).sum(), probability.sum() + target.sum()
            loss = loss + 1.0 - (2.0 * overlap + self.smooth) / (total + self.smooth)
        dims = tuple(range(1, logits.ndim))
        present = target.sum(dim=dims) > 0
        if not bool(present.any()):
            return loss
        probability, target = torch.sigmoid(logits[present]), target[present]
        overlap = (probability * target).sum(dim=dims)
        total = probability.sum(dim=dims) + target.sum(dim=dims)
        per_slab = 1.0 - (2.0 * overlap + self.smooth) / (total + self.smooth)
        return per_slab.mean() + loss


def set_foreground_prior(model: nn.Module, prior: float) -> None:
    """Start the output layer at logit(prior) instead of 0 (p = 0.5 everywhere).

    With a thrombus in one voxel of 10^4, a network that starts at p = 0.5 spends its first hundreds of
    steps learning that almost everything is background; starting at the prior (as detectors of rare
    objects do, Lin et al. 2017) leaves those steps to the clot. The layer is the last convolution with
    one output channel, which is the head of every variant.
    """
    heads = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d)) and m.out_channels == 1]
    if not heads or heads[-1].bias is None:
        raise ValueError("train.foreground_prior: the model has no one-channel output convolution with a bias")
    with torch.no_grad():
        heads[-1].bias.fill_(math.log(prior / (1.0 - prior)))


def make_optimizer(model: nn.Module, options: TrainOptions) -> torch.optim.Optimizer:
    """AdamW (the short CPU demo converges in hundreds of steps) or nnU-Net's SGD, Nesterov momentum 0.99."""
    if options.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=options.learning_rate,
            momentum=options.momentum,
            nesterov=True,
            weight_decay=options.weight_decay,
        )
    return torch.optim.AdamW(model.parameters(), lr=options.learning_rate, weight_decay=options.weight_decay)


def make_schedule(optimizer: torch.optim.Optimizer, options: TrainOptions) -> torch.optim.lr_scheduler.LRScheduler:
    """nnU-Net's poly learning rate: lr * (1 - iteration / iterations) ** 0.9, stepped every iteration."""
    return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=options.iterations, power=options.poly_power)


