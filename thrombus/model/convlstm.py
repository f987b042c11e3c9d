"""Convolutional LSTM along the slice axis: the recurrence that makes the 2D U-Net 2.5D.

Thrombi are a few millimetres wide but 5-25 mm long and run obliquely through thick axial slices, so
one slice rarely shows enough; the LSTM carries what the neighbouring slices showed. It is bidirectional
by default (no causal order along Z) and residual: the block adds what the recurrence learned to the
per-slice features, so a slab of one slice, or an untrained LSTM, still leaves the 2D path intact.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ConvLSTMDirection(nn.Module):
    """One direction of a ConvLSTM (Shi et al. 2015) over the slices of a slab.

    The input-to-gates convolution runs on all slices in one call; only the hidden-to-gates
    convolution sits in the loop over slices, which halves the sequential work.
    """

    def __init__(self, in_channels: int, hidden_channels: int, kernel: int) -> None:
        super().__init__()
        self.hidden_channels = hidden_channels
        self.input_gates = nn.Conv2d(in_channels, 4 * hidden_channels, kernel, padding=kernel // 2)
        self.hidden_gates = nn.Conv2d(hidden_channels, 4 * hidden_channels, kernel, padding=kernel // 2, bias=False)
        with torch.no_grad():  # forget-gate bias 1: remember by default (Jozefowicz et al. 2015)
            self.input_gates.bias.zero_()
            self.input_gates.bias[hidden_channels : 2 * hidden_channels].fill_(1.0)

    def forward(self, x: Tensor, reverse: bool = False) -> Tensor:
        """(B, D, C, H, W) -> hidden states (B, D, hidden, H, W), run from the last slice if `reverse`."""
        batch, depth, channels, height, width = x.shape
        gates_in = self.input_gates(x.reshape(batch * depth, channels, height, width))
        gates_in = gates_in.reshape(batch, depth, 4 * self.hidden_channels, height, width)
        hidden = x.new_zeros(batch, self.hidden_channels, height, width)
        cell = torch.zeros_like(hidden)
        outputs: list[Tensor] = [hidden] * depth
        order = range(depth - 1, -1, -1) if reverse else range(depth)
        for index in order:
            gates = gates_in[:, index] + self.hidden_gates(hidden)
            in_gate, forget_gate, out_gate, candidate = gates.chunk(4, dim=1)
            cell = torch.sigmoid(forget_gate) * cell + torch.sigmoid(in_gate) * torch.tanh(candidate)
            hidden = torch.sigmoid(out_gate) * torch.tanh(cell)
            outputs[index] = hidden
        return torch.stack(outputs, dim=1)


class SliceConvLSTM(nn.Module):
    """Residual (bi)directional ConvLSTM over the slice axis of per-slice features.

    Works on the 2D network's layout (B*D, C, H, W) and needs the slab depth D to regroup the slices.
    Each direction has `hidden_fraction * C` hidden channels, and a 1x1 convolution maps the
    concatenated hidden states back to C before the residual sum.
    """

    def __init__(self, channels: int, bidirectional: bool = True, kernel: int = 3, hidden_fraction: float = 0.25) -> None:
        super().__init__()
        hidden = max(round(channels * hidden_fraction), 1)
        self.forward_lstm = ConvLSTMDirection(channels, hidden, kernel)
        self.backward_lstm = ConvLSTMDirection(channels, hidden, kernel) if bidirectional else None
        directions = 2 if bidirectional else 1
        self.project = nn.Conv2d(directions * hidden, channels, 1)

    def forward(self, x: Tensor, depth: int) -> Tensor:
        slices, channels, height, width = x.shape
        slab = x.reshape(slices // depth, depth, channels, height, width)
        hidden = self.forward_lstm(slab)
        if self.backward_lstm is not None:
            hidden = torch.cat([hidden, self.backward_lstm(slab, reverse=True)], dim=2)
        hidden = hidden.reshape(slices, -1, height, width)
        return x + self.project(hidden)
