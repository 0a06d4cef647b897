"""VQ-VAE with an EMA codebook (van den Oord et al. 2017; a baseline).

    z = argmin_k ||z_e - m_k||^2,  z_q = z_e + sg(m_z - z_e)     (straight-through gradients)
    loss term  commitment * ||z_e - sg(m_z)||^2                   (commitment = 0.25, the EdVAE paper's)
    codebook   exponential moving averages (decay 0.99) of the code counts N_k and of the sums S_k of
               the vectors assigned to each code, m_k = S_k / N_k with Laplace smoothing of the counts;
               uniform init in [-1/K, 1/K] (the EdVAE paper, after the VQ-VAE paper). No gradient
               reaches the codebook.

Two ways to start the averages, chosen by name (``variant``, config key ``model.vqvae_ema_variant``):

- ``'sonnet'`` (default), the usual EMA: Sonnet's ``VectorQuantizerEMA`` (v2, and v1 through TF's
  ``assign_moving_average(zero_debias=True)``). The averages start at zero and are zero-debiased: after
  t updates with decay g,

      N_k = hidden_N_k / (1 - g^t),  S_k = hidden_S_k / (1 - g^t),     hidden_* <- g hidden_* + (1 - g) batch_*

  so the first update gives the batch's own counts and sums. The zero counts of codes that were never
  picked are handled as Sonnet does, by Laplace smoothing, n = sum_k N_k:

      N_k' = (N_k + eps) / (n + K eps) * n,     m_k = S_k / N_k'           (eps = 1e-5)

  so a code never picked has S_k = 0 and moves to the origin (0 / (eps n / (n + K eps)), no division by
  zero), and a code picked long ago keeps the mean of what it was given. The VQ-VAE-2 PyTorch port
  (rosinality/vq-vae-2-pytorch) also starts the counts at zero, but starts the sums at the initial codebook
  and does not debias: there an unused code is blown up to about m_k / eps after its first update and is
  never picked again.
- ``'project-v1'``, this project's first version (kept for its earlier results): the averages start as
  if each code had been seen once at its initial value (counts 1, sums = initial codebook), without
  debiasing, so m_k = S_k / N_k holds from the start and a code that is never picked keeps its initial
  vector. This keeps unused codes alive near the encoder outputs and may raise codebook usage.

Under DDP the counts and sums are all-reduced before the update, so every process keeps the same codebook.
The hidden averages and the number of updates are buffers: checkpoints resume exactly.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .base import Quantizer, QuantizerOutput
from .gs_vqvae import neg_squared_distances

EMA_VARIANTS = ("sonnet", "project-v1")


class VQVAEEMAQuantizer(Quantizer):
    name = "vqvae_ema"

    def __init__(self, codebook_size: int = 512, codebook_dim: int = 16, decay: float = 0.99,
                 commitment: float = 0.25, eps: float = 1e-5, variant: str = "sonnet"):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        if variant not in EMA_VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(EMA_VARIANTS)}, got {variant!r}")
        self.codebook_size, self.decay, self.commitment, self.eps = codebook_size, decay, commitment, eps
        self.variant = variant
        init = torch.empty(codebook_size, codebook_dim).uniform_(-1.0 / codebook_size, 1.0 / codebook_size)
        self.register_buffer("codebook", init)
        # The hidden (biased) averages: zero for 'sonnet'; one sighting of the initial codebook for 'project-v1'.
        if variant == "sonnet":
            self.register_buffer("ema_count", torch.zeros(codebook_size))
            self.register_buffer("ema_sum", torch.zeros(codebook_size, codebook_dim))
        else:
            self.register_buffer("ema_count", torch.ones(codebook_size))
            self.register_buffer("ema_sum", init.clone())
        self.register_buffer("ema_steps", torch.zeros((), dtype=torch.long))   # updates taken (for debiasing)

    @classmethod
    def from_config(cls, cfg) -> "VQVAEEMAQuantizer":
        return cls(cfg.codebook_size, cfg.codebook_dim, variant=cfg.vqvae_ema_variant)

    @staticmethod
    def encoder_channels(codebook_size: int, codebook_dim: int) -> int:
        return codebook_dim

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # States saved before the variants existed have no update counter; they were trained as 'project-v1'.
        key = prefix + "ema_steps"
        if key not in state_dict and prefix + "ema_count" in state_dict:
            state_dict[key] = torch.zeros((), dtype=torch.long)
            if self.variant != "project-v1":
                warnings.warn("this vqvae_ema state predates model.vqvae_ema_variant and was trained as "
                              "'project-v1'; set model.vqvae_ema_variant=project-v1 to resume its training",
                              stacklevel=2)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

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
        self.ema_steps.add_(1)
        count, total_sum = self.ema_count, self.ema_sum
        if self.variant == "sonnet":                                         # zero-debiasing
            bias = 1.0 - torch.pow(torch.tensor(self.decay, device=z.device), self.ema_steps.float())
            count, total_sum = count / bias, total_sum / bias
        n = count.sum()
        smoothed = (count + self.eps) / (n + self.codebook_size * self.eps) * n
        self.codebook.copy_(total_sum / smoothed.unsqueeze(1))

    def _check(self, z_e: torch.Tensor, codes: str) -> None:
        if codes != "argmax":
            raise ValueError(f"vqvae_ema picks the nearest code; codes={codes!r} is not defined for it")
        if z_e.shape[1] != self.codebook.shape[1]:
            raise ValueError(f"expected {self.codebook.shape[1]}-dim vectors per position, got {tuple(z_e.shape)}")

    def hard_codes(self, z_e: torch.Tensor, codes: str = "argmax",
                   with_uncertainty: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        self._check(z_e, codes)
        with torch.autocast(device_type=z_e.device.type, enabled=False):
            return neg_squared_distances(z_e.float(), self.codebook).argmax(dim=1), None

    def forward(self, z_e: torch.Tensor, tau: float = 1.0, codes: str = "argmax") -> QuantizerOutput:
        self._check(z_e, codes)
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
