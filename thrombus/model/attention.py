"""Attention parts of UpAttLLSTM: fusion across sequence streams and gates on the skip connections.

Fusion: each sequence has its own stem, and at every pixel the fused feature is an attention-weighted
sum of the streams, where only *available* sequences take part in the softmax. A missing sequence is
therefore absent from the computation, not a dark image the network has to learn to ignore; with one
sequence present the fusion passes that stream through unchanged, with none it gives zeros.

Skip gates (Oktay et al. 2018, "Attention U-Net"): the coarser decoder feature decides, per pixel,
how much of the encoder's skip feature reaches the decoder, which suppresses the many thrombus
look-alikes (veins, microbleeds) that a plain skip would hand over at full resolution.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Score given to masked streams before the softmax: finite (no NaN when every stream is masked, and
#: representable in float16), and low enough that exp() underflows to exactly 0.
_MASKED_SCORE = -1.0e4


def masked_softmax(scores: Tensor, mask: Tensor, dim: int) -> Tensor:
    """Softmax over `dim` restricted to `mask`; weights are exactly 0 where masked, all 0 if nothing is.

    The max is taken over the masked scores, so the exponentials cannot overflow, and the masked
    entries are multiplied by 0 after exp() so that no value of their score, however large, can reach
    the output or the gradient.
    """
    mask = mask.to(scores.dtype)
    filled = scores.masked_fill(mask == 0, _MASKED_SCORE)
    shifted = filled - filled.amax(dim=dim, keepdim=True).detach()
    weights = torch.exp(shifted) * mask
    return weights / weights.sum(dim=dim, keepdim=True).clamp_min(torch.finfo(scores.dtype).tiny)


def masked_mean(streams: Tensor, availability: Tensor) -> Tensor:
    """Mean over the available streams: (N, S, F, H, W) with (N, S) -> (N, F, H, W); zeros if none."""
    weights = availability.to(streams.dtype)[:, :, None, None, None]
    return (streams * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


class MeanFusion(nn.Module):
    """Plain mean over the available sequence streams (the `no_attention` ablation)."""

    def forward(self, streams: Tensor, availability: Tensor) -> Tensor:
        return masked_mean(streams, availability)


class SequenceAttentionFusion(nn.Module):
    """Per-pixel attention across sequence streams, masked by availability.

    The query comes from the mean of the available streams (what the sequences say together at this
    pixel), the keys from each stream plus a learned embedding of which sequence it is; the values are
    the streams themselves. So the network can, say, trust the susceptibility stream where it sees a
    blooming artefact and the diffusion streams where it sees an infarct, and when one sequence is
    missing the weights renormalise over the rest.
    """

    def __init__(self, streams: int, width: int, key_width: int) -> None:
        super().__init__()
        self.query = nn.Conv2d(width, key_width, 1)
        self.key = nn.Conv2d(width, key_width, 1)
        self.sequence_embedding = nn.Parameter(torch.zeros(streams, key_width))
        nn.init.normal_(self.sequence_embedding, std=0.02)
        self.scale = 1.0 / math.sqrt(key_width)

    def weights(self, streams: Tensor, availability: Tensor) -> Tensor:
        """Attention weights (N, S, H, W), summing to 1 over the available streams at each pixel.

        The keys are never formed. A stream's score is q . (W s + b + e_s) = (W^T q) . s + q . (b + e_s),
        so the query is mapped back to the stream width once, instead of the key convolution running on
        every stream: S times fewer multiply-adds at full resolution and no (N, S, K, H, W) tensor kept
        for the backward pass (the fusion's forward and backward alone took 0.6-0.7x the time of the
        key-per-stream form, 40 slices of 64 x 64 on 2 CPU threads; same scores to float rounding).
        """
        query = self.query(masked_mean(streams, availability))  # (N, K, H, W)
        back_projection = self.key.weight[:, :, 0, 0].t()[:, :, None, None]  # (F, K, 1, 1)
        offsets = (self.key.bias[None, :] + self.sequence_embedding)[:, :, None, None]  # (S, K, 1, 1)
        scores = (streams * F.conv2d(query, back_projection)[:, None]).sum(dim=2) + F.conv2d(query, offsets)
        return masked_softmax(scores * self.scale, availability[:, :, None, None], dim=1)

    def forward(self, streams: Tensor, availability: Tensor) -> Tensor:
        weights = self.weights(streams, availability)
        return (streams * weights[:, :, None]).sum(dim=1)


class AttentionGate(nn.Module):
    """Additive attention gate of Oktay et al. (2018) on one skip connection.

    The skip feature x (full resolution of its level) is brought to the gating feature's resolution
    by a strided 2x2 convolution, added to the projected gating feature g, passed through ReLU, a 1x1
    convolution and a sigmoid, and the resulting coefficient map is upsampled back to scale x.
    """

    def __init__(self, skip_channels: int, gate_channels: int, inter_channels: int) -> None:
        super().__init__()
        self.theta = nn.Conv2d(skip_channels, inter_channels, 2, stride=2, bias=False)
        self.phi = nn.Conv2d(gate_channels, inter_channels, 1)
        self.psi = nn.Conv2d(inter_channels, 1, 1)

    def coefficients(self, skip: Tensor, gate: Tensor) -> Tensor:
        """The gate's coefficient map in [0, 1], at the skip's resolution: (N, 1, H, W)."""
        alpha = torch.sigmoid(self.psi(F.relu(self.theta(skip) + self.phi(gate))))
        return F.interpolate(alpha, size=skip.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, skip: Tensor, gate: Tensor) -> Tensor:
        return skip * self.coefficients(skip, gate)
