"""UpAttLLSTM and its ablations: one 2.5D slab network whose parts are switched by the architecture.

Data flow for a slab (B, C, D, H, W) with availability (B, C):

1. zero the missing channels, pad H and W to a multiple of 2**depth, treat the B*D slices as a batch;
2. stems: one small 2D encoder per sequence (weights shared across slices), or for `unet2d` one
   encoder over the stacked channels;
3. fusion of the sequence streams: attention masked by availability (`upattllstm`, `no_lstm`) or the
   mean over available streams (`no_attention`);
4. a shared 2D U-Net encoder (strided convolutions, GroupNorm, LeakyReLU);
5. a residual bidirectional ConvLSTM along the slices at the bottleneck (and on every skip level when
   `lstm_on_skips`), except in `no_lstm` and `unet2d`;
6. a U-Net decoder whose skips pass through attention gates (except `no_attention`, `unet2d`);
7. a 1x1 head: one logit per voxel, cropped back and regrouped to (B, 1, D, H, W).

Each ablation differs from `upattllstm` by exactly one part, so a table of the variants reads as the
contribution of that part.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from thrombus.model.attention import AttentionGate, MeanFusion, SequenceAttentionFusion
from thrombus.model.blocks import (
    ConvBlock,
    check_slab,
    crop_padding,
    pad_to_multiple,
    run_side_by_side,
    slab_to_slices,
    slices_to_slab,
    zero_missing,
)
from thrombus.model.config import ModelConfig
from thrombus.model.convlstm import SliceConvLSTM


@dataclass(frozen=True)
class Parts:
    """Which parts a variant has."""

    fusion: str  # "attention" | "mean" | "stacked"
    gates: bool
    lstm: bool


#: The parts of each variant built by `SlabUNet` (the MONAI baseline is built elsewhere).
VARIANT_PARTS: dict[str, Parts] = {
    "upattllstm": Parts(fusion="attention", gates=True, lstm=True),
    "no_lstm": Parts(fusion="attention", gates=True, lstm=False),
    "no_attention": Parts(fusion="mean", gates=False, lstm=True),
    "unet2d": Parts(fusion="stacked", gates=False, lstm=False),
}


class SequenceStems(nn.Module):
    """One small 2D encoder per sequence, shared across slices: (N, S, H, W) -> (N, S, F, H, W).

    Separate weights per sequence because the sequences do not share a contrast (the thrombus is dark
    on SWI, the infarct bright on DWI and dark on ADC); a missing sequence's stem sees only zeros and
    its stream is masked out by the fusion anyway.
    """

    def __init__(self, streams: int, width: int, config: ModelConfig) -> None:
        super().__init__()
        self.stems = nn.ModuleList(
            ConvBlock(1, width, groups=config.norm_groups, negative_slope=config.negative_slope) for _ in range(streams)
        )

    def forward(self, x: Tensor) -> Tensor:
        features = run_side_by_side(list(self.stems), x)
        return features.reshape(x.shape[0], len(self.stems), -1, *features.shape[-2:])


class SlabUNet(nn.Module):
    """UpAttLLSTM (`upattllstm`) and the ablations `no_lstm`, `no_attention`, `unet2d`.

    forward(x: (B, C, D, H, W), availability: (B, C) of 0/1) -> logits (B, 1, D, H, W).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.parts = VARIANT_PARTS[config.architecture]
        widths = config.widths
        norm = {"groups": config.norm_groups, "negative_slope": config.negative_slope}
        streams = config.in_channels
        if self.parts.fusion == "stacked":
            self.stems: SequenceStems | None = None
            self.fusion: nn.Module | None = None
            first_in = streams
        else:
            self.stems = SequenceStems(streams, config.stem_width, config)
            self.fusion = (
                SequenceAttentionFusion(streams, config.stem_width, config.fusion_key_width)
                if self.parts.fusion == "attention"
                else MeanFusion()
            )
            first_in = config.stem_width
        self.encoder = nn.ModuleList(
            [ConvBlock(first_in, widths[0], **norm)]
            + [ConvBlock(widths[level - 1], widths[level], stride=2, **norm) for level in range(1, len(widths))]
        )
        lstm_levels = list(range(len(widths))) if config.lstm_on_skips else [config.depth]
        self.lstms = nn.ModuleDict(
            {
                str(level): SliceConvLSTM(
                    widths[level], config.lstm_bidirectional, config.lstm_kernel, config.lstm_hidden_fraction
                )
                for level in lstm_levels
            }
            if self.parts.lstm
            else {}
        )
        self.gates = nn.ModuleList(
            [AttentionGate(widths[level], widths[level + 1], max(widths[level] // 2, 1)) for level in range(config.depth)]
            if self.parts.gates
            else []
        )
        self.upsamples = nn.ModuleList(
            [nn.ConvTranspose2d(widths[level + 1], widths[level], 2, stride=2) for level in range(config.depth)]
        )
        self.decoder = nn.ModuleList([ConvBlock(2 * widths[level], widths[level], **norm) for level in range(config.depth)])
        self.head = nn.Conv2d(widths[0], 1, 1)

    def fuse(self, slices: Tensor, availability: Tensor) -> Tensor:
        """Per-slice input (N, C, H, W) to the first encoder level's input."""
        if self.stems is None or self.fusion is None:
            return slices
        return self.fusion(self.stems(slices), availability)

    def encode(self, x: Tensor, depth: int) -> list[Tensor]:
        """Encoder features per level (full resolution first), after the slice recurrence where present.

        A recurrence on a skip level sits in the encoder path, so the deeper levels see its output too.
        """
        features = []
        for level, block in enumerate(self.encoder):
            x = block(x)
            if str(level) in self.lstms:
                x = self.lstms[str(level)](x, depth)
            features.append(x)
        return features

    def decode(self, features: list[Tensor]) -> Tensor:
        """U-Net decoder from the bottleneck up, gating each skip with the coarser decoder feature."""
        x = features[-1]
        for level in reversed(range(self.config.depth)):
            skip = features[level]
            if self.gates:
                skip = self.gates[level](skip, x)
            x = self.decoder[level](torch.cat([self.upsamples[level](x), skip], dim=1))
        return self.head(x)

    def forward(self, x: Tensor, availability: Tensor) -> Tensor:
        check_slab(x, availability, self.config.in_channels)
        depth = x.shape[2]
        x = zero_missing(x, availability)
        padded, pads = pad_to_multiple(slab_to_slices(x), 2**self.config.depth)
        per_slice_availability = availability.repeat_interleave(depth, dim=0)
        logits = self.decode(self.encode(self.fuse(padded, per_slice_availability), depth))
        return slices_to_slab(crop_padding(logits, pads), depth)
