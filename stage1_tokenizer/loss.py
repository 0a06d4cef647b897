"""The stage-1 objective, in one place.

    loss = MSE(x, x_hat) + beta * kl + aux

- ``MSE``: mean squared error of the decoder output against the image, both on the [-0.5, 0.5] scale
  the networks use (equal to the MSE on [0, 1]), over every pixel and channel: ``reconstruction_mse``.
- ``kl`` (times the scheduled ``beta``): the quantizer's KL term, averaged over positions.
  EdVAE: KL(Dir(alpha) || Dir(1, ..., 1)) in closed form (Appendix A), ``kl_dirichlet_uniform``
  (the textbook formula) and ``dirichlet_kl_per_position`` (the same value, exact in float32, with
  its closed-form gradient: what training runs). dVAE and GS-VQ-VAE: KL(q || uniform),
  ``kl_categorical_uniform``. The VQ family and SQ-VAE have none (``kl`` = 0, beta 0).
- ``aux``: a quantizer's own, already weighted terms (VQ-VAE-EMA's commitment, VQ-STE++'s codebook
  loss) plus SQ-VAE's latent terms, which are weighted by its decoder likelihood: the decoder
  variance at its maximum-likelihood value, the MSE, gives ``(2 * sg(MSE) / D) * latent_nats`` with
  D = C*H*W values per image (``sqvae_weight``; see quantizers/sqvae.py).

``stage1_loss(out, beta)`` adds them up from the model's training forward (``EdVAE.forward``);
``PAPER_BETA`` is the KL weight each quantizer trains with (Appendix D). ``train.py`` and
``compare.py`` take both from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

if TYPE_CHECKING:  # pragma: no cover
    from .model import TokenizerOutput

# The KL weight (beta_max) per quantizer, Appendix D. EdVAE's is the config's ``train.beta_max`` (5e-7 for
# CIFAR-10, 1e-7 for CelebA and LSUN Church). sqvae and vqste_pp have no beta-weighted term: SQ-VAE's terms
# are weighted by its decoder likelihood, VQ-STE++'s are a fixed VQ loss; VQ-VAE-EMA has only its commitment.
PAPER_BETA = {"dvae": 5e-5, "gs_vqvae": 5e-6, "vqvae_ema": 0.0, "sqvae": 0.0, "vqste_pp": 0.0}


@dataclass
class LossTerms:
    """The objective of one training forward and its parts (scalars; ``loss`` carries the gradient)."""

    loss: torch.Tensor
    mse: torch.Tensor
    kl: torch.Tensor
    aux: torch.Tensor


def reconstruction_mse(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every value, in float32 (the decoder may run in bf16 under autocast)."""
    return F.mse_loss(recon.float(), target.float())


def sqvae_weight(mse: torch.Tensor, values_per_image: int) -> torch.Tensor:
    """SQ-VAE's weight of its latent terms against the MSE: 2 sg(MSE) / D (no gradient through the MSE)."""
    return 2.0 * mse.detach() / values_per_image


def stage1_loss(out: "TokenizerOutput", beta: float) -> LossTerms:
    """``mse + beta * kl + aux`` of a training forward ``out = model(images, tau=...)``."""
    aux = out.aux_loss
    if out.latent_nats is not None:
        aux = aux + sqvae_weight(out.mse, out.recon[0].numel()) * out.latent_nats
    return LossTerms(loss=out.mse + beta * out.kl + aux, mse=out.mse, kl=out.kl, aux=aux)


