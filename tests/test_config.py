"""Configs: the shipped files load, overrides work, typos and wrong types name the key."""

from pathlib import Path

import pytest

from edvae_common import ConfigError, load_config
from stage1_tokenizer.config import Stage1Config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "stage1").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_load(path):
    cfg = load_config(Stage1Config, path)
    assert cfg.model.codebook_size == 512 and cfg.model.quantizer == "edvae"


def test_paper_settings_per_dataset():
    c = load_config(Stage1Config, "configs/stage1/cifar10.yaml")
    a = load_config(Stage1Config, "configs/stage1/celeba.yaml")
    l = load_config(Stage1Config, "configs/stage1/lsun_church.yaml")
    assert (c.train.beta_max, a.train.beta_max, l.train.beta_max) == (5e-7, 1e-7, 1e-7)
    assert (c.data.image_size, a.data.image_size, l.data.image_size) == (32, 64, 128)
    assert (c.model.first_kernel, a.model.first_kernel, l.model.first_kernel) == (3, 3, 7)
    for cfg in (c, a, l):
        assert cfg.train.batch_size == 128 and cfg.train.max_steps == 150_000 and cfg.train.lr == 1e-3
        assert cfg.train.lr_min == 1.25e-6 and cfg.train.lr_decay_steps == 50_000
        assert cfg.train.beta_warmup_steps == 5_000 and cfg.train.tau_decay == 1e-5 and cfg.model.clamp_max == 20


def test_required_overrides():
    cfg = load_config(Stage1Config, "configs/stage1/cifar10.yaml", [
        "data.path=/data/x.npz", "model.channels=32", "train.max_steps=10", "train.batch_size=16",
        "train.seed=1773", "output_dir=/tmp/somewhere", "resume=latest"])
    assert cfg.data.path == "/data/x.npz" and cfg.model.channels == 32 and cfg.train.max_steps == 10
    assert cfg.train.batch_size == 16 and cfg.train.seed == 1773 and cfg.output_dir == "/tmp/somewhere"
    assert cfg.resume == "latest"


@pytest.mark.parametrize("override,match", [
    ("train.max_step=10", "unknown config key 'train.max_step'.*Did you mean 'train.max_steps'"),
    ("trian.seed=1", "unknown config key 'trian"),
    ("train.max_steps=ten", "wrong type for config key 'train.max_steps'"),
    ("model.channels=1.5", "wrong type for config key 'model.channels'"),
    ("train.mixed_precision=fp8", "train.mixed_precision.*must be one of"),
    ("train.batch_size=0", "train.batch_size.*must be positive"),
    ("data.image_size=30", "data.image_size.*not divisible by the model's downsampling factor 4"),
    ("train.max_steps", "not of the form key=value"),
])
def test_bad_overrides_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(Stage1Config, "configs/stage1/cifar10.yaml", [override])


def test_typo_in_a_file_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  chanels: 32\n")
    with pytest.raises(ConfigError, match=f"'model.chanels' in {bad}.*Did you mean 'model.channels'"):
        load_config(Stage1Config, bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Stage1Config, tmp_path / "missing.yaml")
