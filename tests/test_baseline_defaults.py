"""The baselines' defaults are their authors': VQ-VAE-EMA as Sonnet's VectorQuantizerEMA, VQ-STE++ as vqtorch.

Hand-checked single steps of each new default, the earlier variants ('project-v1') still reachable and
unchanged, and two-step training runs that resume exactly (the new state: EMA update counter, inner-step
momentum, the k-means flag, travels in the checkpoints).
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import train_args
from stage1_tokenizer import train as train_script
from stage1_tokenizer.quantizers import VQSTEPPQuantizer, VQVAEEMAQuantizer
from stage1_tokenizer.quantizers.vqste_pp import kmeans

# ---------------------------------------------------------------------------------------------- VQ-VAE-EMA


def ema_tiny(variant: str, eps: float = 1e-5) -> VQVAEEMAQuantizer:
    """K = 3 codes in 1-d at 0, 1 and 5 (code 2 is never the nearest below), decay 0.5."""
    q = VQVAEEMAQuantizer(codebook_size=3, codebook_dim=1, decay=0.5, eps=eps, variant=variant).train()
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[0.0], [1.0], [5.0]]))
        if variant == "project-v1":
            q.ema_sum.copy_(q.codebook)
    return q


def smoothed(counts: list[float], eps: float) -> list[float]:
    """Sonnet's Laplace smoothing: (N_k + eps) / (n + K eps) * n."""
    n = sum(counts)
    return [(c + eps) / (n + len(counts) * eps) * n for c in counts]


def test_vqvae_ema_default_is_sonnets_zero_started_debiased_average():
    q = ema_tiny("sonnet")
    assert q.variant == "sonnet" and VQVAEEMAQuantizer().variant == "sonnet"
    assert q.ema_count.sum() == 0 and q.ema_sum.abs().sum() == 0 and q.ema_steps.item() == 0
    eps = 1e-5
    # step 1: z = 0.1, 0.2 -> code 0; 0.9 -> code 1; code 2 unused. Batch counts [2, 1, 0], sums [0.3, 0.9, 0].
    q(torch.tensor([0.1, 0.2, 0.9]).view(1, 1, 1, 3))
    torch.testing.assert_close(q.ema_count, torch.tensor([1.0, 0.5, 0.0]))         # hidden: 0.5 * batch
    torch.testing.assert_close(q.ema_sum.flatten(), torch.tensor([0.15, 0.45, 0.0]))
    # debiased by 1 - 0.5^1: the batch's own counts and sums; code 2: 0 / (small) = 0, no division by zero
    s = smoothed([2.0, 1.0, 0.0], eps)
    expected = torch.tensor([0.3 / s[0], 0.9 / s[1], 0.0])
    torch.testing.assert_close(q.codebook.flatten(), expected, rtol=1e-6, atol=0)
    assert q.codebook[2].item() == 0.0 and torch.isfinite(q.codebook).all()
    assert q.codebook[0].item() == pytest.approx(0.15, rel=1e-4) and q.codebook[1].item() == pytest.approx(0.9, rel=1e-4)
    # the unused code now sits at the origin, where it can be picked
    assert q.eval()(torch.tensor([0.01]).view(1, 1, 1, 1)).indices.item() == 2
    # step 2: z = 0.1 -> code 0 (now 0.15), 0.8 -> code 1 (0.9). Batch counts [1, 1, 0], sums [0.1, 0.8, 0].
    # hidden: counts [1, 0.75, 0], sums [0.125, 0.625, 0]; debiased by 1 - 0.5^2 = 0.75:
    # counts [4/3, 1, 0], sums [1/6, 5/6, 0] -> codes ~[0.125, 0.8333, 0]
    q.train()(torch.tensor([0.1, 0.8]).view(1, 1, 1, 2))
    assert q.ema_steps.item() == 2
    torch.testing.assert_close(q.ema_count, torch.tensor([1.0, 0.75, 0.0]))
    torch.testing.assert_close(q.ema_sum.flatten(), torch.tensor([0.125, 0.625, 0.0]))
    s = smoothed([4 / 3, 1.0, 0.0], eps)
    expected = torch.tensor([(0.125 / 0.75) / s[0], (0.625 / 0.75) / s[1], 0.0])
    torch.testing.assert_close(q.codebook.flatten(), expected, rtol=1e-5, atol=0)
    assert q.codebook[0].item() == pytest.approx(0.125, rel=1e-4)


