"""The evidential (Dirichlet) quantizer of EdVAE.

Per position, the encoder gives K logits z_e. Then (Section 4, Appendix B-D):

    alpha = exp(min(z_e, clamp_max)) + 1          Dirichlet concentrations
    S     = sum_k alpha_k,  pi = alpha / S         posterior mean of the code probabilities
    u     = K / S                                  evidential uncertainty (Sensoy et al. 2018)

training:   z ~ RelaxedOneHotCategorical(tau, probs=pi), z_q = z @ M,
            loss term KL(Dir(alpha) || Dir(1)) (times beta, outside)
inference:  z = argmax(z_e) (default) or z ~ Categorical(pi) (Algorithm 2), z_q = M[z]

Everything here runs in float32 (float64 for the KL), whatever autocast says.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Quantizer, QuantizerOutput, gumbel_codes
from .dirichlet import kl_dirichlet_uniform


class DirichletQuantizer(Quantizer):
    name = "edvae"

    def __init__(self, codebook_size: int = 512, codebook_dim: int = 16, clamp_max: float = 20.0):
        super().__init__()
        if codebook_size < 2 or codebook_dim < 1:
            raise ValueError(f"need codebook_size >= 2 and codebook_dim >= 1, got {codebook_size} x {codebook_dim}")
        self.codebook_size = codebook_size
        self.clamp_max = float(clamp_max)
        self.codebook = nn.Parameter(torch.randn(codebook_size, codebook_dim))  # Gaussian-normal init

    @classmethod
    def from_config(cls, cfg) -> "DirichletQuantizer":
        return cls(cfg.codebook_size, cfg.codebook_dim, cfg.clamp_max)

    @staticmethod
    def encoder_channels(codebook_size: int, codebook_dim: int) -> int:
        return codebook_size  # one logit per code

    def forward(self, z_e: torch.Tensor, tau: float = 1.0, codes: str = "argmax") -> QuantizerOutput:
        if z_e.shape[1] != self.codebook_size:
            raise ValueError(f"expected {self.codebook_size} logits per position, got input of shape {tuple(z_e.shape)}")
        with torch.autocast(device_type=z_e.device.type, enabled=False):
            logits = z_e.float()
            # 1. Dirichlet concentrations from clamped logits; pi is their mean.
            alpha = torch.exp(logits.clamp(max=self.clamp_max)) + 1.0          # (B, K, h, w)
            strength = alpha.sum(dim=1, keepdim=True)                           # S
            log_pi = torch.log(alpha) - torch.log(strength)
            uncertainty = (self.codebook_size / strength).squeeze(1)            # u = K / S
            # 2. KL to the flat Dirichlet prior, per position, averaged (float64: see dirichlet.py).
            kl_dtype = torch.float32 if z_e.device.type == "mps" else torch.float64
            kl = kl_dirichlet_uniform(alpha.to(kl_dtype), dim=1).mean().float()
            # 3. Training: Gumbel-softmax relaxed sample over pi at temperature tau. Evaluation: hard codes,
            #    the argmax of the (unclamped) logits, or a draw z ~ Cat(pi) (Algorithm 2).
            z_q, indices = gumbel_codes(log_pi, self.codebook, tau, self.training, codes, argmax_scores=logits)
        zero = torch.zeros((), device=z_e.device)
        return QuantizerOutput(z_q=z_q, indices=indices, kl=kl, aux_loss=zero, uncertainty=uncertainty)
