"""Baseline quantizers (dvae, gs_vqvae, vqvae_ema, sqvae, vqste_pp): shapes, gradients, loss terms by hand,
registry, DDP statistics, short real training runs."""

import math

import pytest
import torch

from stage1_tokenizer import EdVAE, stage1_loss
from stage1_tokenizer.quantizers import (QUANTIZERS, DVAEQuantizer, GSVQVAEQuantizer, SQVAEQuantizer, VQSTEPPQuantizer,
                                         VQVAEEMAQuantizer)

BASELINES = ["dvae", "gs_vqvae", "vqvae_ema", "sqvae", "vqste_pp"]


def test_registry_names():
    assert set(QUANTIZERS) == {"edvae", "dvae", "gs_vqvae", "vqvae_ema", "sqvae", "vqste_pp"}


def test_one_vocabulary_file_registry_name_and_class_name():
    """quantizers/<name>.py holds <Name>Quantizer, registered as <name> (the paper's names, e.g. EdVAE, VQ-STE++)."""
    for name, cls in QUANTIZERS.items():
        assert cls.__module__ == f"stage1_tokenizer.quantizers.{name}", (name, cls.__module__)
        assert cls.__name__.lower() == name.replace("_", "") + "quantizer", (name, cls.__name__)


@pytest.mark.parametrize("name", ["edvae", *BASELINES])
def test_hard_codes_are_the_eval_forwards_codes_and_change_nothing(name):
    torch.manual_seed(0)
    model = EdVAE(quantizer=name, channels=8)
    model.train()(torch.rand(4, 3, 32, 32), tau=1.0)       # one training forward: EMA / statistics / init state
    model.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    z = model.encoder(torch.rand(3, 3, 32, 32) - 0.5)
    codes, uncertainty = model.quantizer.hard_codes(z, with_uncertainty=True)
    out = model.quantizer(z)
    assert torch.equal(codes, out.indices)
    assert (uncertainty is None) == (out.uncertainty is None)
    if uncertainty is not None:
        assert torch.equal(uncertainty, out.uncertainty)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", BASELINES)
def test_shapes_and_gradients_reach_the_encoder(name):
    torch.manual_seed(0)
    model = EdVAE(quantizer=name, channels=8).train()
    expected = 512 if name == "dvae" else 16
    assert model.encoder.blocks.output.conv.out_channels == expected
    out = model(torch.rand(2, 3, 32, 32), tau=0.8)
    assert out.recon.shape == (2, 3, 32, 32) and out.indices.shape == (2, 8, 8)
    stage1_loss(out, 1e-3).loss.backward()
    grad = model.encoder.blocks.input.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    codes = model.encode(torch.rand(2, 3, 32, 32))
    assert codes.shape == (2, 8, 8) and model.decode(codes).shape == (2, 3, 32, 32)


def test_dvae_kl_by_hand():
    q = DVAEQuantizer(codebook_size=3, codebook_dim=2).eval()
    logits = torch.tensor([1.0, 0.0, -1.0]).view(1, 3, 1, 1)
    p = torch.softmax(torch.tensor([1.0, 0.0, -1.0]), 0)
    expected = float((p * (p * 3).log()).sum())
    assert q(logits).kl.item() == pytest.approx(expected, rel=1e-6)
    assert q(logits).indices.item() == 0  # argmax
    assert q(torch.zeros(1, 3, 1, 1)).kl.item() == pytest.approx(0.0, abs=1e-7)  # uniform


def test_gs_vqvae_logits_are_negative_squared_distances():
    q = GSVQVAEQuantizer(codebook_size=3, codebook_dim=2).eval()
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]))
    z = torch.tensor([0.9, 0.1]).view(1, 2, 1, 1)
    d = torch.tensor([0.9**2 + 0.1**2, 0.1**2 + 0.1**2, 0.9**2 + 1.9**2])
    torch.testing.assert_close(q.code_logits(z).flatten(), -d)
    out = q(z)
    assert out.indices.item() == 1  # nearest code
    log_q = torch.log_softmax(-d, 0)
    assert out.kl.item() == pytest.approx(float((log_q.exp() * (log_q + math.log(3))).sum()), rel=1e-5)