def test_vqvae_ema_project_v1_variant_is_unchanged():
    q = ema_tiny("project-v1", eps=0.0)
    assert q.ema_count.tolist() == [1.0, 1.0, 1.0]
    q(torch.tensor([0.1, 0.2, 0.9]).view(1, 1, 1, 3))
    # counts 0.5 * 1 + 0.5 * [2, 1, 0] = [1.5, 1, 0.5]; sums 0.5 * [0, 1, 5] + 0.5 * [0.3, 0.9, 0]; no debiasing
    torch.testing.assert_close(q.ema_count, torch.tensor([1.5, 1.0, 0.5]))
    torch.testing.assert_close(q.codebook.flatten(), torch.tensor([0.15 / 1.5, 0.95 / 1.0, 2.5 / 0.5]))
    assert q.codebook[2].item() == pytest.approx(5.0)   # the unused code keeps its initial vector
    # a fresh project-v1 quantizer starts with sums equal to its (uniform) initial codebook
    fresh = VQVAEEMAQuantizer(codebook_size=8, codebook_dim=2, variant="project-v1")
    assert torch.equal(fresh.ema_sum, fresh.codebook) and torch.equal(fresh.ema_count, torch.ones(8))
    with pytest.raises(ValueError, match="variant"):
        VQVAEEMAQuantizer(variant="rosinality")


def test_vqvae_ema_state_from_before_the_variants_loads():
    old = VQVAEEMAQuantizer(codebook_size=4, codebook_dim=2, variant="project-v1")
    state = {k: v for k, v in old.state_dict().items() if k != "ema_steps"}   # as saved by the first version
    again = VQVAEEMAQuantizer(codebook_size=4, codebook_dim=2, variant="project-v1")
    again.load_state_dict(state)
    assert torch.equal(again.codebook, old.codebook) and again.ema_steps.item() == 0
    with pytest.warns(UserWarning, match="vqvae_ema_variant=project-v1"):
        VQVAEEMAQuantizer(codebook_size=4, codebook_dim=2).load_state_dict(state)


# ---------------------------------------------------------------------------------------------- VQ-STE++


def positions(t: torch.Tensor) -> torch.Tensor:
    """(1, D, 1, N) -> (N, D)."""
    return t[0, :, 0, :].t()


def vq_tiny(**kwargs) -> VQSTEPPQuantizer:
    """K = 2 codes in 2-d at (0, 0) and (1, 1); a learned affine map at its start (scale 1, shift 0): C = B."""
    q = VQSTEPPQuantizer(codebook_size=2, codebook_dim=2, affine="learned", **kwargs).train()
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    return q


def test_vqste_pp_defaults_are_vqtorchs():
    q = VQSTEPPQuantizer()
    assert q.variant == "vqtorch"
    assert (q.inner_lr, q.inner_momentum, q.codebook_weight, q.commitment) == (50.0, 0.9, 1.0, 0.0)
    assert q.inner_mean_over_dims and not q.kmeans_init and q.sync_nu == 0.2 and q.affine_mode == "statistics"
    # without the in-place step, vqtorch's default beta = 0.95: 0.95 codebook + 0.05 commitment
    no_inner = VQSTEPPQuantizer(inner_lr=0.0)
    assert (no_inner.codebook_weight, no_inner.commitment) == (0.95, 0.05)
    old = VQSTEPPQuantizer(variant="project-v1")
    assert (old.inner_lr, old.inner_momentum, old.codebook_weight, old.commitment) == (0.5, 0.0, 1.0, 0.25)
    assert not old.inner_mean_over_dims
    with pytest.raises(ValueError, match="variant"):
        VQSTEPPQuantizer(variant="vqtorch-0.1")
    with pytest.raises(ValueError, match="inner_momentum"):
        VQSTEPPQuantizer(inner_momentum=1.0)
    with pytest.raises(ValueError, match=r"\[0, 0.5\]"):
        VQSTEPPQuantizer(variant="project-v1", inner_lr=1.0)


