"""SQ-VAE (Takida et al. 2022), Gaussian SQ-VAE (I): stochastic quantization with a self-annealing variance.

The encoder outputs a D-dim vector z per position. One learned scalar theta sets the variance of the
stochastic (de)quantization, s^2 = s0 + exp(theta), shared by every position and dimension (variant I).
As in the authors' release, s0 = 1 and exp(theta) starts at 20 for 64-dim codes; their config asks for
a larger or smaller start for larger or smaller codes, so here it starts at 20 * D / 64 (squared
distances grow like D): 5 for the paper's 16-dim codes, s^2 = 6.

    P(k | z) = softmax_k( -||z - b_k||^2 / (2 s^2) )          stochastic quantization, b_k the codes
    training:   z_tilde ~ RelaxedOneHotCategorical(tau, P(. | z)),  z_q = z_tilde @ B   (Gumbel-softmax)
                hard codes = argmax of the relaxed sample (distributed as Cat(P))
    inference:  z = argmax_k P(k | z) = the nearest code (default), or z ~ Cat(P); z_q = b_z

Loss terms (per position i, summed over the positions of an image, averaged over images):

    -H(P_i)                  = sum_k P(k | z_i) log P(k | z_i)        the entropy term: KL of the stochastic
                                                                      quantization to the uniform prior over
                                                                      the K codes, minus the constant log K
    ||z_i - z_q,i||^2 / (2 s^2)                                       the weighted distance term (dequantization
                                                                      likelihood): in training z_q is the relaxed
                                                                      sample, a one-sample estimate of
                                                                      E_P ||z_i - b_k||^2 / (2 s^2), as in the release
    latent_nats = mean_images sum_i [ -H(P_i) + ||z_i - z_q,i||^2 / (2 s^2) ]

The log s^2 terms of the dequantization density and of the Gaussian encoder q(z | x) = N(z_hat, s^2 I)
cancel, so s^2 is trained only through these two terms and the reconstruction (through the relaxed
sample): its descent is the paper's self-annealing, from near-uniform to near-deterministic assignment.
Like the authors' release, the terms are evaluated at the encoder's mean z = z_hat; ``encoder_noise=True``
instead draws z = z_hat + s * eps in training (the paper's Gaussian encoder, sampled once).

Decoder variance: SQ-VAE's Gaussian decoder p(x | z_q) = N(x_hat, sigma^2 I) has its variance set to
its maximum-likelihood value, the current MSE (the release's default, "ARELBO"), which turns the
reconstruction term into (D/2) log MSE for D = C*H*W values per image. Its gradient is
D / (2 MSE) * [grad MSE + (2 MSE / D) grad latent_nats], so the objective keeps its plain MSE loss and adds

    aux += (2 * sg(MSE) / D) * latent_nats                    (loss.stage1_loss; sg = stop-gradient)

which has exactly the release's gradient direction at every step (only the positive factor D / (2 MSE)
differs, which Adam largely normalises away). So the SQ-VAE terms are in the objective's ``aux``, weighted
by the likelihood itself: there is no beta for SQ-VAE (``kl`` is 0, and the comparison gives it beta 0).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from .base import Quantizer, QuantizerOutput, gumbel_codes, pick_codes
from .gs_vqvae import neg_squared_distances


class SQVAEQuantizer(Quantizer):
    name = "sqvae"

    def __init__(self, codebook_size: int = 512, codebook_dim: int = 16, log_variance_init: float | None = None,
                 variance_offset: float = 1.0, encoder_noise: bool = False):
        super().__init__()
        if variance_offset < 0:
            raise ValueError(f"variance_offset must be >= 0, got {variance_offset}")
        self.codebook_size = codebook_size
        self.variance_offset = float(variance_offset)
        self.encoder_noise = bool(encoder_noise)
        self.codebook = nn.Parameter(torch.randn(codebook_size, codebook_dim))   # Gaussian-normal init (release)
        if log_variance_init is None:
            log_variance_init = math.log(20.0 * codebook_dim / 64)
        self.log_variance = nn.Parameter(torch.tensor(float(log_variance_init)))  # theta: s^2 = s0 + exp(theta)

    @classmethod
    def from_config(cls, cfg) -> "SQVAEQuantizer":
        return cls(cfg.codebook_size, cfg.codebook_dim)

    @staticmethod
    def encoder_channels(codebook_size: int, codebook_dim: int) -> int:
        return codebook_dim

    @property
    def variance(self) -> torch.Tensor:
        """s^2, the variance of the stochastic quantization (a scalar tensor, with gradient)."""
        return self.variance_offset + self.log_variance.float().exp()

    def _check(self, z_e: torch.Tensor) -> None:
        if z_e.shape[1] != self.codebook.shape[1]:
            raise ValueError(f"expected {self.codebook.shape[1]}-dim vectors per position, got {tuple(z_e.shape)}")

    def hard_codes(self, z_e: torch.Tensor, codes: str = "argmax",
                   with_uncertainty: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        self._check(z_e)
        with torch.autocast(device_type=z_e.device.type, enabled=False):
            distances = neg_squared_distances(z_e.float(), self.codebook.float())
            return pick_codes(torch.log_softmax(distances / (2.0 * self.variance), dim=1), codes), None

    def forward(self, z_e: torch.Tensor, tau: float = 1.0, codes: str = "argmax") -> QuantizerOutput:
        self._check(z_e)
        with torch.autocast(device_type=z_e.device.type, enabled=False):
            z = z_e.float()
            variance = self.variance
            if self.training and self.encoder_noise:
                z = z + variance.sqrt() * torch.randn_like(z)
            codebook = self.codebook.float()
            log_p = torch.log_softmax(neg_squared_distances(z, codebook) / (2.0 * variance), dim=1)  # (B, K, h, w)
            z_q, indices = gumbel_codes(log_p, codebook, tau, self.training, codes)
            neg_entropy = (log_p.exp() * log_p).sum(dim=1)                              # -H(P), (B, h, w)
            distance = (z - z_q).pow(2).sum(dim=1) / (2.0 * variance)                   # (B, h, w)
            latent = (neg_entropy + distance).flatten(1).sum(dim=1).mean()              # nats per image
        zero = torch.zeros((), device=z_e.device)
        return QuantizerOutput(z_q=z_q, indices=indices, kl=zero, aux_loss=zero, latent_nats=latent)
