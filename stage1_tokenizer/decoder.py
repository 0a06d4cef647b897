"""The decoder of Appendix D.2: quantized vectors z_q -> image (in the model's [-0.5, 0.5] space)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

from .blocks import DecoderBlock, conv, init_conv_weights


class Decoder(nn.Module):
    """[blocks at n*m_G] -> Upsample -> ... -> [blocks at n*m_1] -> ReLU -> 1x1 conv to image channels.

    The first block takes the ``codebook_dim`` (16) channels of z_q directly;
    its 1x1 identity path widens them.
    """

    def __init__(self, code_channels: int, channels: int, channel_mults: Sequence[int],
                 blocks_per_group: int, image_channels: int, zero_bias: bool = False):
        super().__init__()
        post_gain = 1.0 / (len(channel_mults) * blocks_per_group) ** 2
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        width = code_channels
        reversed_mults = list(reversed(channel_mults))
        for g, mult in enumerate(reversed_mults, start=1):
            group: OrderedDict[str, nn.Module] = OrderedDict()
            for b in range(1, blocks_per_group + 1):
                group[f"block_{b}"] = DecoderBlock(width, channels * mult, post_gain)
                width = channels * mult
            if g < len(reversed_mults):
                group["upsample"] = nn.Upsample(scale_factor=2, mode="nearest")
            layers[f"group_{g}"] = nn.Sequential(group)
        layers["output"] = nn.Sequential(OrderedDict(relu=nn.ReLU(), conv=conv(width, image_channels, 1)))
        self.blocks = nn.Sequential(layers)
        init_conv_weights(self, zero_bias=zero_bias)

    def forward(self, z_q: torch.Tensor) -> torch.Tensor:
        return self.blocks(z_q)
