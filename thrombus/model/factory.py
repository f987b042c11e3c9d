"""Building a model from its configuration, and counting what it learns."""

from __future__ import annotations

from torch import nn

from thrombus.model.baselines import MonaiAttentionUNet
from thrombus.model.config import ModelConfig
from thrombus.model.network import SlabUNet


def build_model(config: ModelConfig) -> nn.Module:
    """The network named by `config.architecture`, with freshly initialised weights.

    Every variant takes (x: (B, C, D, H, W), availability: (B, C)) and returns logits (B, 1, D, H, W);
    seed torch (`torch.manual_seed`) before calling for reproducible initial weights.
    """
    if config.architecture == "monai_attention_unet":
        return MonaiAttentionUNet(config)
    return SlabUNet(config)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters, for the model card and the ablation table."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
