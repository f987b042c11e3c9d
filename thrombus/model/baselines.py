"""Library baseline: MONAI's AttentionUnet (Oktay et al. 2018) applied slice by slice.

It is the reference implementation of attention gates, run with the same widths and depth as ours, so
a table can separate what our attention gates do from what the sequence fusion and the recurrence add.
It stacks the channels like `unet2d` (missing channels zero-filled) and uses MONAI's own BatchNorm.
MONAI is imported only when this variant is built, so the other variants do not need it.
"""

from __future__ import annotations

from torch import Tensor, nn

from thrombus.model.blocks import check_slab, crop_padding, pad_to_multiple, slab_to_slices, slices_to_slab, zero_missing
from thrombus.model.config import ModelConfig


class MonaiAttentionUNet(nn.Module):
    """`monai.networks.nets.AttentionUnet(spatial_dims=2)` on every slice of the slab.

    forward(x: (B, C, D, H, W), availability: (B, C)) -> logits (B, 1, D, H, W).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        try:
            from monai.networks.nets import AttentionUnet
        except ImportError as error:
            raise ImportError(
                "the 'monai_attention_unet' baseline needs MONAI: pip install monai (1.6.1 is the version checked)"
            ) from error
        self.config = config
        self.network = AttentionUnet(
            spatial_dims=2,
            in_channels=config.in_channels,
            out_channels=1,
            channels=config.widths,
            strides=(2,) * config.depth,
        )

    def forward(self, x: Tensor, availability: Tensor) -> Tensor:
        check_slab(x, availability, self.config.in_channels)
        depth = x.shape[2]
        padded, pads = pad_to_multiple(slab_to_slices(zero_missing(x, availability)), 2**self.config.depth)
        return slices_to_slab(crop_padding(self.network(padded), pads), depth)
