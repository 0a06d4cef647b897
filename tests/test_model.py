"""The EdVAE architecture, its public API and save/load."""

import pytest
import torch

from edvae_common import ConfigError
from stage1_tokenizer import EdVAE


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_match_the_public_release():
    assert n_params(EdVAE.from_config("configs/stage1/cifar10.yaml")) == 5_195_907
    assert n_params(EdVAE.from_config("configs/stage1/celeba.yaml")) == 5_195_907
    assert n_params(EdVAE.from_config("configs/stage1/lsun_church.yaml")) == 5_211_267


def test_layer_structure_is_the_papers():
    model = EdVAE()
    names = dict(model.named_modules())
    assert names["encoder.blocks.input"].kernel_size == (3, 3)
    assert names["encoder.blocks.output.conv"].out_channels == 512
    assert names["encoder.blocks.output.conv"].kernel_size == (1, 1)
    assert names["encoder.blocks.output.conv"].padding == (0, 0)
    assert names["decoder.blocks.group_1.block_1.res_path.conv_1"].in_channels == 16
    assert names["decoder.blocks.group_1.block_1.id_path"].kernel_size == (1, 1)
    assert names["encoder.blocks.group_1.block_1"].post_gain == pytest.approx(1 / 36)
    assert tuple(model.quantizer.codebook.shape) == (512, 16)
    conv_w = names["encoder.blocks.group_2.block_1.res_path.conv_2"].weight
    assert abs(conv_w.std().item() - 0.02) < 0.002  # N(0, 0.02) init
    assert names["encoder.blocks.input"].bias.abs().sum() > 0  # PyTorch's default biases, as the release
    zero = EdVAE(channels=8, conv_bias_init="zero")
    assert all(m.bias.abs().sum() == 0 for m in zero.modules() if isinstance(m, torch.nn.Conv2d))


@pytest.mark.parametrize("size,grid", [(32, 8), (64, 16), (128, 32)])
def test_token_grid_shapes(size, grid):
    model = EdVAE(channels=8, first_kernel=7 if size == 128 else 3)
    codes = model.encode(torch.rand(2, 3, size, size))
    assert codes.shape == (2, grid, grid) and codes.dtype == torch.long
    assert model.decode(codes).shape == (2, 3, size, size)
    assert model.grid_shape(size) == (grid, grid)


