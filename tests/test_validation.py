"""Every bad input gets an error that says what was expected."""

import json

import numpy as np
import pytest
import torch

from edvae_common import CheckpointError
from stage1_tokenizer import EdVAE


@pytest.fixture(scope="module")
def model():
    return EdVAE(channels=8)


@pytest.mark.parametrize("images,error,match", [
    (np.zeros((1, 3, 32, 32), np.float32), TypeError, "torch.Tensor"),
    (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), TypeError, "floats in \\[0, 1\\].*uint8"),
    (torch.zeros(3, 32, 32), ValueError, "shape \\(B, C, H, W\\).*\\(3, 32, 32\\)"),
    (torch.zeros(1, 32, 32, 3), ValueError, "expected 3 channels.*channel axis last"),
    (torch.zeros(1, 1, 32, 32), ValueError, "expected 3 channels"),
    (torch.zeros(1, 3, 30, 32), ValueError, "30x32 must be a positive multiple of the downsampling factor 4"),
    (torch.full((1, 3, 32, 32), float("nan")), ValueError, "NaN"),
    (torch.full((1, 3, 32, 32), 255.0), ValueError, "must be in \\[0, 1\\].*divide by 255"),
    (torch.zeros(0, 3, 32, 32), ValueError, "empty batch"),
])
def test_bad_images(model, images, error, match):
    with pytest.raises(error, match=match):
        model.encode(images)


@pytest.mark.parametrize("indices,error,match", [
    (torch.zeros(1, 8, 8), TypeError, "integer tensor"),
    (torch.zeros(8, 8, dtype=torch.long), ValueError, "shape \\(B, h, w\\)"),
    (torch.full((1, 8, 8), 512), ValueError, "in \\[0, 512\\).*\\[512, 512\\]"),
    (torch.full((1, 8, 8), -1), ValueError, "in \\[0, 512\\)"),
    ([[1, 2]], TypeError, "torch.Tensor"),
])
def test_bad_indices(model, indices, error, match):
    with pytest.raises(error, match=match):
        model.decode(indices)


def test_sampling_mode_name_is_checked(model):
    with pytest.raises(ValueError, match="'argmax' or 'sample'"):
        model.encode(torch.rand(1, 3, 32, 32), codes="greedy")


def test_missing_incomplete_and_wrong_kind_checkpoints(tmp_path, model):
    with pytest.raises(CheckpointError, match="does not exist locally"):
        EdVAE.from_pretrained(tmp_path / "nope" / "deeper")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="missing config.json, model.safetensors"):
        EdVAE.from_pretrained(tmp_path / "empty")
    model.save_pretrained(tmp_path / "other")
    config = json.loads((tmp_path / "other" / "config.json").read_text())
    config["model_type"] = "edvae_prior"
    (tmp_path / "other" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="kind 'edvae_prior', not a stage-1 EdVAE tokenizer"):
        EdVAE.from_pretrained(tmp_path / "other")


def test_weights_that_do_not_fit_the_config(tmp_path):
    EdVAE(channels=8).save_pretrained(tmp_path / "tok")
    config = json.loads((tmp_path / "tok" / "config.json").read_text())
    config["channels"] = 16
    (tmp_path / "tok" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="do not fit its config.json: size mismatch"):
        EdVAE.from_pretrained(tmp_path / "tok")


def test_offline_hub_id_gives_a_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="could not be fetched|could not fetch"):
        EdVAE.from_pretrained("nobody-here/edvae-does-not-exist")
