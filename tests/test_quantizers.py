"""Baseline quantizers (dvae, gs_vqvae, vqvae_ema): shapes, gradients, loss terms by hand, registry."""

import math

import pytest
import torch

from stage1_tokenizer import EdVAE
from stage1_tokenizer.quantizers import QUANTIZERS, EMAVectorQuantizer, GumbelQuantizer, GumbelVQQuantizer

BASELINES = ["dvae", "gs_vqvae", "vqvae_ema"]


def test_registry_names():
    assert set(QUANTIZERS) == {"edvae", "dvae", "gs_vqvae", "vqvae_ema"}


@pytest.mark.parametrize("name", BASELINES)
def test_shapes_and_gradients_reach_the_encoder(name):
    torch.manual_seed(0)
    model = EdVAE(quantizer=name, channels=8).train()
    expected = 512 if name == "dvae" else 16
    assert model.encoder.blocks.output.conv.out_channels == expected
    out = model(torch.rand(2, 3, 32, 32), tau=0.8)
    assert out.recon.shape == (2, 3, 32, 32) and out.indices.shape == (2, 8, 8)
    (out.mse + 1e-3 * out.kl + out.aux_loss).backward()
    grad = model.encoder.blocks.input.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    codes = model.encode(torch.rand(2, 3, 32, 32))
    assert codes.shape == (2, 8, 8) and model.decode(codes).shape == (2, 3, 32, 32)


def test_dvae_kl_by_hand():
    q = GumbelQuantizer(codebook_size=3, codebook_dim=2).eval()
    logits = torch.tensor([1.0, 0.0, -1.0]).view(1, 3, 1, 1)
    p = torch.softmax(torch.tensor([1.0, 0.0, -1.0]), 0)
    expected = float((p * (p * 3).log()).sum())
    assert q(logits).kl.item() == pytest.approx(expected, rel=1e-6)
    assert q(logits).indices.item() == 0  # argmax
    assert q(torch.zeros(1, 3, 1, 1)).kl.item() == pytest.approx(0.0, abs=1e-7)  # uniform


def test_gs_vqvae_logits_are_negative_squared_distances():
    q = GumbelVQQuantizer(codebook_size=3, codebook_dim=2).eval()
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
    q = EMAVectorQuantizer(codebook_size=2, codebook_dim=1, decay=0.5, commitment=0.25, eps=0.0).train()
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
    q = EMAVectorQuantizer(codebook_size=512, codebook_dim=16)
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
    (out.mse + out.aux_loss + 1e-3 * out.kl).backward()
    assert model.encoder.blocks.down_1.weight.grad.abs().sum() > 0
    assert model.grid_shape(64) == (16, 16)


def test_architecture_name_is_checked():
    from edvae_common import ConfigError

    with pytest.raises(ConfigError, match="model.architecture"):
        EdVAE(architecture="resnet")
    with pytest.raises(ConfigError, match="multiple of 8"):
        EdVAE(architecture="vqvae", channels=12)
