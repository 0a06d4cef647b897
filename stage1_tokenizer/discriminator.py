"""A patch discriminator and the hinge losses of adversarial decoder fine-tuning.

Not part of the EdVAE paper. An MSE-trained decoder predicts the mean of what a code could
stand for, which is blurred, and FID punishes blur hard. Adding an adversarial term to the
decoder's loss (as VQGAN does for its whole autoencoder) makes the decoder commit to sharp
detail; the tokens do not change because only the decoder is trained
(``stage1_tokenizer.finetune_decoder --adversarial-weight``).

The discriminator scores overlapping patches (PatchGAN): strided 4x4 convolutions with
spectral normalisation (no batch statistics, so it behaves the same under one or many
processes and in evaluation), LeakyReLU 0.2, one logit per patch.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


class PatchDiscriminator(nn.Module):
    """image (B, C, H, W) in [-0.5, 0.5] -> patch logits (B, 1, H', W'), H' = H / 2**layers - 2.

    ``layers`` strided convolutions double the width from ``channels`` (capped at 8x), then one
    stride-1 convolution and a stride-1 output convolution; each output sees a receptive field of
    34 pixels (2 layers, the default at 64x64), so it judges texture and local structure, not the whole face.
    """

    def __init__(self, image_channels: int = 3, channels: int = 64, layers: int = 2):
        super().__init__()
        if image_channels < 1 or channels < 1 or layers < 1:
            raise ValueError(f"image_channels, channels and layers must be positive, got "
                             f"{image_channels}, {channels}, {layers}")
        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        width = image_channels
        for i in range(layers + 1):  # `layers` stride-2 convolutions, then one at stride 1
            out = channels * min(2 ** i, 8)
            blocks[f"conv_{i + 1}"] = spectral_norm(nn.Conv2d(width, out, 4, stride=2 if i < layers else 1, padding=1))
            blocks[f"act_{i + 1}"] = nn.LeakyReLU(0.2)
            width = out
        blocks["logits"] = spectral_norm(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(blocks)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4:
            raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")
        return self.net(images)


def frozen_logits(discriminator: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``discriminator(images)`` differentiable in ``images`` only: the decoder's adversarial term.

    The decoder's step needs d D(x) / d x, not the discriminator's own weight gradients; with its
    parameters frozen for the forward pass, the backward neither computes those nor leaves them
    behind. Pass the bare module, not a DistributedDataParallel wrapper: this forward is not one of
    the discriminator's training steps, so its reducer must not see it.
    """
    params = [p for p in discriminator.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        return discriminator(images)
    finally:  # the graph is already recorded: restoring the flags does not reach back into it
        for p in params:
            p.requires_grad_(True)


def discriminator_hinge_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """mean relu(1 - D(real)) + mean relu(1 + D(fake)), averaged over the two halves as in VQGAN."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The decoder's side of the hinge game: raise the discriminator's score of its images."""
    return -fake_logits.mean()


def adaptive_weight(reconstruction_loss: torch.Tensor, adversarial_loss: torch.Tensor, last_layer: torch.Tensor,
                    max_weight: float = 1e4) -> torch.Tensor:
    """VQGAN's balance: ||d rec / d W|| / ||d adv / d W|| at the decoder's last layer W (detached).

    It puts the adversarial gradient on the scale of the reconstruction gradient whatever the
    magnitudes of the two losses, so one ``--adversarial-weight`` works across losses and widths.
    """
    rec_grad, = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)
    adv_grad, = torch.autograd.grad(adversarial_loss, last_layer, retain_graph=True)
    return (rec_grad.norm() / (adv_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()
