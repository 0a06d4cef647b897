"""The closed-form Dirichlet KL of Appendix A against torch.distributions, and its float32 form against float64."""

import math

import pytest
import torch
from torch.distributions import Dirichlet, kl_divergence

from stage1_tokenizer import EdVAE, stage1_loss
from stage1_tokenizer.loss import _h_and_g, _series, dirichlet_kl_per_position, kl_dirichlet_uniform
from stage1_tokenizer.quantizers import EdVAEQuantizer


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
    for kl in (kl_dirichlet_uniform, dirichlet_kl_per_position):
        assert kl(torch.ones(3, 7, dtype=torch.float64), dim=-1).abs().max() < 1e-8
        # K = 2, alpha = (2, 1): Beta(2,1) vs Beta(1,1): KL = log 2 - 1/2.
        value = kl(torch.tensor([[2.0, 1.0]], dtype=torch.float64), dim=-1)
        assert abs(value.item() - (math.log(2) - 0.5)) < 1e-8


def test_series_match_torchs_special_functions():
    """h, digamma, g and trigamma from the shifted Stirling series, against torch's float64 functions."""
    x = torch.cat([torch.linspace(0.05, 30.0, 3000), torch.logspace(1, 9, 1000)]).double()
    h, psi, g, psi1 = _series(x)
    torch.testing.assert_close(psi, torch.digamma(x), rtol=0, atol=1e-8)
    torch.testing.assert_close(psi1, torch.polygamma(1, x), rtol=1e-8, atol=0)
    small = x < 1e4  # above, the float64 textbook forms lose more than the series' own error
    torch.testing.assert_close(h[small], ((x - 1) * torch.digamma(x) - torch.lgamma(x) - x)[small], rtol=0, atol=1e-8)
    torch.testing.assert_close(g[small], (1 - (x - 1) * torch.polygamma(1, x))[small], rtol=1e-7, atol=0)
    h2, g2 = _h_and_g(x, need_grad=True)  # the few-pass version computes the same numbers
    torch.testing.assert_close(h2, h, rtol=0, atol=1e-12)
    torch.testing.assert_close(g2, g, rtol=0, atol=1e-12)


def _logits(scale: float, at_clamp: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 512, 6, 6, generator=g) * scale
    if at_clamp:
        logits[:, 0] = 20.0
        logits[:4, 1:5] = 19.5
    return logits.clamp(max=20.0)


@pytest.mark.parametrize("scale,at_clamp", [(1.0, False), (3.0, False), (5.0, True)])
def test_float32_kl_and_its_gradient_match_float64(scale, at_clamp):
    """The training KL runs in float32; against the textbook formula in float64 (autograd) on the same alphas.

    Measured (this test's inputs): value within 7e-7 relative, gradient w.r.t. the logits within 3e-7 of
    float64 in relative norm and 1e-7 of its largest entry. The bounds below leave ~30x margin and are
    still far below what matters for Adam (whose step is the gradient's sign and scale); the plain float32
    textbook formula, for comparison, is off by ~2x in value and ~90% in gradient at the clamp limit.
    """
    logits = _logits(scale, at_clamp)
    l32 = logits.clone().requires_grad_()
    kl32 = dirichlet_kl_per_position(l32.exp() + 1.0, dim=1)
    kl32.mean().backward()
    l64 = logits.double().requires_grad_()
    alpha64 = (l64.float().exp() + 1.0).double()          # the same float32 alphas, then float64 arithmetic
    kl64 = kl_dirichlet_uniform(alpha64, dim=1)
    kl64.mean().backward()
    assert kl32.dtype == torch.float32
    assert ((kl32.double() - kl64) / kl64.abs()).abs().max() < 2e-6
    diff = l32.grad.double() - l64.grad
    assert diff.norm() / l64.grad.norm() < 1e-5
    assert diff.abs().max() / l64.grad.abs().max() < 1e-5
    if at_clamp:  # why not plain float32: the textbook form cancels terms of ~1e10
        plain = l32.detach().clone().requires_grad_()
        kl_dirichlet_uniform(plain.exp() + 1.0, dim=1).mean().backward()
        assert (plain.grad.double() - l64.grad).norm() / l64.grad.norm() > 0.1