# ---------------------------------------------------------------------------- KL terms
def kl_categorical_uniform(log_q: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """KL(q || uniform over K) = sum_k q_k (log q_k + log K), along ``dim`` (dVAE, GS-VQ-VAE)."""
    return (log_q.exp() * (log_q + math.log(log_q.shape[dim]))).sum(dim=dim)


def kl_dirichlet_uniform(alpha: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """KL( Dir(alpha) || Dir(1, ..., 1) ) along ``dim``, the textbook closed form (Appendix A).

    = log Gamma(S) - log Gamma(K) - sum_k log Gamma(alpha_k)
      + sum_k (alpha_k - 1) (digamma(alpha_k) - digamma(S)),   S = sum_k alpha_k.

    With alphas as large as e^20 the terms cancel to a few parts in 1e9, which float32 cannot
    resolve: call it on float64 input, or use ``dirichlet_kl_per_position`` (exact in float32).
    """
    k = alpha.shape[dim]
    s = alpha.sum(dim=dim, keepdim=True)
    log_norm = torch.lgamma(s).squeeze(dim) - math.lgamma(k) - torch.lgamma(alpha).sum(dim=dim)
    digamma_term = ((alpha - 1.0) * (torch.digamma(alpha) - torch.digamma(s))).sum(dim=dim)
    return log_norm + digamma_term


# The same KL, rearranged so that nothing large cancels. With
#     h(x) = (x - 1) digamma(x) - lgamma(x) - x        (of size log x: the x-sized parts cancel inside it)
# and sum_k alpha_k = S, the closed form above is exactly
#     KL = sum_k h(alpha_k) - h(S) + (K - 1) digamma(S) - lgamma(K),
# and its gradient is
#     dKL/dalpha_k = G(S) - g(alpha_k),   g(x) = 1 - (x - 1) trigamma(x),   G(S) = 1 - (S - K) trigamma(S).
# h, g, digamma and trigamma come from their asymptotic (Stirling) series at y = x (x >= 7) or y = x + 6
# (x < 7, brought back by the recurrences), written so that the large terms cancel analytically:
#     digamma(y)  = ln y - 1/(2y) - c,      c = 1/(12y^2) - 1/(120y^4) + 1/(252y^6)
#     lgamma(y)   = (y - 1/2) ln y - y + ln(2 pi)/2 + d,      d = 1/(12y) - 1/(360y^3) + 1/(1260y^5)
#     trigamma(y) = (1 + 1/(2y) + p) / y,   p = 1/(6y^2) - 1/(30y^4) + 1/(42y^6)
# truncated where the next term is below 1e-9 at y >= 6. The per-element work is a few dozen elementwise
# operations, no digamma or lgamma calls (torch's CPU digamma is slow, in float64 very slow); the
# per-position values use float64 where the device has it.
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_SHIFT_BELOW = 7.0


def _series(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(h(x), digamma(x), g(x), trigamma(x)), elementwise, written plainly (per-position values and tests)."""
    small = (x < _SHIFT_BELOW).to(x.dtype)                  # 1 where the recurrence shifts by 6
    n = 6.0 * small
    y = x + n
    r = y.reciprocal()
    r2 = r * r
    log_y = torch.log(y)
    c = r2 * (1.0 / 12 - r2 * (1.0 / 120 - r2 / 252))
    d = r * (1.0 / 12 - r2 * (1.0 / 360 - r2 / 1260))
    p = r2 * (1.0 / 6 - r2 * (1.0 / 30 - r2 / 42))
    xc = x.clamp(max=_SHIFT_BELOW)                           # the shift terms, only used where small
    shifted = [xc + i for i in range(6)]
    shift_psi = small * sum(v.reciprocal() for v in shifted)          # sum_{i<6} 1/(x+i)
    shift_lgamma = small * sum(torch.log(v) for v in shifted)         # log prod_{i<6} (x+i)
    shift_psi1 = small * sum(v.pow(-2) for v in shifted)              # sum_{i<6} 1/(x+i)^2
    h = -(n + 0.5) * log_y - (x - 1.0) * (0.5 * r + c + shift_psi) + n - _HALF_LOG_2PI - d + shift_lgamma
    psi = log_y - 0.5 * r - c - shift_psi
    psi1_y = r * (1.0 + 0.5 * r + p)
    g = -0.5 * r - p + (n + 1.0) * psi1_y - (x - 1.0) * shift_psi1
    return h, psi, g, psi1_y + shift_psi1


def _h_and_g(x: torch.Tensor, need_grad: bool) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """h(x) and (with ``need_grad``) g(x) of ``_series``, with few passes over memory (B x K x h x w elements).

    The six shift terms come in three pairs (x+i)(x+5-i) = t + {0, 4, 6}, t = x(x+5), whose two members sum
    to 2x+5: sum 1/(x+i) = (2x+5) sum 1/t_j, sum 1/(x+i)^2 = (2x+5)^2 sum 1/t_j^2 - 2 sum 1/t_j.
    """
    small = (x < _SHIFT_BELOW).to(x.dtype)
    y = x.add(small, alpha=6.0)                              # x + n
    r = y.reciprocal()
    r2 = r * r
    xm1 = x - 1.0
    xc = x.clamp(max=_SHIFT_BELOW)
    t = xc.add(5.0).mul_(xc)
    t4, t6 = t.add(4.0), t.add(6.0)
    pair = xc.mul_(2.0).add_(5.0)
    prod = t4.mul(t6).mul_(t)
    it, it4, it6 = t.reciprocal_(), t4.reciprocal_(), t6.reciprocal_()
    inv_sum = it.add(it4).add_(it6)
    # h = shift_lgamma - d + n - ln(2 pi)/2 - (n + 1/2) ln y - (x - 1)(r/2 + c + shift_psi)
    h = prod.log_().mul_(small)
    h.sub_(r2.mul(1.0 / 1260).sub_(1.0 / 360).mul_(r2).add_(1.0 / 12).mul_(r))         # - d
    h.add_(small, alpha=6.0).sub_(_HALF_LOG_2PI)
    h.addcmul_(small.mul(6.0).add_(0.5), y.log_(), value=-1.0)
    inner = r2.mul(1.0 / 252).sub_(1.0 / 120).mul_(r2).add_(1.0 / 12).mul_(r2)          # c
    inner.add_(r, alpha=0.5).addcmul_(pair, inv_sum.mul(small))
    h.addcmul_(xm1, inner, value=-1.0)
    if not need_grad:
        return h, None
    # g = (n + 1) trigamma_series(y) - r/2 - p - (x - 1) shift_psi1
    p = r2.mul(1.0 / 42).sub_(1.0 / 30).mul_(r2).add_(1.0 / 6).mul_(r2)
    g = p.add(r, alpha=0.5).add_(1.0).mul_(r).mul_(small.mul(6.0).add_(1.0))
    g.sub_(p).sub_(r, alpha=0.5)
    shift_psi1 = it.mul_(it).add_(it4.mul_(it4)).add_(it6.mul_(it6)).mul_(pair).mul_(pair)
    shift_psi1.sub_(inv_sum, alpha=2.0).mul_(small)
    g.addcmul_(xm1, shift_psi1, value=-1.0)
    return h, g


_CPU_PIECE = 1 << 16  # elements per piece on a CPU: the few dozen temporaries of a piece stay in cache


def _h_sum_and_g(x: torch.Tensor, dim: int, wide: torch.dtype,
                 need_grad: bool) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """sum_k h(x_k) along ``dim`` (in ``wide``) and g(x), elementwise; on a CPU piece by piece along dim 0
    (measured: 4x faster than whole-tensor passes at 64 x 512 x 8 x 8, which go to main memory)."""
    per_row = x[0].numel() if x.dim() > 1 else x.numel()
    rows = max(1, _CPU_PIECE // max(per_row, 1))
    if x.device.type != "cpu" or dim == 0 or x.dim() == 1 or rows >= x.shape[0]:
        h, g = _h_and_g(x, need_grad)
        return h.sum(dim=dim, dtype=wide), g
    h_sum = x.new_empty(x.shape[:dim] + x.shape[dim + 1:], dtype=wide)
    g = torch.empty_like(x) if need_grad else None
    for start in range(0, x.shape[0], rows):
        piece = slice(start, start + rows)
        h_piece, g_piece = _h_and_g(x[piece], need_grad)
        h_sum[piece] = h_piece.sum(dim=dim, dtype=wide)
        if need_grad:
            g[piece] = g_piece
    return h_sum, g


class _DirichletKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, alpha: torch.Tensor, dim: int, need_grad: bool) -> torch.Tensor:
        k = alpha.shape[dim]
        wide = torch.float32 if alpha.device.type == "mps" else torch.float64   # per-position precision
        x = alpha if alpha.dtype in (torch.float32, torch.float64) else alpha.float()   # at least float32
        strength = x.sum(dim=dim, dtype=wide)                                  # S
        h_sum, g = _h_sum_and_g(x, dim, wide, need_grad)
        h_s, psi_s, g_s, psi1_s = _series(strength)
        kl = h_sum - h_s + (k - 1) * psi_s - math.lgamma(k)
        if need_grad:
            big_g = g_s + (k - 1) * psi1_s                                     # G(S) = 1 - (S - K) trigamma(S)
            ctx.save_for_backward(g.neg_().add_(big_g.to(x.dtype).unsqueeze(dim)))  # dKL/dalpha
            ctx.dim, ctx.dtype = dim, alpha.dtype
        return kl.to(alpha.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_kl: torch.Tensor):
        (dkl_dalpha,) = ctx.saved_tensors
        return (grad_kl.unsqueeze(ctx.dim) * dkl_dalpha).to(ctx.dtype), None, None


def dirichlet_kl_per_position(alpha: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """KL( Dir(alpha) || Dir(1, ..., 1) ) along ``dim``: ``kl_dirichlet_uniform``'s value, exact in float32.

    The formula is rearranged so that no large terms cancel (see above), and the gradient is its
    closed form, so alphas up to e^20 and beyond keep float32's relative precision (a few 1e-7 of
    the value; ``tests/test_kl.py`` measures value and gradient against float64). Computed in
    float32 (float64 for float64 input; half precisions are promoted), per-position sums in float64
    (float32 on MPS); the result and the gradient have ``alpha``'s dtype.
    """
    if not alpha.is_floating_point():
        raise TypeError(f"alpha must be a float tensor, got {alpha.dtype}")
    need_grad = alpha.requires_grad and torch.is_grad_enabled()   # else no gradient is computed or kept
    return _DirichletKL.apply(alpha, dim if dim >= 0 else alpha.dim() + dim, need_grad)