def test_vqvae_ema_commitment_straight_through_and_ema_update_by_hand():
    q = VQVAEEMAQuantizer(codebook_size=2, codebook_dim=1, decay=0.5, commitment=0.25, eps=0.0,
                           variant="project-v1").train()
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[0.0], [1.0]]))
        q.ema_sum.copy_(q.codebook)
        q.ema_count.fill_(1.0)
    z = torch.tensor([0.1, 0.2, 0.9]).view(1, 1, 1, 3).requires_grad_()
    out = q(z)
    assert out.indices.flatten().tolist() == [0, 0, 1]
    assert out.aux_loss.item() == pytest.approx(0.25 * (0.1**2 + 0.2**2 + 0.1**2) / 3, rel=1e-6)
    torch.testing.assert_close(out.z_q.detach().flatten(), torch.tensor([0.0, 0.0, 1.0]))
    out.z_q.sum().backward()
    torch.testing.assert_close(z.grad.flatten(), torch.ones(3))  # straight-through: identity
    # EMA: counts 0.5*1 + 0.5*[2, 1] = [1.5, 1.0]; sums 0.5*[0, 1] + 0.5*[0.3, 0.9] = [0.15, 0.95]
    torch.testing.assert_close(q.ema_count, torch.tensor([1.5, 1.0]))
    torch.testing.assert_close(q.codebook.flatten(), torch.tensor([0.15 / 1.5, 0.95 / 1.0]))
    assert not any(p is q.codebook for p in q.parameters())  # the codebook gets no gradient
    with pytest.raises(ValueError, match="not defined"):
        q.eval()(z.detach(), codes="sample")


def test_vqvae_ema_uniform_init():
    q = VQVAEEMAQuantizer(codebook_size=512, codebook_dim=16)
    assert q.codebook.abs().max() <= 1 / 512


@pytest.mark.parametrize("name", BASELINES)
def test_baselines_save_and_load(name, tmp_path):
    model = EdVAE(quantizer=name, channels=8)
    model.save_pretrained(tmp_path / name)
    loaded = EdVAE.from_pretrained(tmp_path / name)
    x = torch.rand(2, 3, 32, 32)
    assert loaded.config.quantizer == name and torch.equal(loaded.encode(x), model.encode(x))


@pytest.mark.parametrize("name", ["vqvae_ema", "gs_vqvae"])
def test_the_vqvae_papers_architecture(name):
    model = EdVAE(quantizer=name, architecture="vqvae", channels=32).train()
    names = dict(model.named_modules())
    assert names["encoder.blocks.down_1"].stride == (2, 2) and names["encoder.blocks.down_1"].kernel_size == (4, 4)
    assert names["encoder.blocks.output"].out_channels == 16
    assert isinstance(names["decoder.blocks.up_2"], torch.nn.ConvTranspose2d)
    out = model(torch.rand(2, 3, 32, 32), tau=1.0)
    assert out.recon.shape == (2, 3, 32, 32) and out.indices.shape == (2, 8, 8)
    stage1_loss(out, 1e-3).loss.backward()
    assert model.encoder.blocks.down_1.weight.grad.abs().sum() > 0
    assert model.grid_shape(64) == (16, 16)


def test_architecture_name_is_checked():
    from edvae_common import ConfigError

    with pytest.raises(ConfigError, match="model.architecture"):
        EdVAE(architecture="resnet")
    with pytest.raises(ConfigError, match="multiple of 8"):
        EdVAE(architecture="vqvae", channels=12)


# ---------------------------------------------------------------------------------------------- SQ-VAE


def sq_tiny(**kwargs) -> SQVAEQuantizer:
    """K = 3 codes in 2-d, s^2 = 1 + exp(0) = 2."""
    q = SQVAEQuantizer(codebook_size=3, codebook_dim=2, log_variance_init=0.0, **kwargs)
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]))
    return q