def test_model_gradient_with_the_float32_kl_matches_a_float64_kl(monkeypatch):
    """Whole training step (beta = 1, so the KL carries weight): parameter gradients against a float64 KL."""
    import stage1_tokenizer.quantizers.edvae as edvae_module

    torch.manual_seed(0)
    model = EdVAE(channels=8).train()
    with torch.no_grad():  # larger logits than at init, some at the clamp
        model.encoder.blocks.output.conv.weight.mul_(200.0)
    x = torch.rand(4, 3, 32, 32)

    def grads():
        model.zero_grad()
        torch.manual_seed(1)  # the same Gumbel noise
        stage1_loss(model(x, tau=1.0), beta=1.0).loss.backward()
        return torch.cat([p.grad.flatten().double() for p in model.parameters()])

    ours = grads()
    monkeypatch.setattr(edvae_module, "dirichlet_kl_per_position",
                        lambda alpha, dim: kl_dirichlet_uniform(alpha.double(), dim=dim).float())
    ref = grads()
    assert (ours - ref).norm() / ref.norm() < 1e-5


def test_quantizer_kl_is_the_mean_over_positions_of_the_closed_form():
    q = EdVAEQuantizer(codebook_size=16, codebook_dim=4, clamp_max=20.0).train()
    z_e = torch.randn(2, 16, 3, 3) * 5
    z_e[0, 0, 0, 0] = 30.0  # above the clamp: must be clamped to 20
    out = q(z_e, tau=1.0)
    alpha = z_e.double().clamp(max=20).exp() + 1
    expected = reference_kl(alpha.permute(0, 2, 3, 1)).mean()
    assert abs(out.kl.item() - expected.item()) < 1e-5 * max(1.0, expected.item())
    # the evidential uncertainty is K / S per position
    torch.testing.assert_close(out.uncertainty.double(), 16 / alpha.sum(1), rtol=1e-5, atol=1e-7)


def test_quantizer_is_numerically_safe_under_bf16_autocast():
    q = EdVAEQuantizer(codebook_size=512, codebook_dim=16).train()
    z_e = (torch.randn(2, 512, 4, 4) * 10).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(z_e.bfloat16(), tau=0.5)
    assert out.z_q.dtype == torch.float32 and torch.isfinite(out.z_q).all()
    assert torch.isfinite(out.kl) and out.kl > 0
    (out.z_q.sum() + out.kl).backward()
    assert torch.isfinite(z_e.grad).all() and z_e.grad.abs().sum() > 0


def test_the_inference_calls_compute_no_kl(monkeypatch):
    """encode, decode, reconstruct and analyze never reach a loss term."""
    import stage1_tokenizer.quantizers.edvae as edvae_module

    def no_kl(*args, **kwargs):
        raise AssertionError("the KL was computed")

    model = EdVAE(channels=8)
    x = torch.rand(2, 3, 32, 32)
    monkeypatch.setattr(edvae_module, "dirichlet_kl_per_position", no_kl)
    for codes in ("argmax", "sample"):
        model.decode(model.encode(x, codes=codes))
        model.reconstruct(x, codes=codes)
        assert model.analyze(x, codes=codes).uncertainty.shape == (2, 8, 8)
    with pytest.raises(AssertionError, match="the KL was computed"):
        model.train()(x)


def test_the_kl_in_cpu_pieces_equals_the_whole_tensor_pass(monkeypatch):
    import stage1_tokenizer.loss as loss_module

    logits = _logits(3.0, at_clamp=True)
    results = []
    for piece, channels_last in ((1 << 16, False), (1 << 40, False), (1 << 16, True)):
        monkeypatch.setattr(loss_module, "_CPU_PIECE", piece)
        x = logits.contiguous(memory_format=torch.channels_last) if channels_last else logits.clone()
        x.requires_grad_()
        value = dirichlet_kl_per_position(x.exp() + 1.0, dim=1)
        value.sum().backward()
        results.append((value.detach(), x.grad))
    for value, grad in results[1:]:
        assert torch.equal(value, results[0][0]) and torch.equal(grad, results[0][1])
    assert results[2][1].is_contiguous(memory_format=torch.channels_last)
