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
    # scalar, nats per image of a latent term that the ELBO pairs with a Gaussian decoder whose variance is
    # the current MSE (SQ-VAE); the model adds (2 * sg(MSE) / D) * latent_nats to aux_loss, D = C*H*W
    latent_nats: Optional[torch.Tensor] = None


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


def gumbel_codes(log_probs: torch.Tensor, codebook: torch.Tensor, tau: float, training: bool, codes: str,
                 argmax_scores: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes and decoder inputs from per-position log-probabilities (B, K, h, w), in float32.

    training: a Gumbel-softmax relaxed one-hot sample at temperature ``tau``,
              z_q = soft @ codebook, hard codes = its argmax (distributed as Cat(p)).
    eval:     ``codes='argmax'`` (of ``argmax_scores``, default the log-probabilities)
              or ``'sample'`` (z ~ Cat(p)); z_q = codebook[z].
    Returns (z_q (B, D, h, w), indices (B, h, w)).
    """
    if training:
        gumbel = -torch.empty_like(log_probs).exponential_().log()
        soft = torch.softmax((log_probs + gumbel) / tau, dim=1)
        return torch.einsum("bkhw,kd->bdhw", soft, codebook.float()), soft.argmax(dim=1)
    if codes == "argmax":
        indices = (log_probs if argmax_scores is None else argmax_scores).argmax(dim=1)
    elif codes == "sample":
        b, k, h, w = log_probs.shape
        flat = log_probs.permute(0, 2, 3, 1).reshape(-1, k)
        indices = torch.multinomial(flat.softmax(dim=-1), 1).view(b, h, w)
    else:
        raise ValueError(f"codes must be 'argmax' or 'sample', got {codes!r}")
    return codebook[indices].permute(0, 3, 1, 2).float(), indices
