"""The encoder of Appendix D.2: image -> per-position quantizer inputs (e.g. 512 logits)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

from .blocks import EncoderBlock, conv, init_conv_weights


class Encoder(nn.Module):
    """Conv(kw) -> [blocks at n*m_1] -> MaxPool -> ... -> [blocks at n*m_G] -> ReLU -> 1x1 conv.

    With the paper's settings (n=128, mults 1/2/4, 2 blocks per group) the
    spatial size shrinks by 4 and the output has ``out_channels`` (512) maps.
    """

    def __init__(self, image_channels: int, channels: int, channel_mults: Sequence[int],
                 blocks_per_group: int, first_kernel: int, out_channels: int, zero_bias: bool = False):
        super().__init__()
        post_gain = 1.0 / (len(channel_mults) * blocks_per_group) ** 2
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["input"] = conv(image_channels, channels, first_kernel)
        width = channels
        for g, mult in enumerate(channel_mults, start=1):
            group: OrderedDict[str, nn.Module] = OrderedDict()
            for b in range(1, blocks_per_group + 1):
                group[f"block_{b}"] = EncoderBlock(width, channels * mult, post_gain)
                width = channels * mult
            if g < len(channel_mults):
                group["pool"] = nn.MaxPool2d(kernel_size=2)
            layers[f"group_{g}"] = nn.Sequential(group)
        layers["output"] = nn.Sequential(OrderedDict(relu=nn.ReLU(), conv=conv(width, out_channels, 1)))
        self.blocks = nn.Sequential(layers)
        init_conv_weights(self, zero_bias=zero_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)
