"""Residual blocks of the DALL-E dVAE, as the EdVAE release uses them (Appendix D.2, Table 4).

Both blocks compute ``identity(x) + post_gain * residual(x)``: the residual
branch has ``width/4`` hidden channels and is scaled by ``post_gain = 1/L^2``
(L = number of blocks in the encoder or decoder), and the identity path is a
1x1 convolution only when the width changes.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


def conv(in_channels: int, out_channels: int, kernel: int) -> nn.Conv2d:
    """A stride-1 'same' convolution (1x1 convolutions have no padding; Table 4's padding=1 is a typo)."""
    return nn.Conv2d(in_channels, out_channels, kernel, padding=(kernel - 1) // 2)


class _ResBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, post_gain: float, kernels: tuple[int, ...]):
        super().__init__()
        if in_channels < 1 or out_channels < 4 or out_channels % 4:
            raise ValueError(f"block widths must be >= 1 in and a multiple of 4 out, got {in_channels} -> {out_channels}")
        hidden = out_channels // 4
        widths = [in_channels] + [hidden] * (len(kernels) - 1) + [out_channels]
        self.id_path = conv(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        layers = OrderedDict()
        for i, k in enumerate(kernels, start=1):
            layers[f"relu_{i}"] = nn.ReLU()
            layers[f"conv_{i}"] = conv(widths[i - 1], widths[i], k)
        self.res_path = nn.Sequential(layers)
        self.post_gain = post_gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.id_path(x) + self.post_gain * self.res_path(x)


class EncoderBlock(_ResBlock):
    """3 x (ReLU -> 3x3 conv) -> ReLU -> 1x1 conv, plus the identity path."""

    def __init__(self, in_channels: int, out_channels: int, post_gain: float):
        super().__init__(in_channels, out_channels, post_gain, kernels=(3, 3, 3, 1))


class DecoderBlock(_ResBlock):
    """ReLU -> 1x1 conv -> 3 x (ReLU -> 3x3 conv), plus the identity path."""

    def __init__(self, in_channels: int, out_channels: int, post_gain: float):
        super().__init__(in_channels, out_channels, post_gain, kernels=(1, 3, 3, 3))


def init_conv_weights(module: nn.Module, std: float = 0.02, zero_bias: bool = False) -> None:
    """The release's initialisation: conv weights ~ N(0, std); biases keep PyTorch's default unless ``zero_bias``."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if zero_bias and m.bias is not None:
                nn.init.zeros_(m.bias)
