"""The dVAE quantizer of DALL-E (a baseline): Gumbel-softmax over the encoder's K logits.

    q = softmax(z_e)                      per position, K = 512 codes
    training:  z ~ RelaxedOneHotCategorical(tau, logits=z_e), z_q = z @ M
               loss term KL(q || uniform) = sum_k q_k log(K q_k)   (times beta, in loss.py)
    inference: z = argmax(z_e) (default) or z ~ Cat(q), z_q = M[z]
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..loss import kl_categorical_uniform
from .base import Quantizer, QuantizerOutput, gumbel_codes, pick_codes


class DVAEQuantizer(Quantizer):
    name = "dvae"

    def __init__(self, codebook_size: int = 512, codebook_dim: int = 16):
        super().__init__()
        self.codebook_size = codebook_size
        self.codebook = nn.Parameter(torch.randn(codebook_size, codebook_dim))  # Gaussian-normal init

    @classmethod
    def from_config(cls, cfg) -> "DVAEQuantizer":
        return cls(cfg.codebook_size, cfg.codebook_dim)

    @staticmethod
    def encoder_channels(codebook_size: int, codebook_dim: int) -> int:
        return codebook_size  # one logit per code

    def code_logits(self, z_e: torch.Tensor) -> torch.Tensor:
        """Per-position unnormalised log-probabilities over the codes, (B, K, h, w)."""
        if z_e.shape[1] != self.codebook_size:
            raise ValueError(f"expected {self.codebook_size} logits per position, got input of shape {tuple(z_e.shape)}")
        return z_e

    def forward(self, z_e: torch.Tensor, tau: float = 1.0, codes: str = "argmax") -> QuantizerOutput:
        with torch.autocast(device_type=z_e.device.type, enabled=False):
            log_q = torch.log_softmax(self.code_logits(z_e.float()), dim=1)
            kl = kl_categorical_uniform(log_q, dim=1).mean()
            z_q, indices = gumbel_codes(log_q, self.codebook, tau, self.training, codes)
        zero = torch.zeros((), device=z_e.device)
        return QuantizerOutput(z_q=z_q, indices=indices, kl=kl, aux_loss=zero)

    def hard_codes(self, z_e: torch.Tensor, codes: str = "argmax",
                   with_uncertainty: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        with torch.autocast(device_type=z_e.device.type, enabled=False):
            return pick_codes(torch.log_softmax(self.code_logits(z_e.float()), dim=1), codes), None
