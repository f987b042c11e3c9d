"""The model's configuration: one frozen record that names the variant and every size.

A run's model is fully described by this record (it goes into the checkpoint and the model card as a
plain dict), so that inference and the ablation tables can rebuild exactly the network that was trained.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from thrombus.options import check_known_keys

#: Model variants. `upattllstm` is the method; the next three each remove one of its parts (the
#: ablations); `monai_attention_unet` is MONAI's AttentionUnet applied per slice, a library baseline.
ARCHITECTURES: tuple[str, ...] = ("upattllstm", "no_lstm", "no_attention", "unet2d", "monai_attention_unet")

#: Channel order of the harmonised stack (`results/harmonise/.../stack.nii.gz`).
DEFAULT_CHANNELS: tuple[str, ...] = ("susceptibility", "dwi", "adc", "flair")


@dataclass(frozen=True)
class ModelConfig:
    """Variant and sizes of the slab segmentation network.

    The defaults are sized for the CPU demo (3.5 million parameters for `upattllstm`; a training step
    on a 4 x 4 x 7 x 128 x 128 batch takes about 1 s on 2 idle CPU cores, 2 s on busy ones); on GPU
    nodes raise `base_width` to 32, `max_width` to 320 (nnU-Net's 2D sizes) and `stem_width` to 16.

    Attributes:
        architecture: one of `ARCHITECTURES`.
        channels: names of the input channels, in the stack's order (the model only uses their count;
            the names travel with the checkpoint so that inference can check the stack it is given).
        base_width: feature channels at full resolution; doubled at each of the `depth` downsamplings,
            capped at `max_width`.
        depth: number of 2x in-plane downsamplings. Inputs whose H or W is not a multiple of 2**depth
            are zero-padded inside the model and the output is cropped back.
        max_width: cap on the feature channels of the deepest levels.
        stem_width: feature channels of each per-sequence stem (one stem per channel, shared across
            slices) before the sequences are fused. The stems run at full resolution, one per
            sequence, so they cost like several encoder stages: 8 halves a CPU step against 16.
        fusion_key_width: width of the per-pixel query/key vectors of the attention across sequences.
        lstm_bidirectional: run the slice-axis ConvLSTM in both directions (a thrombus is seen from
            the slices above and below it alike; there is no causal order along Z).
        lstm_hidden_fraction: hidden channels of each LSTM direction as a fraction of its level's
            channels (0.25: 64 per direction on a 256-channel bottleneck). The gates' convolutions
            dominate the parameter count, so this keeps the recurrence from tripling the model.
        lstm_on_skips: also run a ConvLSTM on every skip connection, not only at the bottleneck
            (more context along Z at full resolution, about twice the time per step).
        lstm_kernel: in-plane kernel size of the ConvLSTM convolutions.
        norm_groups: GroupNorm groups per layer (fewer when a layer has fewer channels). GroupNorm
            works on per-sample statistics, so a sample's output never depends on the rest of the
            batch, which keeps tiny CPU batches and missing-sequence masking exact.
        negative_slope: slope of the LeakyReLU activations (nnU-Net's 0.01).
    """

    architecture: str = "upattllstm"
    channels: tuple[str, ...] = DEFAULT_CHANNELS
    base_width: int = 16
    depth: int = 4
    max_width: int = 256
    stem_width: int = 8
    fusion_key_width: int = 8
    lstm_bidirectional: bool = True
    lstm_hidden_fraction: float = 0.25
    lstm_on_skips: bool = False
    lstm_kernel: int = 3
    norm_groups: int = 8
    negative_slope: float = 0.01

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"model architecture {self.architecture!r} is unknown: choose one of {', '.join(ARCHITECTURES)}")
        if not self.channels:
            raise ValueError("the model needs at least one input channel (model.channels is empty)")
        for name in ("base_width", "depth", "max_width", "stem_width", "fusion_key_width", "norm_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.lstm_hidden_fraction <= 1:
            raise ValueError(f"model.lstm_hidden_fraction must be in (0, 1], got {self.lstm_hidden_fraction}")
        if self.lstm_kernel < 1 or self.lstm_kernel % 2 == 0:
            raise ValueError(f"model.lstm_kernel must be a positive odd number, got {self.lstm_kernel}")

    @property
    def in_channels(self) -> int:
        """Number of input channels (sequences)."""
        return len(self.channels)

    @property
    def widths(self) -> tuple[int, ...]:
        """Feature channels per resolution level, full resolution first, bottleneck last."""
        return tuple(min(self.base_width * 2**level, self.max_width) for level in range(self.depth + 1))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> ModelConfig:
        """Build from a config section (YAML or checkpoint dict); unknown keys are an error, not ignored."""
        check_known_keys(cls, values, "model")
        converted = {key: tuple(value) if isinstance(value, list) else value for key, value in values.items()}
        return cls(**converted)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples as lists), the inverse of `from_mapping`."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in dataclasses.asdict(self).items()}
