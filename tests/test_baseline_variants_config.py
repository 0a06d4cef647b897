"""The baselines' variants chosen through the model config: validated keys, exports that keep them, and
two-step runs with the earlier variants and the k-means option that resume exactly."""

import json

import pytest
import torch
from safetensors.torch import load_file

from edvae_common import ConfigError
from edvae_common.config import load_config
from stage1_tokenizer import EdVAE
from stage1_tokenizer import train as train_script
from stage1_tokenizer.config import VQSTE_PP_VARIANTS, VQVAE_EMA_VARIANTS, ModelConfig, Stage1Config
from stage1_tokenizer.quantizers.vqste_pp import VQSTE_VARIANTS
from stage1_tokenizer.quantizers.vqvae_ema import EMA_VARIANTS
from tests.conftest import train_args


def test_variant_keys_default_to_the_authors_and_are_checked_up_front():
    cfg = ModelConfig()
    assert (cfg.vqvae_ema_variant, cfg.vqste_pp_variant, cfg.vqste_pp_kmeans_init) == ("sonnet", "vqtorch", False)
    assert VQVAE_EMA_VARIANTS == EMA_VARIANTS and VQSTE_PP_VARIANTS == VQSTE_VARIANTS
    with pytest.raises(ConfigError, match="model.vqste_pp_variant.*'vqtorch'.*'project-v1'.*got 'v2'"):
        load_config(Stage1Config, overrides=["model.vqste_pp_variant=v2"])
    with pytest.raises(ConfigError, match="model.vqvae_ema_variant.*got 'rosinality'"):
        load_config(Stage1Config, overrides=["model.vqvae_ema_variant=rosinality"])
    with pytest.raises(ConfigError, match="model.vqste_pp_kmeans_init"):
        load_config(Stage1Config, overrides=["model.vqste_pp_kmeans_init=maybe"])


def test_the_config_picks_the_variant_and_exports_keep_it(tmp_path):
    ema = EdVAE.from_config({"quantizer": "vqvae_ema", "channels": 8, "vqvae_ema_variant": "project-v1"})
    assert ema.quantizer.variant == "project-v1" and torch.equal(ema.quantizer.ema_count, torch.ones(512))
    assert EdVAE(quantizer="vqvae_ema", channels=8).quantizer.variant == "sonnet"
    vq = EdVAE.from_config({"quantizer": "vqste_pp", "channels": 8, "vqste_pp_variant": "project-v1",
                            "vqste_pp_kmeans_init": True})
    assert (vq.quantizer.variant, vq.quantizer.inner_lr, vq.quantizer.commitment, vq.quantizer.kmeans_init) == \
        ("project-v1", 0.5, 0.25, True)
    assert EdVAE(quantizer="vqste_pp", channels=8).quantizer.variant == "vqtorch"
    for model in (ema, vq):
        model.save_pretrained(tmp_path / model.config.quantizer)
        loaded = EdVAE.from_pretrained(tmp_path / model.config.quantizer)
        assert loaded.config == model.config and loaded.quantizer.variant == "project-v1"


def test_an_export_from_before_the_variants_loads(tmp_path):
    model = EdVAE(quantizer="vqste_pp", channels=8, vqste_pp_variant="project-v1")
    model.save_pretrained(tmp_path / "old")
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    for key in ("vqvae_ema_variant", "vqste_pp_variant", "vqste_pp_kmeans_init"):
        config.pop(key)                                       # as the first version wrote it
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    from safetensors.torch import save_file
    weights = load_file(tmp_path / "old" / "model.safetensors")
    save_file({k: v for k, v in weights.items() if k not in ("quantizer.inner_velocity", "quantizer.data_initialized")},
              tmp_path / "old" / "model.safetensors")
    with pytest.warns(UserWarning, match="vqste_pp_variant=project-v1"):
        loaded = EdVAE.from_pretrained(tmp_path / "old")
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded.encode(x), model.encode(x))


def train_losses(run) -> list[float]:
    return [r["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
            if (r := json.loads(line))["split"] == "train"]


@pytest.mark.parametrize("quantizer,setting", [("vqste_pp", "model.vqste_pp_variant=project-v1"),
                                               ("vqste_pp", "model.vqste_pp_kmeans_init=true"),
                                               ("vqvae_ema", "model.vqvae_ema_variant=project-v1")])
def test_two_step_run_with_each_setting_resumes_exactly(synthetic_npz, tmp_path, quantizer, setting):
    common = [f"model.quantizer={quantizer}", setting, "train.beta_max=0", "train.batch_size=16", "train.log_every=1",
              "train.checkpoint_every=100"]
    full = tmp_path / "full"
    train_script.main(train_args(full, synthetic_npz, "train.max_steps=2", *common))
    part = tmp_path / "part"
    train_script.main(train_args(part, synthetic_npz, "train.max_steps=1", *common))
    train_script.main(train_args(part, synthetic_npz, "train.max_steps=2", "resume=latest", *common))
    assert train_losses(full) == train_losses(part) and len(train_losses(part)) == 2
    wa, wb = load_file(full / "tokenizer" / "model.safetensors"), load_file(part / "tokenizer" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    model = EdVAE.from_pretrained(part / "tokenizer")
    key, value = setting.split("=")
    assert str(getattr(model.config, key.split(".")[1])).lower() == value
    if setting == "model.vqste_pp_variant=project-v1":
        assert wa["quantizer.inner_velocity"].abs().sum() == 0       # no momentum in the first version
    with pytest.raises(ConfigError, match=key):                        # the setting is part of the frozen model
        train_script.main(train_args(part, synthetic_npz, "train.max_steps=3", "resume=latest",
                                     *[c for c in common if c != setting]))
