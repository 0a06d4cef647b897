"""The closed-form KL divergence between a Dirichlet and the flat Dirichlet (Appendix A)."""

from __future__ import annotations

import math

import torch


def kl_dirichlet_uniform(alpha: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """KL( Dir(alpha) || Dir(1, ..., 1) ) along ``dim``.

    = log Gamma(S) - log Gamma(K) - sum_k log Gamma(alpha_k)
      + sum_k (alpha_k - 1) (digamma(alpha_k) - digamma(S)),   S = sum_k alpha_k.

    With alphas as large as e^20 the terms cancel to a few parts in 1e9, which
    float32 cannot resolve; call it on float64 input (the quantizer does).
    """
    k = alpha.shape[dim]
    s = alpha.sum(dim=dim, keepdim=True)
    log_norm = torch.lgamma(s).squeeze(dim) - math.lgamma(k) - torch.lgamma(alpha).sum(dim=dim)
    digamma_term = ((alpha - 1.0) * (torch.digamma(alpha) - torch.digamma(s))).sum(dim=dim)
    return log_norm + digamma_term
