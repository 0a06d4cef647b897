"""Codebook-usage and reconstruction metrics, always on hard codes."""

from __future__ import annotations

import math

import torch


def code_counts(indices: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """How often each code occurs in ``indices`` (any shape): LongTensor (K,) on the same device.

    A scatter-add rather than ``torch.bincount``, which synchronises a GPU to size its output.
    """
    flat = indices.reshape(-1).long()
    counts = torch.zeros(codebook_size, dtype=torch.long, device=flat.device)
    return counts.scatter_add_(0, flat, torch.ones_like(flat))


def perplexity(counts: torch.Tensor) -> float:
    """exp(entropy) of the empirical code distribution (1 = one code, K = uniform use)."""
    counts = counts.double()
    total = counts.sum()
    if total <= 0:
        return float("nan")
    p = counts[counts > 0] / total
    return math.exp(float(-(p * p.log()).sum()))


def codes_used(counts: torch.Tensor) -> int:
    """Number of codes that occur at least once."""
    return int((counts > 0).sum())


def psnr_from_mse(mse: float, peak: float = 1.0) -> float:
    """PSNR in dB of images on a [0, peak] scale."""
    return float("inf") if mse <= 0 else 10.0 * math.log10(peak**2 / mse)