def test_training_forward_backward_reaches_every_part():
    torch.manual_seed(0)
    model = EdVAE(channels=8).train()
    out = model(torch.rand(4, 3, 32, 32), tau=0.9)
    assert out.recon.shape == (4, 3, 32, 32) and out.indices.shape == (4, 8, 8)
    assert out.uncertainty.shape == (4, 8, 8) and ((out.uncertainty > 0) & (out.uncertainty <= 1)).all()
    (out.mse + 1e-3 * out.kl).backward()
    for name in ("encoder.blocks.input.weight", "quantizer.codebook", "decoder.blocks.output.conv.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_encode_is_deterministic_and_sampling_is_seeded():
    model = EdVAE(channels=8)
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(model.encode(x), model.encode(x))
    torch.manual_seed(3)
    a = model.encode(x, codes="sample")
    torch.manual_seed(3)
    b = model.encode(x, codes="sample")
    assert torch.equal(a, b)
    model.eval()
    model.encode(x)
    assert not model.training  # encode leaves the mode as it found it
    model.train()
    model.encode(x)
    assert model.training


def test_reconstruct_is_decode_of_encode_and_in_range():
    model = EdVAE(channels=8)
    x = torch.rand(3, 3, 32, 32)
    r = model.reconstruct(x)
    assert torch.equal(r, model.decode(model.encode(x)))
    assert r.min() >= 0 and r.max() <= 1


def test_save_load_round_trip_gives_identical_tokens(tmp_path):
    torch.manual_seed(0)
    model = EdVAE(channels=8, clamp_max=15.0)
    with torch.no_grad():
        for m in model.encoder.modules():  # PyTorch's default init: codes depend visibly on the input
            if isinstance(m, torch.nn.Conv2d):
                m.reset_parameters()
        model.encoder.blocks.output.conv.weight.mul_(100.0)
    x = torch.rand(4, 3, 32, 32)
    model.save_pretrained(tmp_path / "tok")
    assert (tmp_path / "tok" / "model.safetensors").is_file() and (tmp_path / "tok" / "config.json").is_file()
    loaded = EdVAE.from_pretrained(tmp_path / "tok")
    assert loaded.config == model.config and loaded.config.clamp_max == 15.0
    assert torch.equal(loaded.encode(x), model.encode(x))
    assert len(torch.unique(model.encode(x))) > 1
    assert torch.equal(loaded.decode(model.encode(x)), model.decode(model.encode(x)))
    assert loaded.weights_hash() == model.weights_hash()


def test_from_config_accepts_a_mapping_and_validates_it():
    model = EdVAE.from_config({"channels": 8, "first_kernel": 7})
    assert model.config.channels == 8 and model.config.first_kernel == 7
    from edvae_common import ConfigError

    with pytest.raises(ConfigError, match="model.chanels.*Did you mean 'model.channels'"):
        EdVAE.from_config({"chanels": 8})
    with pytest.raises(ConfigError, match="model.first_kernel"):
        EdVAE(first_kernel=4)
    with pytest.raises(ConfigError, match="unknown quantizer 'vq'"):
        EdVAE(quantizer="vq")


def test_hard_codes_follow_pi_in_training_and_in_sampling():
    """argmax of the Gumbel-softmax sample ~ Cat(pi) (Gumbel-max), and codes='sample' draws Cat(pi)."""
    from stage1_tokenizer.quantizers import EdVAEQuantizer

    q = EdVAEQuantizer(codebook_size=4, codebook_dim=2)
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    alpha = logits.exp() + 1
    pi = alpha / alpha.sum()
    z_e = logits.view(1, 4, 1, 1).expand(1, 4, 100, 100).contiguous()  # 10,000 positions with the same logits
    torch.manual_seed(0)
    for mode in ("train", "sample"):
        if mode == "train":
            out = q.train()(z_e, tau=0.7)
        else:
            out = q.eval()(z_e, codes="sample")
        freq = torch.bincount(out.indices.flatten(), minlength=4).double() / 10_000
        sigma = (pi * (1 - pi) / 10_000).sqrt()
        assert ((freq - pi).abs() < 4 * sigma).all(), (mode, freq, pi)
    assert torch.equal(q.eval()(z_e).indices, torch.zeros(1, 100, 100, dtype=torch.long))  # argmax


def test_encode_moves_images_to_the_model_device():
    model = EdVAE(channels=8)
    codes = model.encode(torch.rand(1, 3, 32, 32, dtype=torch.float64).float())
    assert codes.device == model.quantizer.codebook.device


def test_decoder_channels_widens_only_the_decoder_and_round_trips(tmp_path):
    model = EdVAE(channels=8, decoder_channels=16, blocks_per_group=1, codebook_size=32, codebook_dim=4)
    narrow = EdVAE(channels=8, blocks_per_group=1, codebook_size=32, codebook_dim=4)
    assert model.config.decoder_width == 16 and narrow.config.decoder_width == 8
    for a, b in zip(model.encoder.parameters(), narrow.encoder.parameters()):
        assert a.shape == b.shape
    assert sum(p.numel() for p in model.decoder.parameters()) > 2 * sum(p.numel() for p in narrow.decoder.parameters())
    model.save_pretrained(tmp_path / "m")
    loaded = EdVAE.from_pretrained(tmp_path / "m")
    assert loaded.config.decoder_channels == 16
    images = torch.rand(2, 3, 16, 16)
    assert torch.equal(loaded.reconstruct(images), model.eval().reconstruct(images))
    with pytest.raises(ConfigError, match="model.decoder_channels.*edvae architecture only"):
        EdVAE(architecture="vqvae", channels=8, decoder_channels=16)
    with pytest.raises(ConfigError, match="model.channel_mults.*multiple of 4"):
        EdVAE(channels=8, decoder_channels=6)
