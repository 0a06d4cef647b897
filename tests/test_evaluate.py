"""python -m stage1_tokenizer.evaluate: which images by default, what the protocol says, clipped PSNR."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stage1_tokenizer import DataConfig, EdVAE, build_dataset
from stage1_tokenizer import evaluate as evaluate_cli
from stage1_tokenizer import train as train_script
from tests.conftest import train_args


@pytest.fixture
def run(synthetic_npz, tmp_path):
    folder = tmp_path / "run"
    train_script.main(train_args(folder, synthetic_npz, "train.max_steps=2", "train.batch_size=16"))
    return folder


def evaluate(run, data, out, *extra):
    return evaluate_cli.main(["--checkpoint", str(run), "--data", str(data), "--out", str(out), "--batch-size", "8",
                              *extra])


def test_the_training_source_defaults_to_its_held_out_split(run, synthetic_npz, tmp_path):
    metrics = evaluate(run, synthetic_npz, tmp_path / "test.json")
    protocol = metrics["protocol"]
    assert protocol["split"] == "test" and "training source" in protocol["split_chosen_by"]
    assert metrics["n_images"] == protocol["n_images"] == 10                   # 10% of 96, held out
    assert protocol["source"].endswith(str(synthetic_npz)) and protocol["training_source"].endswith(str(synthetic_npz))
    assert "held-out" in protocol["split_rule"]
    everything = evaluate(run, synthetic_npz, tmp_path / "all.json", "--split", "all")
    assert everything["n_images"] == 96 and everything["protocol"]["split_chosen_by"] == "--split"


def test_another_source_is_evaluated_whole_by_default(run, tmp_path):
    rng = np.random.default_rng(1)
    other = tmp_path / "other.npz"
    np.savez(other, images=rng.integers(0, 256, size=(40, 32, 32, 3)).astype(np.uint8))
    metrics = evaluate(run, other, tmp_path / "other.json")
    protocol = json.loads((tmp_path / "other.json").read_text())["protocol"]
    assert metrics["n_images"] == 40 and protocol["split"] == "all" and protocol["n_images"] == 40
    assert "not the run's training source" in protocol["split_chosen_by"]
    assert protocol["source"].endswith("other.npz") and protocol["training_source"] != protocol["source"]
    assert evaluate(run, other, tmp_path / "t.json", "--split", "test")["n_images"] == 4   # asked for: held out


def test_mse_is_unclipped_and_psnr_is_on_the_clipped_reconstruction(run, synthetic_npz, tmp_path):
    metrics = evaluate(run, synthetic_npz, tmp_path / "m.json")
    model = EdVAE.from_pretrained(run / "tokenizer")
    images = torch.stack(list(build_dataset(DataConfig(dataset="auto", path=str(synthetic_npz)), "test")))
    out = model.analyze(images)
    clipped = (out.reconstruction - images).pow(2).flatten(1).mean(1)
    assert metrics["mse"] == pytest.approx(float(out.mse.mean()), rel=1e-5)
    assert metrics["mse_clipped"] == pytest.approx(float(clipped.mean()), rel=1e-5)
    assert metrics["mse_clipped"] <= metrics["mse"] + 1e-12
    assert metrics["psnr"] == pytest.approx(float((-10 * clipped.log10()).mean()), rel=1e-5)
