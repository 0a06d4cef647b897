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
    # the current MSE (SQ-VAE); the objective (loss.py) weights it by 2 * sg(MSE) / D, D = C*H*W
    latent_nats: Optional[torch.Tensor] = None


class Quantizer(nn.Module):
    """Base class: maps encoder outputs (B, C, h, w) to codes and decoder inputs.

    ``forward(z_e, tau=..., codes=...)`` relaxes in training mode and picks hard
    codes in eval mode, by ``codes='argmax'`` (deterministic) or ``'sample'``, and
    returns the loss terms too. ``hard_codes(z_e, codes=..., with_uncertainty=...)``
    is the tokenizer's inference path: the eval-mode hard codes (and the evidential
    uncertainty when asked for and defined), nothing else computed and no state changed.
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

    def hard_codes(self, z_e: torch.Tensor, codes: str = "argmax",
                   with_uncertainty: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Eval-mode codes (B, h, w) of encoder outputs, and their uncertainty (B, h, w) or None."""
        raise NotImplementedError

    def embed(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, h, w) code indices -> (B, D, h, w) codebook vectors."""
        return self.codebook[indices].permute(0, 3, 1, 2).contiguous()


def pick_codes(log_probs: Optional[torch.Tensor], codes: str,
               argmax_scores: torch.Tensor | None = None) -> torch.Tensor:
    """Hard codes (B, h, w): ``'argmax'`` of ``argmax_scores`` (default the log-probabilities (B, K, h, w)),
    or ``'sample'``, z ~ Cat(softmax(log_probs)) per position."""
    if codes == "argmax":
        return (log_probs if argmax_scores is None else argmax_scores).argmax(dim=1)
    if codes == "sample":
        b, k, h, w = log_probs.shape
        flat = log_probs.permute(0, 2, 3, 1).reshape(-1, k)
        return torch.multinomial(flat.softmax(dim=-1), 1).view(b, h, w)
    raise ValueError(f"codes must be 'argmax' or 'sample', got {codes!r}")


def gumbel_codes(log_probs: torch.Tensor, codebook: torch.Tensor, tau: float, training: bool, codes: str,
                 argmax_scores: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes and decoder inputs from per-position log-probabilities (B, K, h, w), in float32.

    training: a Gumbel-softmax relaxed one-hot sample at temperature ``tau``,
              z_q = soft @ codebook, hard codes = its argmax (distributed as Cat(p)).
    eval:     ``pick_codes`` (``'argmax'`` or ``'sample'``); z_q = codebook[z].
    Returns (z_q (B, D, h, w), indices (B, h, w)).
    """
    if training:
        gumbel = -torch.empty_like(log_probs).exponential_().log()
        soft = torch.softmax((log_probs + gumbel) / tau, dim=1)
        return torch.einsum("bkhw,kd->bdhw", soft, codebook.float()), soft.argmax(dim=1)
    indices = pick_codes(log_probs, codes, argmax_scores)
    return codebook[indices].permute(0, 3, 1, 2).float(), indices
