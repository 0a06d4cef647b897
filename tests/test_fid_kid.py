"""KID: torch-fidelity's estimator on the same features, unbiased, larger for a shifted set, in the CLI's JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from stage2_prior import fid
from tests.stage2_helpers import make_image_npz, make_tokenizer, save_standin_extractor


def gaussian(n: int, seed: int, shift: float = 0.0, dim: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, dim)) + shift).astype(np.float32)


def test_kid_equals_torch_fidelity_on_the_same_features() -> None:
    from torch_fidelity.metric_kid import kid_features_to_metric

    real, fake = gaussian(300, 0), gaussian(250, 1, shift=0.3)
    ours = fid.kernel_inception_distance(real, fake, subsets=20, subset_size=100, seed=7)
    theirs = kid_features_to_metric(torch.from_numpy(real).double(), torch.from_numpy(fake).double(), kid_subsets=20,
                                    kid_subset_size=100, kid_kernel="poly", kid_kernel_poly_degree=3,
                                    kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1, rng_seed=7, verbose=False)
    assert ours["kid"] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-9, abs=1e-12)
    assert ours["kid_std"] == pytest.approx(theirs["kernel_inception_distance_std"], rel=1e-9, abs=1e-12)
    assert ours["kid_subsets"] == 20 and ours["kid_subset_size"] == 100


def test_kid_is_zero_mean_for_two_samples_of_one_distribution_and_larger_for_a_shifted_one() -> None:
    real = gaussian(400, 0)
    itself = fid.kernel_inception_distance(real, real, subsets=50)
    same = fid.kernel_inception_distance(real, gaussian(400, 1), subsets=50)
    shifted = fid.kernel_inception_distance(real, gaussian(400, 2, shift=0.5), subsets=50)
    assert same["kid_subset_size"] == 200  # half the smaller side: subsets differ, the spread is not 0
    # two samples of one distribution: zero within the spread over subsets
    assert same["kid_std"] > 0 and abs(same["kid"]) <= 2 * same["kid_std"]
    # a set against itself is not two samples: points drawn on both sides add k(x, x) to the cross term only
    assert itself["kid"] < -2 * itself["kid_std"]
    assert shifted["kid"] > same["kid"] + 10 * same["kid_std"]


def test_kid_refuses_sets_too_small_or_of_other_widths() -> None:
    with pytest.raises(ValueError, match="same F"):
        fid.kernel_inception_distance(gaussian(10, 0, dim=4), gaussian(10, 1, dim=5))
    with pytest.raises(ValueError, match="at least 50"):
        fid.kernel_inception_distance(gaussian(10, 0), gaussian(60, 1), subset_size=50)


def test_cli_reports_kid_for_samples_reconstructions_and_cached_references(tmp_path: Path) -> None:
    standin = save_standin_extractor(tmp_path / "standin.pt", features=16)
    real = make_image_npz(tmp_path / "real.npz", n=40)
    fake = make_image_npz(tmp_path / "fake.npz", n=30, labels=False)
    cache = tmp_path / "cache"
    common = ["--real", str(real), "--weights", str(standin), "--cache-dir", str(cache), "--kid-subsets", "10"]
    first = fid.main([*common, "--fake", str(fake), "--out", str(tmp_path / "fid.json")])
    saved = json.loads((tmp_path / "fid.json").read_text())
    assert saved["kid"] == pytest.approx(first["kid"]) and saved["kid_std"] > 0
    assert saved["kid_subset_size"] == 15 and "torch-fidelity" in saved["protocol"]["kid"]
    # the cached reference keeps its features: the same KID the second time
    again = fid.main([*common, "--fake", str(fake)])
    assert again["real"]["statistics"] == "from the cache" and again["kid"] == pytest.approx(first["kid"], rel=1e-9)
    # the number is KID of the two feature sets, nothing else
    extractor = fid.InceptionFeatures(standin)
    feats = [extractor(torch.from_numpy(a).permute(0, 3, 1, 2)).numpy()
             for a in (fid.load_images(real), fid.load_images(fake))]
    assert first["kid"] == pytest.approx(fid.kernel_inception_distance(*feats, subsets=10)["kid"], rel=1e-5)
    # reconstructions: KID too
    make_tokenizer(tmp_path / "tok", real)
    rec = fid.main([*common, "--reconstruct-with", str(tmp_path / "tok")])
    assert rec["kind"] == "reconstruction" and rec["kid"] is not None and rec["kid_subset_size"] == 20
    # a bare mu/sigma file (pytorch-fid's) has no features: FID, and a note instead of KID
    mu, sigma = feats[0].mean(0), np.cov(feats[0], rowvar=False)
    np.savez(tmp_path / "bare.npz", mu=mu, sigma=sigma)
    bare = fid.main(["--real", str(tmp_path / "bare.npz"), "--fake", str(fake), "--weights", str(standin),
                     "--cache-dir", ""])
    assert bare["kid"] is None and "no features" in bare["kid_note"] and bare["fid"] > 0
