"""The VQ-VAE paper's own encoder and decoder (van den Oord et al. 2017, CIFAR-10 setting).

The EdVAE paper trained VQ-VAE-EMA and GS-VQ-VAE on this architecture
(``model.architecture=vqvae``); by default every quantizer shares the EdVAE
architecture instead, so that only the quantizer differs.

    encoder: 4x4 conv stride 2 (hidden/2) -> ReLU -> 4x4 conv stride 2 (hidden) -> ReLU -> 3x3 conv
             -> 2 residual blocks (ReLU, 3x3 conv to hidden/8, ReLU, 1x1 conv) -> ReLU -> 1x1 conv to D
    decoder: 3x3 conv (hidden) -> 2 residual blocks -> ReLU -> 4x4 transposed conv stride 2 (hidden/2)
             -> ReLU -> 4x4 transposed conv stride 2 to RGB

Both change the spatial size by 4, like the EdVAE networks (8x8 tokens for 32x32 images).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


class ResidualBlock(nn.Module):
    """x + (ReLU -> 3x3 conv to ``hidden`` -> ReLU -> 1x1 conv back)."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.res_path = nn.Sequential(OrderedDict(
            relu_1=nn.ReLU(), conv_1=nn.Conv2d(channels, hidden, 3, padding=1),
            relu_2=nn.ReLU(), conv_2=nn.Conv2d(hidden, channels, 1),
        ))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res_path(x)


def _check(hidden: int) -> None:
    if hidden < 8 or hidden % 8:
        raise ValueError(f"the VQ-VAE architecture needs model.channels to be a multiple of 8 (>= 8), got {hidden}")


class VQVAEEncoder(nn.Module):
    def __init__(self, image_channels: int, hidden: int, out_channels: int, num_res_blocks: int = 2):
        super().__init__()
        _check(hidden)
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            down_1=nn.Conv2d(image_channels, hidden // 2, 4, stride=2, padding=1), relu_1=nn.ReLU(),
            down_2=nn.Conv2d(hidden // 2, hidden, 4, stride=2, padding=1), relu_2=nn.ReLU(),
            conv=nn.Conv2d(hidden, hidden, 3, padding=1),
        )
        for i in range(1, num_res_blocks + 1):
            layers[f"res_{i}"] = ResidualBlock(hidden, hidden // 8)
        layers["relu_out"] = nn.ReLU()
        layers["output"] = nn.Conv2d(hidden, out_channels, 1)
        self.blocks = nn.Sequential(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class VQVAEDecoder(nn.Module):
    def __init__(self, code_channels: int, hidden: int, image_channels: int, num_res_blocks: int = 2):
        super().__init__()
        _check(hidden)
        layers: OrderedDict[str, nn.Module] = OrderedDict(conv=nn.Conv2d(code_channels, hidden, 3, padding=1))
        for i in range(1, num_res_blocks + 1):
            layers[f"res_{i}"] = ResidualBlock(hidden, hidden // 8)
        layers.update(
            relu_1=nn.ReLU(), up_1=nn.ConvTranspose2d(hidden, hidden // 2, 4, stride=2, padding=1),
            relu_2=nn.ReLU(), up_2=nn.ConvTranspose2d(hidden // 2, image_channels, 4, stride=2, padding=1),
        )
        self.blocks = nn.Sequential(layers)

    def forward(self, z_q: torch.Tensor) -> torch.Tensor:
        return self.blocks(z_q)
