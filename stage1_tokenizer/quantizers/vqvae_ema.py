"""VQ-VAE with an EMA codebook (van den Oord et al. 2017; a baseline).

    z = argmin_k ||z_e - m_k||^2,  z_q = z_e + sg(m_z - z_e)     (straight-through gradients)
    loss term  commitment * ||z_e - sg(m_z)||^2                   (commitment = 0.25)
    codebook   exponential moving averages (decay 0.99) of the code counts and of the
               sums of the vectors assigned to each code, with Laplace smoothing;
               uniform init in [-1/K, 1/K]. No gradient reaches the codebook.

Under DDP the counts and sums are all-reduced before the update, so every
process keeps the same codebook.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .base import Quantizer, QuantizerOutput
from .gs_vqvae import neg_squared_distances


class EMAVectorQuantizer(Quantizer):
    name = "vqvae_ema"

    def __init__(self, codebook_size: int = 512, codebook_dim: int = 16, decay: float = 0.99,
                 commitment: float = 0.25, eps: float = 1e-5):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.codebook_size, self.decay, self.commitment, self.eps = codebook_size, decay, commitment, eps
        init = torch.empty(codebook_size, codebook_dim).uniform_(-1.0 / codebook_size, 1.0 / codebook_size)
        self.register_buffer("codebook", init)
        # The averages start as if each code had been seen once at its initial value, so that
        # codebook = ema_sum / ema_count holds from the start and a code that is never picked keeps
        # its initial vector (starting the counts at zero would blow unused codes up by 1/eps).
        self.register_buffer("ema_count", torch.ones(codebook_size))
        self.register_buffer("ema_sum", init.clone())

    @classmethod
    def from_config(cls, cfg) -> "EMAVectorQuantizer":
        return cls(cfg.codebook_size, cfg.codebook_dim)

    @staticmethod
    def encoder_channels(codebook_size: int, codebook_dim: int) -> int:
        return codebook_dim

    @torch.no_grad()
    def ema_update(self, z: torch.Tensor, indices: torch.Tensor) -> None:
        """One EMA step from flat vectors z (N, D) and their codes (N,), summed over all processes."""
        onehot = F.one_hot(indices, self.codebook_size).to(z.dtype)       # (N, K)
        counts, sums = onehot.sum(0), onehot.t() @ z                        # (K,), (K, D)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.ema_count.sum()
        smoothed = (self.ema_count + self.eps) / (total + self.codebook_size * self.eps) * total
        self.codebook.copy_(self.ema_sum / smoothed.unsqueeze(1))

    def forward(self, z_e: torch.Tensor, tau: float = 1.0, codes: str = "argmax") -> QuantizerOutput:
        if codes != "argmax":
            raise ValueError(f"vqvae_ema picks the nearest code; codes={codes!r} is not defined for it")
        if z_e.shape[1] != self.codebook.shape[1]:
            raise ValueError(f"expected {self.codebook.shape[1]}-dim vectors per position, got {tuple(z_e.shape)}")
        with torch.autocast(device_type=z_e.device.type, enabled=False):
            z_e = z_e.float()
            indices = neg_squared_distances(z_e, self.codebook).argmax(dim=1)      # nearest code
            chosen = self.embed(indices)                                            # (B, D, h, w)
            aux = self.commitment * F.mse_loss(z_e, chosen.detach())
            if self.training:
                self.ema_update(z_e.detach().permute(0, 2, 3, 1).reshape(-1, z_e.shape[1]), indices.reshape(-1))
            z_q = z_e + (chosen - z_e).detach()                                     # straight-through
        zero = torch.zeros((), device=z_e.device)
        return QuantizerOutput(z_q=z_q, indices=indices, kl=zero, aux_loss=aux)