def test_vqste_pp_inner_sgd_momentum_step_by_hand_over_two_steps():
    q = vq_tiny()    # vqtorch: lr 50, momentum 0.9, loss mean over the N x D elements
    z1 = torch.tensor([[0.1, 0.1], [0.2, 0.0], [0.9, 1.0]]).t().reshape(1, 2, 1, 3)
    out = q(z1)
    assert out.indices.flatten().tolist() == [0, 0, 1]
    # dL/dc_k = 2 (n_k c_k - S_k) / (N D), N D = 6: code 0 (n 2, S (0.3, 0.1)) -> (-0.1, -1/30);
    # code 1 (n 1, S (0.9, 1.0), c (1, 1)) -> (1/30, 0). v = grad; c <- c - 50 v
    v1 = torch.tensor([[-0.1, -1 / 30], [1 / 30, 0.0]])
    c1 = torch.tensor([[0.0, 0.0], [1.0, 1.0]]) - 50 * v1               # [[5, 5/3], [-2/3, 1]]
    torch.testing.assert_close(q.inner_velocity, v1)
    torch.testing.assert_close(q.codebook.detach(), c1)
    torch.testing.assert_close(positions(out.z_q.detach()), c1[[0, 0, 1]])    # the decoder sees the new codes
    # aux: codebook loss only (weight 1), no commitment: the encoder gets no gradient from it
    assert out.aux_loss.item() == pytest.approx(float((c1[[0, 0, 1]] - positions(z1)).pow(2).mean()), rel=1e-6)
    z = z1.clone().requires_grad_()
    q2 = vq_tiny()
    q2(z).aux_loss.backward()
    assert z.grad is None or z.grad.abs().sum() == 0
    # step 2: z = (4, 2) -> code 0 (5, 5/3); (0, 1) -> code 1 (-2/3, 1). N D = 4
    z2 = torch.tensor([[4.0, 2.0], [0.0, 1.0]]).t().reshape(1, 2, 1, 2)
    assert q(z2).indices.flatten().tolist() == [0, 1]
    g2 = torch.stack([2 * (c1[0] - torch.tensor([4.0, 2.0])), 2 * (c1[1] - torch.tensor([0.0, 1.0]))]) / 4
    v2 = 0.9 * v1 + g2
    torch.testing.assert_close(q.inner_velocity, v2)
    torch.testing.assert_close(q.codebook.detach(), c1 - 50 * v2)


def test_vqste_pp_inner_step_equals_torch_sgd_on_vqtorchs_mean_loss():
    # vqtorch's in-place update on a plain codebook: ((z_q - sg(z))^2).mean().backward(); SGD(lr 50, momentum 0.9)
    torch.manual_seed(0)
    q = VQSTEPPQuantizer(codebook_size=6, codebook_dim=3, affine="learned").train()
    reference = torch.nn.Parameter(q.codebook.detach().clone())
    sgd = torch.optim.SGD([reference], lr=50.0, momentum=0.9)
    for _ in range(3):
        z = 0.3 * torch.randn(2, 3, 4, 4)
        flat = z.permute(0, 2, 3, 1).reshape(-1, 3)
        nearest = torch.cdist(flat, reference.detach()).argmin(1)
        ((reference[nearest] - flat) ** 2).mean().backward()
        sgd.step()
        sgd.zero_grad()
        q(z)
        torch.testing.assert_close(q.codebook.detach(), reference.detach(), rtol=1e-5, atol=1e-5)


def test_vqste_pp_vqtorch_weights_without_the_inner_step_by_hand():
    q = vq_tiny(inner_lr=0.0)
    z = torch.tensor([[0.1, 0.1], [0.2, 0.0], [0.9, 1.0]]).t().reshape(1, 2, 1, 3)
    out = q(z)
    sq = float((torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]]) - positions(z)).pow(2).mean())
    assert out.aux_loss.item() == pytest.approx(0.95 * sq + 0.05 * sq, rel=1e-6)


def test_vqste_pp_project_v1_variant_is_unchanged():
    q = vq_tiny(variant="project-v1")
    z = torch.tensor([[0.1, 0.1], [0.2, 0.0], [0.9, 1.0]]).t().reshape(1, 2, 1, 3)
    out = q(z)
    # c_k += 2 * 0.5 * (n_k / N) (zbar_k - c_k), N = 3 positions (no division by D, no momentum)
    c0 = (2 / 3) * torch.tensor([0.15, 0.05])
    c1 = torch.tensor([1.0, 1.0]) + (1 / 3) * (torch.tensor([0.9, 1.0]) - 1.0)
    torch.testing.assert_close(q.codebook.detach(), torch.stack([c0, c1]))
    assert q.inner_velocity.abs().sum() == 0
    sq = float((torch.stack([c0, c0, c1]) - positions(z)).pow(2).mean())
    assert out.aux_loss.item() == pytest.approx(1.25 * sq, rel=1e-5)   # codebook loss + commitment 0.25


