"""VQ-STE++ (Huh, Cheung, Agrawal and Isola 2023, "Straightening out the straight-through estimator").

Nearest-code vector quantization with a straight-through estimator, plus the paper's three changes. The
settings follow one of two named variants (``variant``, config key ``model.vqste_pp_variant``):

- ``'vqtorch'`` (default): the authors' library, vqtorch (``vqtorch/nn/vq.py``, ``VectorQuant`` and its
  README's in-place optimizer ``SGD(lr=50.0, momentum=0.9)``).
- ``'project-v1'``: this project's first version, kept for its earlier results.

1. Affine re-parameterized codebook (both variants): the codes are an affine map, shared by all codes and
   set per dimension, of a base codebook B (K x D, Gaussian-normal init):

       c_k = scale * b_k + shift                                (elementwise, scale and shift in R^D)

   so the whole codebook follows the encoder outputs in one move, the codes that are never picked
   included. Two ways to set (scale, shift), both in the authors' library (vqtorch's AffineTransform):
   - ``affine='statistics'`` (default, ours): matched to running moments (momentum 0.1) of the encoder
     outputs z and of B, scale = sqrt(var_z / var_B), shift = mean_z - scale * mean_B, so the codes always
     have the encoder outputs' per-dimension mean and variance. Under DDP the moments of z are
     all-reduced, so the statistics, and the codebook, stay identical on every process.
   - ``affine='learned'`` (what vqtorch's VectorQuant builds when ``affine_lr > 0``): trained by gradient,
     scale = 1 + r * a, shift = r * m, a and m starting at 0, r = ``affine_lr`` = 10 (its README example).
   Measured here (tiny config, 200 steps): with 'learned' the tiny initial encoder outputs (std ~0.01
   against codes of std 1) all pick one code and training stays on the initial MSE plateau; with
   'statistics' the codes start on the encoder's scale and the MSE drops like the other quantizers'.

2. Alternating optimization: in every training forward, before the encoder/decoder step, the codebook
   takes its own step with the encoder fixed, on the codebook loss of the current batch (N positions,
   q_i = nearest code, taken with the codes before the step, as vqtorch does):

       'vqtorch':     L_in(C) = 1/(N D) sum_i ||c_{q_i} - sg(z_i)||^2     (vqtorch's ``.mean()`` over all
                                                                          elements), SGD lr 50, momentum 0.9
       'project-v1':  L_in(C) = 1/N     sum_i ||c_{q_i} - sg(z_i)||^2     (mean over positions), SGD lr 0.5,
                                                                          no momentum

   With n_k positions assigned to code k and S_k the sum of their vectors, dL_in/dc_k = 2 (n_k c_k - S_k)
   / (N D) (resp. / N), zero for unused codes. The step is SGD with heavy-ball momentum as in
   ``torch.optim.SGD`` (dampening 0, no Nesterov):

       v <- mu v + dL_in/dC,   C <- C - lr v,     b_k <- (c_k - shift) / scale   (the affine map held fixed)

   The velocity v (K x D, in code space) is a registered buffer, so a checkpoint carries it and a resumed
   run equals an uninterrupted one. The step is taken in code space: vqtorch's in-place optimizer steps a
   plain codebook (its in-place update and its affine map cannot be combined: the in-place backward frees
   the graph the affine map's gradient needs), so a step in code space is its step on the codes whatever
   affine map sits in front. For 'project-v1', lr 0.5 moves each code toward the batch mean of its vectors
   by its share n_k/N of the positions, never past it; lr 50 on the element mean moves code k by the
   fraction (100 / D) n_k / N of the way (6.25 n_k / N for D = 16), with momentum on top. The decoder then
   sees the updated codes. Under DDP, n_k and the sums of the vectors are all-reduced first, so every
   process takes the same step (and keeps the same velocity) and the codebook stays identical.

3. Synchronized update: the straight-through output carries a share nu of the task gradient to the codes,

       z_q = z + sg(c_q - z) + nu * (c_q - sg(c_q))           (value c_q; dz_q/dz = I, dz_q/dc_q = nu I)

   so the codes move with the encoder outputs they represent (nu = ``sync_nu`` = 0.2, the authors'
   README example; the library's own default is 0).

Loss terms, in ``aux_loss`` (already weighted; no KL, so ``kl`` is 0 and beta does not apply), means over
all positions and dimensions like the model's MSE:

    codebook_weight * ||sg(z) - c_q||^2  +  commitment * ||z - sg(c_q)||^2

    'vqtorch':     with the in-place step (inner_lr > 0) 1.0 and 0.0: vqtorch allows its in-place optimizer
                   only with beta = 1, i.e. no commitment term; without it (inner_lr = 0) its default
                   beta = 0.95: 0.95 codebook + 0.05 commitment
    'project-v1':  1.0 and 0.25 (the VQ-VAE paper's commitment)

The codebook loss in ``aux_loss`` also trains B (and learned affine parameters) through the main
optimizer (Adam); the inner step of 2. comes on top of it. Evaluation: the nearest code (``codes='argmax'``).

Optional k-means initialisation (``kmeans_init``, config key ``model.vqste_pp_kmeans_init``, off by
default as in vqtorch): at the first training forward, the codes are set to k-means centroids of that
batch's encoder outputs (farthest-point seeding from one random vector, then Lloyd iterations, at most 100,
until the centroids move by at most 1e-4 in summed squares: the settings vqtorch's k-means, torchpq's
KMeans with init_mode='kmeans++', runs with; with fewer vectors than codes, the vectors repeated plus
noise of std 1e-3, as vqtorch does). Unlike vqtorch's forward hook, which replaces the codebook after the
first forward, it happens before the first quantization, so the first step already uses it. Under DDP,
process 0 computes the centroids from its batch and broadcasts them.
"""

