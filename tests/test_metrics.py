"""Perplexity and code counts on hand-made examples."""

import math

import torch

from stage1_tokenizer.metrics import code_counts, codes_used, perplexity, psnr_from_mse


def test_perplexity_of_known_distributions():
    assert perplexity(code_counts(torch.zeros(100, dtype=torch.long), 512)) == 1.0
    uniform = torch.arange(512).repeat(3)
    assert abs(perplexity(code_counts(uniform, 512)) - 512) < 1e-9
    half = torch.tensor([0, 0, 1, 1])
    assert abs(perplexity(code_counts(half, 8)) - 2) < 1e-12
    skew = torch.tensor([0, 0, 0, 1])
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert abs(perplexity(code_counts(skew, 4)) - math.exp(h)) < 1e-12
    assert codes_used(code_counts(skew, 4)) == 2


def test_psnr():
    assert abs(psnr_from_mse(0.01) - 20.0) < 1e-12