def test_kmeans_finds_separated_clusters_and_repeats_too_few_vectors():
    torch.manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    x = (centres.repeat_interleave(20, 0) + 0.1 * torch.randn(60, 2))
    found = kmeans(x, 3, torch.Generator().manual_seed(1))
    means = x.view(3, 20, 2).mean(1)
    order = torch.cdist(means, found).argmin(1)
    assert sorted(order.tolist()) == [0, 1, 2]
    torch.testing.assert_close(found[order], means, rtol=0, atol=1e-5)
    few = kmeans(x[:2], 5, torch.Generator().manual_seed(1))
    assert few.shape == (5, 2) and (few - x[:2].repeat(3, 1)[:5]).abs().max() < 0.01


def test_vqste_pp_kmeans_initialisation_once_at_the_first_training_forward():
    torch.manual_seed(0)
    q = VQSTEPPQuantizer(codebook_size=3, codebook_dim=2, affine="learned", inner_lr=0.0, kmeans_init=True)
    centres = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    x = centres.repeat_interleave(4, 0) + 0.05 * torch.randn(12, 2)
    z = x.t().reshape(1, 2, 3, 4)                   # 12 positions, 4 near each centre
    q.eval()(z)
    assert not bool(q.data_initialized)            # evaluation does not initialise
    q.train()(z)
    assert bool(q.data_initialized)
    assert torch.cdist(q.codes().detach(), centres).min(1).values.max() < 0.1
    before = q.codebook.detach().clone()
    q(z + 1.0)
    assert torch.equal(q.codebook.detach(), before)  # no second initialisation (and no inner step: lr 0)
    # the 'statistics' affine map: the codes equal the centroids right after the initialisation
    s = VQSTEPPQuantizer(codebook_size=3, codebook_dim=2, inner_lr=0.0, kmeans_init=True).train()
    s(z)
    assert torch.cdist(s.codes().detach(), centres).min(1).values.max() < 0.1


def test_vqste_pp_state_from_before_the_variants_loads():
    old = VQSTEPPQuantizer(codebook_size=4, codebook_dim=2, variant="project-v1")
    state = {k: v for k, v in old.state_dict().items() if k not in ("inner_velocity", "data_initialized")}
    again = VQSTEPPQuantizer(codebook_size=4, codebook_dim=2, variant="project-v1", kmeans_init=True)
    again.load_state_dict(state)
    assert bool(again.data_initialized) and again.inner_velocity.abs().sum() == 0  # trained: no k-means now
    with pytest.warns(UserWarning, match="vqste_pp_variant=project-v1"):
        VQSTEPPQuantizer(codebook_size=4, codebook_dim=2).load_state_dict(state)


# ---------------------------------------------------------------------------------------------- resume


def train_losses(run) -> list[float]:
    return [r["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
            if (r := json.loads(line))["split"] == "train"]


@pytest.mark.parametrize("quantizer", ["vqste_pp", "vqvae_ema"])
def test_two_step_run_with_the_default_variant_resumes_exactly(synthetic_npz, tmp_path, quantizer):
    common = [f"model.quantizer={quantizer}", "train.beta_max=0", "train.batch_size=16", "train.log_every=1",
              "train.checkpoint_every=100"]
    full = tmp_path / "full"
    train_script.main(train_args(full, synthetic_npz, "train.max_steps=2", *common))
    part = tmp_path / "part"
    train_script.main(train_args(part, synthetic_npz, "train.max_steps=1", *common))   # checkpoint at step 1
    saved = load_file(part / "tokenizer" / "model.safetensors")
    moved = saved["quantizer.inner_velocity"] if quantizer == "vqste_pp" else saved["quantizer.ema_steps"]
    assert moved.abs().sum() > 0          # the state a resume needs is there after one step
    train_script.main(train_args(part, synthetic_npz, "train.max_steps=2", "resume=latest", *common))
    assert train_losses(full) == train_losses(part) and len(train_losses(part)) == 2
    wa, wb = load_file(full / "tokenizer" / "model.safetensors"), load_file(part / "tokenizer" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