from __future__ import annotations

import math
import warnings
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .base import Quantizer, QuantizerOutput
from .gs_vqvae import neg_squared_distances

VQSTE_VARIANTS = ("vqtorch", "project-v1")


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


@torch.no_grad()
def kmeans(x: torch.Tensor, k: int, generator: torch.Generator, max_iter: int = 100,
           tol: float = 1e-4) -> torch.Tensor:
    """k centroids (k, D) of the vectors x (N, D): farthest-point seeding, then Lloyd iterations."""
    n, d = x.shape
    if k >= n:  # too few vectors: repeat them and add a little noise so the codes differ
        repeated = x.repeat(math.ceil(k / n), 1)[:k]
        return repeated + 1e-3 * torch.randn(k, d, generator=generator, device=x.device, dtype=x.dtype)
    centroids = torch.empty(k, d, device=x.device, dtype=x.dtype)
    first = int(torch.randint(n, (1,), generator=generator, device=x.device))
    centroids[0] = x[first]
    nearest = (x - x[first]).pow(2).sum(1)                  # squared distance to the nearest chosen centroid
    for i in range(1, k):
        far = int(nearest.argmax())
        centroids[i] = x[far]
        nearest = torch.minimum(nearest, (x - x[far]).pow(2).sum(1))
    x_sq = x.pow(2).sum(1, keepdim=True)
    for _ in range(max_iter):
        labels = (x_sq - 2 * x @ centroids.t() + centroids.pow(2).sum(1)).argmin(1)
        onehot = F.one_hot(labels, k).to(x.dtype)
        counts, sums = onehot.sum(0), onehot.t() @ x
        updated = torch.where(counts.unsqueeze(1) > 0, sums / counts.clamp(min=1).unsqueeze(1), centroids)
        moved = float((updated - centroids).pow(2).sum())
        centroids = updated
        if moved <= tol:
            break
    return centroids