def test_sqvae_latent_terms_by_hand_in_evaluation():
    q = sq_tiny().eval()
    assert q.variance.item() == pytest.approx(2.0)
    z = torch.tensor([0.9, 0.1]).view(1, 2, 1, 1)
    d = torch.tensor([0.9**2 + 0.1**2, 0.1**2 + 0.1**2, 0.9**2 + 1.9**2])
    p = torch.softmax(-d / (2 * 2.0), 0)
    out = q(z)
    assert out.indices.item() == 1  # argmax of P = the nearest code
    torch.testing.assert_close(out.z_q.flatten(), torch.tensor([1.0, 0.0]))
    neg_entropy = float((p * p.log()).sum())
    distance = float(d[1]) / (2 * 2.0)  # ||z - b_1||^2 / (2 s^2) with the hard code
    assert out.latent_nats.item() == pytest.approx(neg_entropy + distance, rel=1e-5)
    assert out.kl.item() == 0.0 and out.aux_loss.item() == 0.0  # everything is in latent_nats
    # two images of 1x2 positions: summed over positions, averaged over images
    z2 = z.expand(2, 2, 1, 2).contiguous()
    assert q(z2).latent_nats.item() == pytest.approx(2 * (neg_entropy + distance), rel=1e-5)


def test_sqvae_training_sample_and_terms_by_hand():
    q = sq_tiny().train()
    z = torch.tensor([0.9, 0.1, 0.2, 1.5]).view(1, 2, 1, 2)  # two positions: (0.9, 0.2), (0.1, 1.5)
    torch.manual_seed(3)
    out = q(z, tau=0.5)
    # the same Gumbel noise, by hand
    codebook = q.codebook.detach()
    flat = z.permute(0, 2, 3, 1).reshape(2, 2)
    d = torch.cdist(flat, codebook).pow(2)                                       # (2 positions, 3 codes)
    log_p = torch.log_softmax(-d / 4.0, dim=1)
    torch.manual_seed(3)
    gumbel = -torch.empty(1, 3, 1, 2).exponential_().log()
    soft = torch.softmax((log_p.t().reshape(1, 3, 1, 2) + gumbel) / 0.5, dim=1)   # (1, K, 1, 2)
    z_q = torch.einsum("bkhw,kd->bdhw", soft, codebook)
    torch.testing.assert_close(out.z_q.detach(), z_q)
    assert torch.equal(out.indices, soft.argmax(1))
    expected = float((log_p.exp() * log_p).sum() + (z - z_q).pow(2).sum() / 4.0)
    assert out.latent_nats.item() == pytest.approx(expected, rel=1e-5)


def test_sqvae_variance_is_learned_and_gradients_reach_the_codebook():
    q = sq_tiny().train()
    z = torch.randn(2, 2, 3, 3, requires_grad=True)
    out = q(z, tau=1.0)
    (out.latent_nats + out.z_q.sum()).backward()
    assert q.log_variance.grad is not None and q.log_variance.grad.abs() > 0
    assert q.codebook.grad.abs().sum() > 0 and z.grad.abs().sum() > 0
    # a huge variance makes the assignment uniform: -H = -log K per position
    flat = SQVAEQuantizer(codebook_size=3, codebook_dim=2, log_variance_init=30.0).eval()
    assert flat(torch.randn(1, 2, 1, 1)).latent_nats.item() == pytest.approx(-math.log(3), abs=1e-4)
    # the release's start for 64-dim codes, and the dimension-scaled one for 16-dim codes
    assert SQVAEQuantizer(512, 64).variance.item() == pytest.approx(21.0)
    assert SQVAEQuantizer(512, 16).variance.item() == pytest.approx(6.0)


def test_sqvae_encoder_noise_only_in_training():
    q = sq_tiny(encoder_noise=True)
    z = torch.randn(1, 2, 4, 4)
    q.eval()
    assert q(z).latent_nats.item() == q(z).latent_nats.item()
    q.train()
    torch.manual_seed(0)
    a = q(z, tau=1.0).latent_nats.item()
    torch.manual_seed(1)
    assert q(z, tau=1.0).latent_nats.item() != a


