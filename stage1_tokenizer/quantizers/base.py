"""What every quantizer returns, and the small interface the model relies on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn


@dataclass
class QuantizerOutput:
    z_q: torch.Tensor                     # (B, D, h, w) decoder input
    indices: torch.Tensor                 # (B, h, w) hard codes (argmax of the relaxed sample in training)
    kl: torch.Tensor                      # scalar, mean over positions, multiplied by beta in the loss
    aux_loss: torch.Tensor                # scalar, already weighted (e.g. VQ commitment); 0 if none
    uncertainty: Optional[torch.Tensor] = None   # (B, h, w) evidential uncertainty K/S, if defined


class Quantizer(nn.Module):
    """Base class: maps encoder outputs (B, C, h, w) to codes and decoder inputs.

    ``forward(z_e, tau=..., codes=...)`` relaxes in training mode and picks hard
    codes in eval mode, by ``codes='argmax'`` (deterministic) or ``'sample'``.
    """

    codebook: nn.Parameter

    @classmethod
    def from_config(cls, cfg) -> "Quantizer":
        """Build from a ``ModelConfig`` (each quantizer picks the fields it needs)."""
        raise NotImplementedError

    @staticmethod
    def encoder_channels(codebook_size: int, codebook_dim: int) -> int:
        """Channels the encoder must output per position for this quantizer."""
        raise NotImplementedError

    def embed(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, h, w) code indices -> (B, D, h, w) codebook vectors."""
        return self.codebook[indices].permute(0, 3, 1, 2).contiguous()
