"""VQ-STE++ (Huh, Cheung, Agrawal and Isola 2023, "Straightening out the straight-through estimator").

Nearest-code vector quantization with a straight-through estimator, plus the paper's three changes:

1. Affine re-parameterized codebook: the codes are an affine map, shared by all codes and set per
   dimension, of a base codebook B (K x D, Gaussian-normal init):

       c_k = scale * b_k + shift                                (elementwise, scale and shift in R^D)

   so the whole codebook follows the encoder outputs in one move, the codes that are never picked
   included. Two ways to set (scale, shift), both in the authors' library (vqtorch's AffineTransform):
   - ``affine='statistics'`` (default): matched to running moments (momentum 0.1) of the encoder outputs z
     and of B, scale = sqrt(var_z / var_B), shift = mean_z - scale * mean_B, so the codes always have the
     encoder outputs' per-dimension mean and variance. Under DDP the moments of z are all-reduced, so the
     statistics, and the codebook, stay identical on every process.
   - ``affine='learned'``: trained by gradient, scale = 1 + r * a, shift = r * m, a and m starting at 0,
     r = ``affine_lr`` = 10 (the library's learning-rate multiplier for them).
   Measured here (tiny config, 200 steps): with 'learned' the tiny initial encoder outputs (std ~0.01
   against codes of std 1) all pick one code and training stays on the initial MSE plateau; with
   'statistics' the codes start on the encoder's scale and the MSE drops like the other quantizers'.

2. Alternating optimization: in every training forward, before the encoder/decoder step, the codebook
   takes its own step with the encoder fixed: one SGD step on the codebook loss of the current batch,

       L_cb(C) = (1/N) sum_i ||c_{q_i} - sg(z_i)||^2      over the N positions, q_i = nearest code,

   taken in code space and mapped back to B through the (fixed) affine map:

       c_k <- c_k - lr_in * dL_cb/dc_k = c_k + 2 lr_in (n_k/N) (zbar_k - c_k),   b_k <- (c_k - shift) / scale

   with n_k positions assigned to code k and zbar_k their mean. The default lr_in = 0.5 moves each code
   toward the batch mean of its vectors by its share of the positions n_k/N, never past it. The decoder
   then sees the updated codes. This is the authors' "in-place" codebook optimizer fitted into a single-
   optimizer training loop (their example uses SGD with momentum; here it is momentum-free, so that it
   keeps no extra state and a resumed run equals an uninterrupted one). Under DDP, n_k and the sums of the
   vectors are all-reduced first, so every process takes the same step and the codebook stays identical.

3. Synchronized update: the straight-through output carries a share nu of the task gradient to the codes,

       z_q = z + sg(c_q - z) + nu * (c_q - sg(c_q))           (value c_q; dz_q/dz = I, dz_q/dc_q = nu I)

   so the codes move with the encoder outputs they represent (nu = ``sync_nu`` = 0.2, as in the authors'
   library examples).

Loss terms, in ``aux_loss`` (already weighted; no KL, so ``kl`` is 0 and beta does not apply), means over
all positions and dimensions like the model's MSE:

    ||sg(z) - c_q||^2  +  0.25 * ||z - sg(c_q)||^2             (codebook loss + commitment 0.25)

The codebook loss in ``aux_loss`` also trains B (and learned affine parameters) through the main
optimizer (Adam); the inner step of 2. comes on top of it. Evaluation: the nearest code (``codes='argmax'``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .base import Quantizer, QuantizerOutput
from .gs_vqvae import neg_squared_distances


class AffineVQQuantizer(Quantizer):
    name = "vqste_pp"

    def __init__(self, codebook_size: int = 512, codebook_dim: int = 16, commitment: float = 0.25,
                 sync_nu: float = 0.2, affine_lr: float = 10.0, inner_lr: float = 0.5, affine: str = "statistics",
                 momentum: float = 0.1):
        super().__init__()
        if not 0.0 <= inner_lr <= 0.5:
            raise ValueError(f"inner_lr must be in [0, 0.5] (larger steps overshoot a code's batch mean), "
                             f"got {inner_lr}")
        if affine not in ("learned", "statistics"):
            raise ValueError(f"affine must be 'learned' or 'statistics', got {affine!r}")
        self.codebook_size, self.commitment, self.sync_nu = codebook_size, commitment, sync_nu
        self.affine_lr, self.inner_lr, self.affine_mode, self.momentum = affine_lr, inner_lr, affine, momentum
        self.codebook = nn.Parameter(torch.randn(codebook_size, codebook_dim))   # the base codebook B
        if affine == "learned":
            self.affine_scale = nn.Parameter(torch.zeros(codebook_dim))         # a: scale = 1 + r * a
            self.affine_shift = nn.Parameter(torch.zeros(codebook_dim))         # m: shift = r * m
        else:
            self.register_buffer("stats_initialized", torch.zeros((), dtype=torch.bool))
            for name, value in (("z_mean", 0.0), ("z_var", 1.0), ("c_mean", 0.0), ("c_var", 1.0)):
                self.register_buffer(f"running_{name}", torch.full((codebook_dim,), value))

    @classmethod
    def from_config(cls, cfg) -> "AffineVQQuantizer":
        return cls(cfg.codebook_size, cfg.codebook_dim)

    @staticmethod
    def encoder_channels(codebook_size: int, codebook_dim: int) -> int:
        return codebook_dim

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift), each (D,)."""
        if self.affine_mode == "statistics":
            scale = (self.running_z_var / (self.running_c_var + 1e-8)).sqrt()
            return scale, self.running_z_mean - scale * self.running_c_mean
        return 1.0 + self.affine_lr * self.affine_scale.float(), self.affine_lr * self.affine_shift.float()

    @torch.no_grad()
    def update_statistics(self, z: torch.Tensor) -> None:
        """Running per-dimension mean and variance of the encoder outputs z (N, D), over all processes, and of B."""
        distributed = dist.is_available() and dist.is_initialized()
        sums = torch.cat([z.sum(0), torch.tensor([float(z.shape[0])], device=z.device)])  # (D + 1,): sums, N
        if distributed:
            dist.all_reduce(sums)
        z_mean = sums[:-1] / sums[-1]
        squares = (z - z_mean).pow(2).sum(0)        # two passes: E[z^2] - E[z]^2 cancels for near-constant z
        if distributed:
            dist.all_reduce(squares)
        z_var = squares / sums[-1]
        base = self.codebook.float()
        new = {"z_mean": z_mean, "z_var": z_var, "c_mean": base.mean(0), "c_var": base.var(0, unbiased=False)}
        rate = 1.0 if not bool(self.stats_initialized) else self.momentum
        for name, value in new.items():
            running = getattr(self, f"running_{name}")
            running.mul_(1.0 - rate).add_(value, alpha=rate)
        self.stats_initialized.fill_(True)

    def codes(self) -> torch.Tensor:
        """The effective codebook C = scale * B + shift, (K, D)."""
        scale, shift = self.affine()
        return self.codebook.float() * scale + shift

    def embed(self, indices: torch.Tensor) -> torch.Tensor:
        return self.codes()[indices].permute(0, 3, 1, 2).contiguous()

    @torch.no_grad()
    def inner_update(self, z: torch.Tensor, indices: torch.Tensor) -> None:
        """The alternating codebook step: one SGD step on L_cb from flat vectors z (N, D) and codes (N,)."""
        onehot = F.one_hot(indices, self.codebook_size).to(z.dtype)        # (N, K)
        counts, sums = onehot.sum(0), onehot.t() @ z                         # (K,), (K, D)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        total = counts.sum().clamp(min=1.0)
        codes = self.codes()
        grad = 2.0 * (counts.unsqueeze(1) * codes - sums) / total            # dL_cb/dc_k, zero for unused codes
        scale, _ = self.affine()
        # c_k moves by -lr * grad; b_k by that over the scale (a dimension with scale ~0 cannot move c: b stays)
        self.codebook.sub_((self.inner_lr * grad * scale / (scale.pow(2) + 1e-12)).to(self.codebook.dtype))

    def forward(self, z_e: torch.Tensor, tau: float = 1.0, codes: str = "argmax") -> QuantizerOutput:
        if codes != "argmax":
            raise ValueError(f"vqste_pp picks the nearest code; codes={codes!r} is not defined for it")
        if z_e.shape[1] != self.codebook.shape[1]:
            raise ValueError(f"expected {self.codebook.shape[1]}-dim vectors per position, got {tuple(z_e.shape)}")
        with torch.autocast(device_type=z_e.device.type, enabled=False):
            z = z_e.float()
            with torch.no_grad():
                if self.training and self.affine_mode == "statistics":
                    self.update_statistics(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]))
                indices = neg_squared_distances(z, self.codes()).argmax(dim=1)      # nearest code, (B, h, w)
                if self.training and self.inner_lr > 0:
                    self.inner_update(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]), indices.reshape(-1))
            chosen = self.embed(indices)   # the updated codes (assignments kept from before the step), with grad
            aux = F.mse_loss(chosen, z.detach()) + self.commitment * F.mse_loss(z, chosen.detach())
            z_q = z + (chosen - z).detach() + self.sync_nu * (chosen - chosen.detach())
        zero = torch.zeros((), device=z_e.device)
        return QuantizerOutput(z_q=z_q, indices=indices, kl=zero, aux_loss=aux)