class VQSTEPPQuantizer(Quantizer):
    name = "vqste_pp"

    def __init__(self, codebook_size: int = 512, codebook_dim: int = 16, variant: str = "vqtorch", *,
                 codebook_weight: float | None = None, commitment: float | None = None, sync_nu: float = 0.2,
                 affine_lr: float = 10.0, inner_lr: float | None = None, inner_momentum: float | None = None,
                 affine: str = "statistics", momentum: float = 0.1, kmeans_init: bool = False):
        super().__init__()
        if variant not in VQSTE_VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VQSTE_VARIANTS)}, got {variant!r}")
        vqtorch = variant == "vqtorch"
        inner_lr = (50.0 if vqtorch else 0.5) if inner_lr is None else inner_lr
        inner_momentum = (0.9 if vqtorch else 0.0) if inner_momentum is None else inner_momentum
        if codebook_weight is None:
            codebook_weight = 0.95 if vqtorch and inner_lr == 0 else 1.0
        if commitment is None:
            commitment = (0.05 if inner_lr == 0 else 0.0) if vqtorch else 0.25
        if inner_lr < 0:
            raise ValueError(f"inner_lr must be >= 0, got {inner_lr}")
        if not vqtorch and inner_momentum == 0 and inner_lr > 0.5:
            raise ValueError(f"inner_lr must be in [0, 0.5] for 'project-v1' (larger steps overshoot a code's "
                             f"batch mean), got {inner_lr}")
        if not 0.0 <= inner_momentum < 1.0:
            raise ValueError(f"inner_momentum must be in [0, 1), got {inner_momentum}")
        if codebook_weight < 0 or commitment < 0:
            raise ValueError(f"loss weights must be >= 0, got codebook {codebook_weight}, commitment {commitment}")
        if affine not in ("learned", "statistics"):
            raise ValueError(f"affine must be 'learned' or 'statistics', got {affine!r}")
        self.codebook_size, self.variant, self.sync_nu = codebook_size, variant, sync_nu
        self.codebook_weight, self.commitment = codebook_weight, commitment
        self.inner_lr, self.inner_momentum = inner_lr, inner_momentum
        self.inner_mean_over_dims = vqtorch      # the inner loss: mean over elements (vqtorch) or positions
        self.affine_lr, self.affine_mode, self.momentum = affine_lr, affine, momentum
        self.kmeans_init = kmeans_init
        self.codebook = nn.Parameter(torch.randn(codebook_size, codebook_dim))   # the base codebook B
        if affine == "learned":
            self.affine_scale = nn.Parameter(torch.zeros(codebook_dim))         # a: scale = 1 + r * a
            self.affine_shift = nn.Parameter(torch.zeros(codebook_dim))         # m: shift = r * m
        else:
            self.register_buffer("stats_initialized", torch.zeros((), dtype=torch.bool))
            for name, value in (("z_mean", 0.0), ("z_var", 1.0), ("c_mean", 0.0), ("c_var", 1.0)):
                self.register_buffer(f"running_{name}", torch.full((codebook_dim,), value))
        # The inner step's momentum (code space) and whether the first training forward (and with it the
        # optional k-means initialisation) has happened: state that a resumed run must get back.
        self.register_buffer("inner_velocity", torch.zeros(codebook_size, codebook_dim))
        self.register_buffer("data_initialized", torch.zeros((), dtype=torch.bool))

    @classmethod
    def from_config(cls, cfg) -> "VQSTEPPQuantizer":
        return cls(cfg.codebook_size, cfg.codebook_dim, variant=cfg.vqste_pp_variant,
                   kmeans_init=cfg.vqste_pp_kmeans_init)

    @staticmethod
    def encoder_channels(codebook_size: int, codebook_dim: int) -> int:
        return codebook_dim

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # States saved before the variants existed (trained as 'project-v1') have neither buffer: no velocity,
        # and their first training forward is long past.
        if prefix + "inner_velocity" not in state_dict and prefix + "codebook" in state_dict:
            state_dict[prefix + "inner_velocity"] = torch.zeros_like(self.inner_velocity)
            state_dict.setdefault(prefix + "data_initialized", torch.ones((), dtype=torch.bool))
            if self.variant != "project-v1":
                warnings.warn("this vqste_pp state predates model.vqste_pp_variant and was trained as "
                              "'project-v1'; set model.vqste_pp_variant=project-v1 to resume its training",
                              stacklevel=2)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift), each (D,)."""
        if self.affine_mode == "statistics":
            scale = (self.running_z_var / (self.running_c_var + 1e-8)).sqrt()
            return scale, self.running_z_mean - scale * self.running_c_mean
        return 1.0 + self.affine_lr * self.affine_scale.float(), self.affine_lr * self.affine_shift.float()

    @torch.no_grad()
    def update_statistics(self, z: torch.Tensor) -> None:
        """Running per-dimension mean and variance of the encoder outputs z (N, D), over all processes, and of B."""
        distributed = _distributed()
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
    def set_codes(self, codes: torch.Tensor) -> None:
        """Set B so that the effective codebook is ``codes`` (K, D) under the current affine map."""
        scale, shift = self.affine()
        # a dimension with scale ~0 cannot be set through the map: its b stays at 0 there
        self.codebook.copy_(((codes - shift) * scale / (scale.pow(2) + 1e-12)).to(self.codebook.dtype))

    @torch.no_grad()
    def kmeans_initialize(self, z: torch.Tensor) -> None:
        """Codes = k-means centroids of the flat encoder outputs z (N, D); process 0's, broadcast under DDP."""
        seed = int(torch.randint(0, 2**62, (1,)))      # drawn on every process: their random streams stay in step
        distributed = _distributed()
        if not distributed or dist.get_rank() == 0:
            generator = torch.Generator(device=z.device).manual_seed(seed)
            centroids = kmeans(z.float(), self.codebook_size, generator).contiguous()
        else:
            centroids = torch.empty(self.codebook_size, z.shape[1], device=z.device)
        if distributed:
            dist.broadcast(centroids, src=0)
        self.set_codes(centroids)

    @torch.no_grad()
    def inner_update(self, z: torch.Tensor, indices: torch.Tensor) -> None:
        """The alternating codebook step: one SGD (+ momentum) step on L_in from flat vectors z (N, D) and codes (N,)."""
        onehot = F.one_hot(indices, self.codebook_size).to(z.dtype)        # (N, K)
        counts, sums = onehot.sum(0), onehot.t() @ z                         # (K,), (K, D)
        if _distributed():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        total = counts.sum().clamp(min=1.0)
        if self.inner_mean_over_dims:
            total = total * z.shape[1]
        codes = self.codes()
        grad = 2.0 * (counts.unsqueeze(1) * codes - sums) / total            # dL_in/dc_k, zero for unused codes
        if self.inner_momentum > 0:
            step = self.inner_velocity.mul_(self.inner_momentum).add_(grad)
        else:
            step = grad
        scale, _ = self.affine()
        # c_k moves by -lr * step; b_k by that over the scale (a dimension with scale ~0 cannot move c: b stays)
        self.codebook.sub_((self.inner_lr * step * scale / (scale.pow(2) + 1e-12)).to(self.codebook.dtype))

    def _check(self, z_e: torch.Tensor, codes: str) -> None:
        if codes != "argmax":
            raise ValueError(f"vqste_pp picks the nearest code; codes={codes!r} is not defined for it")
        if z_e.shape[1] != self.codebook.shape[1]:
            raise ValueError(f"expected {self.codebook.shape[1]}-dim vectors per position, got {tuple(z_e.shape)}")

    @torch.no_grad()
    def hard_codes(self, z_e: torch.Tensor, codes: str = "argmax",
                   with_uncertainty: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        self._check(z_e, codes)
        with torch.autocast(device_type=z_e.device.type, enabled=False):
            return neg_squared_distances(z_e.float(), self.codes()).argmax(dim=1), None

    def forward(self, z_e: torch.Tensor, tau: float = 1.0, codes: str = "argmax") -> QuantizerOutput:
        self._check(z_e, codes)
        with torch.autocast(device_type=z_e.device.type, enabled=False):
            z = z_e.float()
            with torch.no_grad():
                flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
                if self.training and self.affine_mode == "statistics":
                    self.update_statistics(flat)
                if self.training and not bool(self.data_initialized):
                    if self.kmeans_init:
                        self.kmeans_initialize(flat)
                    self.data_initialized.fill_(True)
                indices = neg_squared_distances(z, self.codes()).argmax(dim=1)      # nearest code, (B, h, w)
                if self.training and self.inner_lr > 0:
                    self.inner_update(flat, indices.reshape(-1))
            chosen = self.embed(indices)   # the updated codes (assignments kept from before the step), with grad
            aux = self.codebook_weight * F.mse_loss(chosen, z.detach())
            if self.commitment > 0:
                aux = aux + self.commitment * F.mse_loss(z, chosen.detach())
            z_q = z + (chosen - z).detach() + self.sync_nu * (chosen - chosen.detach())
        zero = torch.zeros((), device=z_e.device)
        return QuantizerOutput(z_q=z_q, indices=indices, kl=zero, aux_loss=aux)