def test_sqvae_objective_weights_the_latent_terms_by_the_mse():
    # ARELBO: the decoder variance is the MSE, so aux = (2 sg(MSE) / D) * latent_nats with D = 3*32*32 (loss.py)
    torch.manual_seed(0)
    model = EdVAE(quantizer="sqvae", channels=8).eval()
    x = torch.rand(2, 3, 32, 32)
    out = model(x)
    terms = stage1_loss(out, beta=0.5)
    latent = model.quantizer(model.encoder(x - 0.5)).latent_nats
    assert out.aux_loss.item() == 0.0 and out.latent_nats.item() == pytest.approx(latent.item(), rel=1e-6)
    assert terms.aux.item() == pytest.approx(2 * out.mse.item() / 3072 * latent.item(), rel=1e-5)
    assert terms.loss.item() == pytest.approx(out.mse.item() + terms.aux.item(), rel=1e-6)   # kl = 0: no beta
    model.train()
    out = model(x, tau=1.0)
    stage1_loss(out, beta=0.5).aux.backward()
    assert model.quantizer.log_variance.grad.abs() > 0
    assert model.decoder.blocks.output.conv.weight.grad is None or \
        model.decoder.blocks.output.conv.weight.grad.abs().sum() == 0  # sg(MSE): no decoder gradient from it


@pytest.mark.parametrize("name", ["sqvae", "vqste_pp", "gs_vqvae", "vqvae_ema"])
def test_evaluation_argmax_is_the_nearest_code(name):
    torch.manual_seed(0)
    q = QUANTIZERS[name](codebook_size=16, codebook_dim=4).eval()
    z = torch.randn(2, 4, 3, 3)
    codes = q.codes() if name == "vqste_pp" else q.codebook
    nearest = torch.cdist(z.permute(0, 2, 3, 1).reshape(-1, 4), codes.detach().float()).argmin(1).view(2, 3, 3)
    out = q(z)
    assert torch.equal(out.indices, nearest)
    torch.testing.assert_close(out.z_q.detach(), q.embed(nearest).detach())


# ---------------------------------------------------------------------------------------------- VQ-STE++


def test_vqste_pp_inner_step_loss_terms_and_synchronized_gradients_by_hand():
    q = VQSTEPPQuantizer(codebook_size=2, codebook_dim=1, variant="project-v1", affine="learned", sync_nu=0.2,
                          inner_lr=0.5).train()
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[0.0], [1.0]]))
    z = torch.tensor([0.1, 0.2, 0.9]).view(1, 1, 1, 3).requires_grad_()
    out = q(z)
    assert out.indices.flatten().tolist() == [0, 0, 1]
    # inner step: c_k += 2 * 0.5 * (n_k / N) * (zbar_k - c_k): code 0 (2 of 3, mean 0.15) -> 0.1,
    # code 1 (1 of 3, mean 0.9) -> 1 - 0.1/3
    c0, c1 = 0.1, 1.0 - 0.1 / 3
    torch.testing.assert_close(q.codebook.detach().flatten(), torch.tensor([c0, c1]))
    torch.testing.assert_close(out.z_q.detach().flatten(), torch.tensor([c0, c0, c1]))  # the decoder sees new codes
    sq = ((c0 - 0.1) ** 2 + (c0 - 0.2) ** 2 + (c1 - 0.9) ** 2) / 3
    assert out.aux_loss.item() == pytest.approx(sq + 0.25 * sq, rel=1e-5)  # codebook loss + commitment 0.25
    assert out.kl.item() == 0.0
    out.z_q.sum().backward()
    torch.testing.assert_close(z.grad.flatten(), torch.ones(3))                 # straight-through
    torch.testing.assert_close(q.codebook.grad.flatten(), torch.tensor([0.4, 0.2]))  # nu * (uses of each code)
    with pytest.raises(ValueError, match="not defined"):
        q.eval()(z.detach(), codes="sample")


