"""The closed-form Dirichlet KL of Appendix A against torch.distributions."""

import math

import torch
from torch.distributions import Dirichlet, kl_divergence

from stage1_tokenizer.quantizers import DirichletQuantizer, kl_dirichlet_uniform


def reference_kl(alpha: torch.Tensor) -> torch.Tensor:
    return kl_divergence(Dirichlet(alpha), Dirichlet(torch.ones_like(alpha)))


def test_kl_matches_torch_distributions_on_random_alphas():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 512, generator=g, dtype=torch.float64) * 3
    alpha = logits.exp() + 1
    torch.testing.assert_close(kl_dirichlet_uniform(alpha), reference_kl(alpha), rtol=1e-10, atol=1e-8)


def test_kl_matches_with_alphas_at_the_clamp_limit():
    # Logits at the clamp (20) give alphas ~ 4.85e8: the regime where float32 would break down.
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(32, 512, generator=g, dtype=torch.float64)
    logits[:, 0] = 20.0
    logits[:8, 1:5] = 19.5
    alpha = logits.exp() + 1
    ours, ref = kl_dirichlet_uniform(alpha), reference_kl(alpha)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-6)
    assert (ours > 0).all()


def test_kl_is_zero_for_the_flat_dirichlet_and_small_k_by_hand():
    assert kl_dirichlet_uniform(torch.ones(3, 7, dtype=torch.float64)).abs().max() < 1e-12
    # K = 2, alpha = (2, 1): Beta(2,1) vs Beta(1,1): KL = log 2 - 1/2.
    value = kl_dirichlet_uniform(torch.tensor([[2.0, 1.0]], dtype=torch.float64))
    assert abs(value.item() - (math.log(2) - 0.5)) < 1e-12


def test_quantizer_kl_is_the_mean_over_positions_of_the_closed_form():
    q = DirichletQuantizer(codebook_size=16, codebook_dim=4, clamp_max=20.0).train()
    z_e = torch.randn(2, 16, 3, 3) * 5
    z_e[0, 0, 0, 0] = 30.0  # above the clamp: must be clamped to 20
    out = q(z_e, tau=1.0)
    alpha = z_e.double().clamp(max=20).exp() + 1
    expected = reference_kl(alpha.permute(0, 2, 3, 1)).mean()
    assert abs(out.kl.item() - expected.item()) < 1e-4 * max(1.0, expected.item())
    # the evidential uncertainty is K / S per position
    torch.testing.assert_close(out.uncertainty.double(), 16 / alpha.sum(1), rtol=1e-5, atol=1e-7)


def test_quantizer_is_numerically_safe_under_bf16_autocast():
    q = DirichletQuantizer(codebook_size=512, codebook_dim=16).train()
    z_e = (torch.randn(2, 512, 4, 4) * 10).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(z_e.bfloat16(), tau=0.5)
    assert out.z_q.dtype == torch.float32 and torch.isfinite(out.z_q).all()
    assert torch.isfinite(out.kl) and out.kl > 0
    (out.z_q.sum() + out.kl).backward()
    assert torch.isfinite(z_e.grad).all() and z_e.grad.abs().sum() > 0
