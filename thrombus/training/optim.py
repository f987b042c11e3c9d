"""Loss, optimiser and learning-rate schedule of a training run, built from its options."""

from __future__ import annotations

import math

import torch
from torch import nn

from thrombus.training.options import TrainOptions


def make_loss(name: str = "dice_bce") -> nn.Module:
    """Soft Dice over the batch plus BCE (the reasons are in the module docstring), or plus focal loss.

    The focal term (gamma 2) down-weights the millions of easy background voxels that BCE keeps
    counting, so that the few hard ones (a clot's rim, a vein beside it) carry the voxel-wise gradient.
    """
    from monai.losses import DiceCELoss, DiceFocalLoss

    if name == "dice_focal":
        return DiceFocalLoss(sigmoid=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5, gamma=2.0)
    return DiceCELoss(sigmoid=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)


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


