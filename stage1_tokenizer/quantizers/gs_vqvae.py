"""GS-VQ-VAE (a baseline): Gumbel-softmax over negative squared distances to the codes.

The encoder outputs a D-dim vector z_e per position; the logits of code k are
-||z_e - m_k||^2. Everything else is the dVAE quantizer: relaxed sample in
training, KL(softmax(logits) || uniform) times beta, hard codes in evaluation
(the argmax is the nearest code).
"""

from __future__ import annotations

import torch

from .dvae import DVAEQuantizer


def neg_squared_distances(z_e: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """-||z_e - m_k||^2 for every position and code: (B, D, h, w), (K, D) -> (B, K, h, w)."""
    z_sq = z_e.pow(2).sum(dim=1, keepdim=True)                       # (B, 1, h, w)
    m_sq = codebook.pow(2).sum(dim=1).view(1, -1, 1, 1)              # (1, K, 1, 1)
    cross = torch.einsum("bdhw,kd->bkhw", z_e, codebook)
    return -(z_sq - 2 * cross + m_sq)


class GSVQVAEQuantizer(DVAEQuantizer):
    name = "gs_vqvae"

    @staticmethod
    def encoder_channels(codebook_size: int, codebook_dim: int) -> int:
        return codebook_dim  # a vector in code space per position

    def code_logits(self, z_e: torch.Tensor) -> torch.Tensor:
        if z_e.shape[1] != self.codebook.shape[1]:
            raise ValueError(f"expected {self.codebook.shape[1]}-dim vectors per position, got {tuple(z_e.shape)}")
        return neg_squared_distances(z_e, self.codebook.float())