def test_vqste_pp_affine_codebook_and_its_gradients():
    q = VQSTEPPQuantizer(codebook_size=4, codebook_dim=2, affine="learned", affine_lr=10.0, inner_lr=0.0)
    with torch.no_grad():
        q.affine_scale.fill_(0.1)    # scale = 1 + 10 * 0.1 = 2
        q.affine_shift.fill_(-0.05)  # shift = -0.5
    torch.testing.assert_close(q.codes(), 2 * q.codebook.detach() - 0.5)
    z = torch.randn(2, 2, 3, 3, requires_grad=True)
    out = q.train()(z)
    torch.testing.assert_close(out.z_q.detach(), q.embed(out.indices).detach())
    out.aux_loss.backward()
    assert q.affine_scale.grad.abs().sum() > 0 and q.affine_shift.grad.abs().sum() > 0
    assert q.codebook.grad.abs().sum() > 0 and z.grad.abs().sum() > 0


def test_vqste_pp_statistics_affine_matches_the_encoder_moments():
    q = VQSTEPPQuantizer(codebook_size=64, codebook_dim=3, inner_lr=0.0).train()   # affine='statistics'
    assert q.affine_mode == "statistics" and not any("affine" in n for n, _ in q.named_parameters())
    z1 = 0.01 * torch.randn(4, 3, 5, 5) + 0.3
    q(z1)
    flat = z1.permute(0, 2, 3, 1).reshape(-1, 3)
    torch.testing.assert_close(q.codes().mean(0), flat.mean(0))                        # first batch: copied
    torch.testing.assert_close(q.codes().var(0, unbiased=False), flat.var(0, unbiased=False))
    z2 = torch.randn(4, 3, 5, 5)
    q(z2)
    flat2 = z2.permute(0, 2, 3, 1).reshape(-1, 3)
    torch.testing.assert_close(q.running_z_mean, 0.9 * flat.mean(0) + 0.1 * flat2.mean(0))  # momentum 0.1
    before = q.running_z_mean.clone()
    q.eval()(z2)
    assert torch.equal(q.running_z_mean, before)  # evaluation leaves the statistics alone


def _ddp_worker(rank: int, init_file: str, results: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(0)  # the same initial quantizer on both processes
    q = VQSTEPPQuantizer(codebook_size=8, codebook_dim=2, kmeans_init=True).train()  # vqtorch: momentum + k-means
    torch.manual_seed(100 + rank)  # different data (and random streams) on each process
    for _ in range(3):
        q(torch.randn(2, 2, 3, 3) * (1 + rank))
    torch.save({k: v.clone() for k, v in q.state_dict().items()}, f"{results}/rank{rank}.pt")
    dist.destroy_process_group()


def test_vqste_pp_statistics_and_codebook_stay_identical_under_ddp(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    fresh = VQSTEPPQuantizer(codebook_size=8, codebook_dim=2)
    assert not torch.equal(a["codebook"], fresh.codebook.detach())  # the inner steps did move it
    assert a["inner_velocity"].abs().sum() > 0 and bool(a["data_initialized"])


# ---------------------------------------------------------------------------------------------- real data


@pytest.mark.parametrize("quantizer", ["sqvae", "vqste_pp"])
def test_new_baselines_lower_the_mse_on_real_images(cifar_npz, tmp_path, quantizer):
    # Same pattern as test_train.py's run for the other quantizers: tiny config, beta 0 (neither quantizer has a
    # beta-weighted term: their terms are in aux_loss); 150 steps: both leave the initial plateau (MSE ~0.063)
    # by step 100 on this data.
    import json

    from tests.conftest import train_args
    from stage1_tokenizer import train as train_script

    run = tmp_path / "run"
    export = train_script.main(train_args(run, cifar_npz, "train.max_steps=150", "train.log_every=15",
                                          f"model.quantizer={quantizer}", "train.beta_max=0"))
    records = [r for line in (run / "metrics.jsonl").read_text().splitlines()
               if (r := json.loads(line))["split"] == "train"]
    first, last = records[0]["mse"], min(records[-1]["mse"], records[-2]["mse"])
    assert last < 0.6 * first, (first, last)
    assert records[-1]["kl"] == 0.0 and records[-1]["uncertainty"] is None
    assert records[-1]["loss"] != records[-1]["mse"]  # the aux terms are in the loss
    model = EdVAE.from_pretrained(export)
    assert model.config.quantizer == quantizer
