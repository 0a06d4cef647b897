"""The uncertainty-as-OOD measurement: AUROC against a brute-force count, percentiles, the CLI on a tiny tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from stage1_tokenizer import ood
from stage1_tokenizer import UNCERTAINTY_REFERENCE_FILE
from tests.stage2_helpers import make_image_npz, make_tokenizer


def brute_force_auroc(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([(y > x) + 0.5 * (y == x) for x in a for y in b]))


def test_auroc_equals_the_pairwise_count_with_ties():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 6, 40).astype(float), rng.integers(2, 9, 30).astype(float)  # many ties
    assert ood.auroc(a, b) == pytest.approx(brute_force_auroc(a, b), abs=1e-12)
    assert ood.auroc([0.0, 1.0], [2.0, 3.0]) == 1.0 and ood.auroc([2.0, 3.0], [0.0, 1.0]) == 0.0
    assert ood.auroc([1.0, 1.0], [1.0]) == 0.5
    with pytest.raises(ValueError):
        ood.auroc([], [1.0])


def test_cli_writes_aurocs_and_the_reference(tmp_path: Path):
    data = make_image_npz(tmp_path / "images.npz", n=40)
    make_tokenizer(tmp_path / "tok", data)
    out = tmp_path / "ood.json"
    result = ood.main(["--tokenizer", str(tmp_path / "tok"), "--num", "4", "--out", str(out), "--write-reference"])
    assert json.loads(out.read_text()) == result
    assert set(result["sets"]) == {"upside_down", "noisy", "uniform_noise"} and result["n_in_distribution"] == 4
    for entry in result["sets"].values():
        assert 0.0 <= entry["auroc_mean_uncertainty"] <= 1.0 and 0.0 <= entry["auroc_reconstruction_mse"] <= 1.0
        assert 0.0 <= entry["auroc_reconstruction_mse_clipped"] <= 1.0
    reference = json.loads((tmp_path / "tok" / UNCERTAINTY_REFERENCE_FILE).read_text())
    q = reference["mean_uncertainty_quantiles"]
    assert len(q) == 101 and q == sorted(q) and "AUROC" in reference["statement"]
    # the percentiles are those of the training images' own scores
    from stage1_tokenizer import DataConfig, EdVAE, build_dataset

    tok = EdVAE.from_pretrained(tmp_path / "tok")
    train = build_dataset(DataConfig(**json.loads((tmp_path / "tok" / "training_data.json").read_text())), "train")
    scores = ood.per_image_scores(tok, train)["mean_uncertainty"]
    assert q[0] == pytest.approx(float(scores.min())) and q[100] == pytest.approx(float(scores.max()))
    assert q[50] == pytest.approx(float(np.median(scores)))


def test_uncertainty_needs_the_evidential_quantizer(tmp_path: Path):
    from stage1_tokenizer import EdVAE

    with pytest.raises(ValueError, match="evidential"):
        ood.per_image_scores(EdVAE(quantizer="dvae", channels=8), [torch.rand(2, 3, 16, 16)])


def test_reference_statement_claims_a_signal_only_where_one_was_measured():
    def sets(*aurocs):
        return {f"set_{i}": {"auroc_mean_uncertainty": a, "auroc_reconstruction_mse": 0.5} for i, a in enumerate(aurocs)}

    useful = ood.reference_statement(100, sets(0.41, 0.74))
    assert "AUROC set 0 0.41, set 1 0.74" in useful and "hints that an image is unlike" in useful
    assert "as set 1 were" in useful and "set 0 were" not in useful          # names only the set it separated
    useless = ood.reference_statement(100, sets(0.41, 0.48, 0.15))
    assert "hints" not in useless and "says nothing" in useless
