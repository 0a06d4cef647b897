"""The evidential (Dirichlet) quantizer of EdVAE.

Per position, the encoder gives K logits z_e. Then (Section 4, Appendix B-D):

    alpha = exp(min(z_e, clamp_max)) + 1          Dirichlet concentrations
    S     = sum_k alpha_k,  pi = alpha / S         posterior mean of the code probabilities
    u     = K / S                                  evidential uncertainty (Sensoy et al. 2018)

training:   z ~ RelaxedOneHotCategorical(tau, probs=pi), z_q = z @ M,
            loss term KL(Dir(alpha) || Dir(1)) (times beta, in loss.py)
inference:  z = argmax(z_e) (default) or z ~ Categorical(pi) (Algorithm 2), z_q = M[z]

Everything here runs in float32, whatever autocast says; the KL is loss.py's
``dirichlet_kl_per_position``, exact in float32 even for alphas near e^20.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..loss import dirichlet_kl_per_position
from .base import Quantizer, QuantizerOutput, gumbel_codes, pick_codes


class EdVAEQuantizer(Quantizer):
    name = "edvae"

    def __init__(self, codebook_size: int = 512, codebook_dim: int = 16, clamp_max: float = 20.0):
        super().__init__()
        if codebook_size < 2 or codebook_dim < 1:
            raise ValueError(f"need codebook_size >= 2 and codebook_dim >= 1, got {codebook_size} x {codebook_dim}")
        self.codebook_size = codebook_size
        self.clamp_max = float(clamp_max)
        self.codebook = nn.Parameter(torch.randn(codebook_size, codebook_dim))  # Gaussian-normal init

    @classmethod
    def from_config(cls, cfg) -> "EdVAEQuantizer":
        return cls(cfg.codebook_size, cfg.codebook_dim, cfg.clamp_max)

    @staticmethod
    def encoder_channels(codebook_size: int, codebook_dim: int) -> int:
        return codebook_size  # one logit per code

    def _logits(self, z_e: torch.Tensor) -> torch.Tensor:
        if z_e.shape[1] != self.codebook_size:
            raise ValueError(f"expected {self.codebook_size} logits per position, got input of shape {tuple(z_e.shape)}")
        return z_e.float()

    def _concentrations(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """alpha (B, K, h, w) and S (B, 1, h, w) from clamped logits."""
        alpha = torch.exp(logits.clamp(max=self.clamp_max)) + 1.0
        return alpha, alpha.sum(dim=1, keepdim=True)

    def forward(self, z_e: torch.Tensor, tau: float = 1.0, codes: str = "argmax") -> QuantizerOutput:
        with torch.autocast(device_type=z_e.device.type, enabled=False):
            logits = self._logits(z_e)
            # 1. Dirichlet concentrations from clamped logits; pi is their mean.
            alpha, strength = self._concentrations(logits)                      # (B, K, h, w), S
            log_pi = torch.log(alpha) - torch.log(strength)
            uncertainty = (self.codebook_size / strength).squeeze(1)            # u = K / S
            # 2. KL to the flat Dirichlet prior, per position, averaged.
            kl = dirichlet_kl_per_position(alpha, dim=1).mean()
            # 3. Training: Gumbel-softmax relaxed sample over pi at temperature tau. Evaluation: hard codes,
            #    the argmax of the (unclamped) logits, or a draw z ~ Cat(pi) (Algorithm 2).
            z_q, indices = gumbel_codes(log_pi, self.codebook, tau, self.training, codes, argmax_scores=logits)
        zero = torch.zeros((), device=z_e.device)
        return QuantizerOutput(z_q=z_q, indices=indices, kl=kl, aux_loss=zero, uncertainty=uncertainty)

    def hard_codes(self, z_e: torch.Tensor, codes: str = "argmax",
                   with_uncertainty: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        with torch.autocast(device_type=z_e.device.type, enabled=False):
            logits = self._logits(z_e)
            uncertainty = log_pi = None
            if with_uncertainty or codes == "sample":
                alpha, strength = self._concentrations(logits)
                uncertainty = (self.codebook_size / strength).squeeze(1) if with_uncertainty else None
                log_pi = torch.log(alpha) - torch.log(strength) if codes == "sample" else None
            return pick_codes(log_pi, codes, argmax_scores=logits if codes == "argmax" else None), uncertainty
