"""FID from the stage-1 data sources with their own splits and preprocessing; reference statistics cached and
exported. A small fixed conv net stands in for the Inception (the protocol's pieces are tested elsewhere)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stage2_prior import fid
from tests.conftest import write_celeba_folder
from tests.stage2_helpers import save_standin_extractor


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> str:
    return str(save_standin_extractor(tmp_path_factory.mktemp("weights") / "standin.pt", features=8))


def pictures(n: int, h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(n, 4, 4, 3)).astype(np.uint8)
    return np.stack([np.asarray(Image.fromarray(c).resize((w, h), Image.BILINEAR)) for c in coarse])


def save_folder(folder: Path, images: np.ndarray, prefix: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(images):
        Image.fromarray(a).save(folder / f"{prefix}{i:04d}.png")
    return folder


def run(standin: str, *args: str) -> dict:
    return fid.main([*args, "--weights", standin, "--cache-dir", ""])


def test_a_folder_uses_its_own_test_subfolder_and_a_flat_folder_a_seeded_split(standin: str, tmp_path: Path) -> None:
    root = tmp_path / "data"
    save_folder(root / "train", pictures(9, 16, 16, 0))
    save_folder(root / "val", pictures(5, 16, 16, 1))           # val/ is the test split when there is no test/
    fake = save_folder(tmp_path / "fake", pictures(6, 16, 16, 2))
    result = run(standin, "--real", str(root), "--real-split", "test", "--fake", str(fake))
    assert result["n_real"] == 5 and result["n_fake"] == 6
    assert "val/" in result["real"]["split_rule"] and result["real"]["kind"] == "auto"
    assert run(standin, "--real", str(root), "--real-split", "all", "--fake", str(fake))["n_real"] == 14
    flat = save_folder(tmp_path / "flat", pictures(20, 16, 16, 3))
    held = run(standin, "--real", str(flat), "--real-split", "test", "--fake", str(fake))
    assert held["n_real"] == 2 and "held-out" in held["real"]["split_rule"] and held["real"]["split_seed"] == 0


def test_celeba_source_is_the_official_test_partition_cropped_and_resized(standin: str, tmp_path: Path) -> None:
    write_celeba_folder(tmp_path / "celeba", n_train=4, n_valid=1, n_test=3, step=25)
    src = fid.open_source(f"celeba:{tmp_path}", "test")
    assert len(src) == 3 and src.description["image_shape"] == [64, 64, 3]
    assert "official test partition" in src.description["split_rule"]
    assert "center crop 140" in src.description["preprocessing"]
    assert src.dataset[0].dtype == torch.uint8 and src.dataset[0].shape == (3, 64, 64)
    fake = save_folder(tmp_path / "fake", pictures(4, 64, 64, 0))
    result = run(standin, "--real", f"celeba:{tmp_path}", "--real-split", "test", "--fake", str(fake))
    assert result["n_real"] == 3 and result["real"]["image_shape"] == [64, 64, 3] and result["fid"] > 0


def test_uint8_round_trip_of_stage1_preprocessing_is_lossless() -> None:
    """Stage 1 resizes in uint8 and scales by 1/255, so FID sees exactly the uint8 images stage 1 trains on."""
    from stage1_tokenizer.data import Preprocess

    raw = pictures(1, 53, 71, 5)[0]
    for kind, size in (("lsun_church", 128), ("celeba", 64), ("generic", 32)):
        x = Preprocess(kind, size)(Image.fromarray(raw if kind != "celeba" else np.resize(raw, (218, 178, 3))))
        assert ((x * 255) - (x * 255).round()).abs().max() < 1e-3, kind   # k / 255 for integers k


def test_a_saved_datasets_folder_with_lsun_preprocessing_and_its_test_split(standin: str, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    parts = {name: datasets.Dataset.from_dict({"image": [Image.fromarray(a) for a in pictures(n, 30, 40, s)]},
                                              features=datasets.Features({"image": datasets.Image()}))
             for name, n, s in (("train", 6, 0), ("validation", 3, 1))}
    datasets.DatasetDict(parts).save_to_disk(str(tmp_path / "hub_copy"))
    src = fid.open_source(f"lsun_church:{tmp_path / 'hub_copy'}", "test")
    assert len(src) == 3 and src.description["image_shape"] == [128, 128, 3]    # squeezed 40x30 -> 128x128
    assert "'validation'" in src.description["split_rule"] and "squeezed" in src.description["preprocessing"]


def test_reference_statistics_are_cached_exported_and_reused(standin: str, tmp_path: Path) -> None:
    real = tmp_path / "real.npz"
    np.savez(real, images=pictures(30, 16, 16, 0))
    fake = save_folder(tmp_path / "fake", pictures(8, 16, 16, 1))
    cache, stats = tmp_path / "cache", tmp_path / "ref_stats.npz"
    args = ["--real", str(real), "--real-split", "test", "--fake", str(fake), "--weights", standin,
            "--cache-dir", str(cache)]
    first = fid.main([*args, "--save-stats", str(stats)])
    assert first["real"]["statistics"] == "computed" and len(list(cache.glob("real_*.npz"))) == 1
    second = fid.main(args)
    assert second["real"]["statistics"] == "from the cache" and second["fid"] == first["fid"]
    # another split or protocol is another cache entry
    fid.main([*args[:3], "train", *args[4:]])
    fid.main([*args, "--protocol", "torch-fidelity"])
    assert len(list(cache.glob("real_*.npz"))) == 3
    # the exported file: pytorch-fid's format (mu, sigma) plus n and the protocol, and usable as --real
    with np.load(stats) as f:
        assert f["mu"].shape == (8,) and f["sigma"].shape == (8, 8) and int(f["n"]) == 3
        meta = json.loads(str(f["meta"]))
    assert meta["protocol"] == "pytorch-fid" and meta["real"]["split"] == "test" and meta["weights_sha1"]
    again = fid.main(["--real", str(stats), "--fake", str(fake), "--weights", standin, "--cache-dir", ""])
    assert again["fid"] == pytest.approx(first["fid"], rel=1e-12) and again["real"]["statistics_file"]
    with pytest.raises(ValueError, match="protocol pytorch-fid.*torch-fidelity"):
        fid.main(["--real", str(stats), "--fake", str(fake), "--weights", standin, "--protocol", "torch-fidelity"])
    # export only
    only = fid.main(["--real", str(real), "--weights", standin, "--cache-dir", "", "--save-stats",
                     str(tmp_path / "all.npz")])
    assert only["n_real"] == 30 and fid.Statistics.load(tmp_path / "all.npz").n == 30
    with pytest.raises(ValueError, match="nothing to compare"):
        fid.main(["--real", str(real), "--weights", standin])


def test_real_against_real_has_a_command(standin: str, tmp_path: Path) -> None:
    """docs/results.md's 'real against real' number: --fake SOURCE --fake-split train --num-fake N."""
    images = pictures(40, 16, 16, 0)
    np.savez(tmp_path / "real.npz", images=images)
    result = run(standin, "--real", str(tmp_path / "real.npz"), "--real-split", "test", "--fake",
                 str(tmp_path / "real.npz"), "--fake-split", "train", "--num-fake", "10")
    assert result["n_real"] == 4 and result["n_fake"] == 10 and result["fake"]["split"] == "train"
    from stage1_tokenizer.data import held_out_split

    extractor = fid.InceptionFeatures(standin)
    expected = fid.compute_fid(images[held_out_split(40, "test", 0.1, 0)],
                               images[held_out_split(40, "train", 0.1, 0)][:10], extractor)
    assert result["fid"] == pytest.approx(expected, rel=1e-9)


def test_generic_reference_images_take_the_generated_images_size(standin: str, tmp_path: Path) -> None:
    np.savez(tmp_path / "big.npz", images=pictures(20, 48, 48, 0))
    fake = save_folder(tmp_path / "fake", pictures(5, 32, 32, 1))
    result = run(standin, "--real", str(tmp_path / "big.npz"), "--fake", str(fake))
    assert result["real"]["image_shape"] == [32, 32, 3] and "resize" in result["real"]["preprocessing"]
    native = run(standin, "--real", str(tmp_path / "big.npz"), "--reconstruct-with", str(_tokenizer(tmp_path)))
    assert native["real"]["image_shape"] == [48, 48, 3] and native["n_fake"] == 20


def _tokenizer(tmp_path: Path) -> Path:
    from tests.stage2_helpers import make_tokenizer

    make_tokenizer(tmp_path / "tok", tmp_path / "big.npz")
    return tmp_path / "tok"
