"""LSUN church_outdoor: reading the LMDBs (no cache files in the working directory) and the whole church path.

The LMDBs here are a *format fixture*: no LSUN images exist on this machine, so real photographs from the
developer CelebA sample, stretched to LSUN's shape (smaller side 256, landscape), are stored exactly as the LSUN
release stores its images: one LMDB per split (``church_outdoor_{train,val}_lmdb``), 40-character hexadecimal
string keys, values the encoded image bytes (JPEG quality 75, as the LSUN README says, and WEBP, which the later
LSUN export scripts write). The pixels are not churches; the file format, the split layout and the path through
the code are the real ones.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import CELEBA_NPZ, QUIET, ROOT

lmdb = pytest.importorskip("lmdb", reason="the 'lmdb' package (dev / lsun extra) is not installed")

N_TRAIN, N_VAL = 12, 4


def write_lsun_lmdb(folder: Path, images: np.ndarray, salt: str) -> list[bytes]:
    """An LMDB the way LSUN ships one: string keys (hex SHA-1s), encoded image bytes as values."""
    env = lmdb.open(str(folder), map_size=1 << 28)
    keys = []
    with env.begin(write=True) as txn:
        for i, array in enumerate(images):
            image = Image.fromarray(array).resize((341, 256), Image.BICUBIC)   # LSUN: smaller side 256
            buf = io.BytesIO()
            if i % 3 == 2:
                image.save(buf, format="WEBP", quality=80)
            else:
                image.save(buf, format="JPEG", quality=75)
            key = hashlib.sha1(f"{salt}{i}".encode()).hexdigest().encode("ascii")
            txn.put(key, buf.getvalue())
            keys.append(key)
    env.close()
    return keys


def write_lsun_fixture(root: Path, n_train: int, n_val: int) -> Path:
    """``root`` with LSUN's two church LMDBs of real photographs (the developer CelebA sample): n_train + n_val
    images; skips the test where those photographs are absent."""
    if not CELEBA_NPZ.is_file():
        pytest.skip(f"real images for the LSUN-format fixture not present at {CELEBA_NPZ}")
    with np.load(CELEBA_NPZ) as f:
        images = f["images"][: n_train + n_val]
    root.mkdir(parents=True, exist_ok=True)
    write_lsun_lmdb(root / "church_outdoor_train_lmdb", images[:n_train], "train")
    write_lsun_lmdb(root / "church_outdoor_val_lmdb", images[n_train:], "val")
    return root


@pytest.fixture(scope="module")
def lsun_root(tmp_path_factory) -> tuple[Path, dict]:
    if not CELEBA_NPZ.is_file():
        pytest.skip(f"real images for the LSUN-format fixture not present at {CELEBA_NPZ}")
    with np.load(CELEBA_NPZ) as f:
        images = f["images"][: N_TRAIN + N_VAL]
    root = tmp_path_factory.mktemp("lsun")
    keys = {"train": write_lsun_lmdb(root / "church_outdoor_train_lmdb", images[:N_TRAIN], "train"),
            "val": write_lsun_lmdb(root / "church_outdoor_val_lmdb", images[N_TRAIN:], "val")}
    return root, keys


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_lsun_lmdb_reads_in_key_order_with_the_paper_preprocessing_and_no_cwd_cache(
        lsun_root, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stage1_tokenizer.config import DataConfig
    from stage1_tokenizer.data import Preprocess, build_dataset

    root, keys = lsun_root
    cwd, cache = tmp_path / "cwd", tmp_path / "cache"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("EDVAE_CACHE_DIR", str(cache))
    before = tree(root)
    cfg = DataConfig(dataset="lsun_church", path=str(root), image_size=128)
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert len(train) == N_TRAIN and len(test) == N_VAL
    assert "church_outdoor_val_lmdb" in test.split_rule and "church_outdoor_train_lmdb" in train.split_rule
    assert train.keys == sorted(keys["train"])                       # cursor order, as torchvision's LSUN
    with test._open().begin() as txn, Image.open(io.BytesIO(txn.get(test.keys[1]))) as img:
        expected = Preprocess("lsun_church", 128)(img.convert("RGB"))
    assert test[1].shape == (3, 128, 128) and torch.equal(test[1], expected)   # squeezed 341x256 -> 128x128
    # the key lists went to the cache folder: nothing in the working directory, nothing added to the data
    assert os.listdir(cwd) == [] and tree(root) == before
    assert len(list((cache / "lsun").glob("*.keys"))) == 2
    # the cache is used (a doctored key order shows through) and rebuilt when the LMDB changes
    cached = next((cache / "lsun").glob("church_outdoor_val_lmdb-*.keys"))
    header, *lines = cached.read_text().splitlines()
    cached.write_text("\n".join([header, *reversed(lines)]) + "\n")
    assert build_dataset(cfg, "test").keys == sorted(keys["val"])[::-1]
    stat = (root / "church_outdoor_val_lmdb" / "data.mdb").stat()
    os.utime(root / "church_outdoor_val_lmdb" / "data.mdb", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert build_dataset(cfg, "test").keys == sorted(keys["val"])
    # picklable for DataLoader workers (the LMDB handle is reopened in the worker)
    import pickle

    assert torch.equal(pickle.loads(pickle.dumps(test))[1], expected)


def test_torchvision_lsun_would_write_its_cache_into_the_working_directory(lsun_root, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The behaviour the project's own reader avoids (measured: torchvision 0.29 writes '_cache_<path>' to cwd);
    both read the same images in the same order."""
    from torchvision.datasets import LSUN

    from stage1_tokenizer.data import sources

    root, _ = lsun_root
    path = (root / "church_outdoor_val_lmdb").resolve()
    if (str(path), os.getpid()) in sources._LMDB_ENVS:   # lmdb allows one handle per process: hand it over
        sources._LMDB_ENVS.pop((str(path), os.getpid())).close()
    monkeypatch.chdir(tmp_path)
    theirs = LSUN(str(root), classes=["church_outdoor_val"])
    assert any(name.startswith("_cache_") for name in os.listdir(tmp_path))
    their_images = [np.array(theirs[i][0]) for i in range(len(theirs))]
    theirs.dbs[0].env.close()
    ours = sources.LMDBImages(path, lambda img: torch.from_numpy(np.array(img)), cache_dir=tmp_path / "elsewhere")
    assert len(ours) == len(their_images) == N_VAL
    for i in range(N_VAL):
        assert torch.equal(ours[i], torch.from_numpy(their_images[i]))


def test_church_path_end_to_end_on_the_lsun_fixture(lsun_root, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The release's LSUN settings (128x128, first kernel 7, 32x32 = 1,024 tokens, a Llama prior): tokenizer,
    extraction, prior steps, sampling with the KV cache, FID against lsun_church:PATH --real-split test."""
    from stage1_tokenizer import train as stage1_train
    from stage1_tokenizer.model import EdVAE
    from stage2_prior import extract_tokens, fid
    from stage2_prior import sample as sample_cli
    from stage2_prior import train as prior_train
    from stage2_prior.model import load_prior
    from stage2_prior.tokens import Manifest
    from tests.stage2_helpers import STAGE2_QUIET

    root, _ = lsun_root
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("EDVAE_CACHE_DIR", str(tmp_path / "cache"))

    # 1. Tokenizer: configs/stage1/lsun_church.yaml (first kernel 7, 3 groups -> 32x32 codes) at a test width.
    stage1 = tmp_path / "stage1"
    stage1_train.main(["--config", str(ROOT / "configs/stage1/lsun_church.yaml"), f"output_dir={stage1}",
                       f"data.path={root}", "data.num_workers=0", "model.channels=8", "model.blocks_per_group=1",
                       "train.max_steps=2", "train.batch_size=4", "train.checkpoint_every=1000", *QUIET])
    tok = EdVAE.from_pretrained(stage1 / "tokenizer")
    assert '"first_kernel": 7' in (stage1 / "tokenizer" / "config.json").read_text()
    assert tuple(tok.grid_shape(128)) == (32, 32)

    # 2. Tokens from the tokenizer's own training data (the LMDBs), both splits.
    tokens = extract_tokens.main(["--tokenizer", str(stage1 / "tokenizer"), "--out", str(tmp_path / "tokens"),
                                  "--batch-size", "8"])
    manifest = Manifest.load(tokens)
    assert manifest.splits["train"].count == N_TRAIN and manifest.splits["test"].count == N_VAL
    assert manifest.tokenizer.seq_len == 1024 and manifest.data["dataset"] == "lsun_church"

    # 3. A few prior steps: configs/stage2/lsun_church.yaml (Llama, RoPE over 1,025 positions) at the tiny size.
    run = tmp_path / "prior"
    prior_train.main(["--config", str(ROOT / "configs/stage2/lsun_church.yaml"), f"output_dir={run}",
                      f"data.tokens={tokens}", "model.size=tiny", "train.max_steps=3", "train.batch_size=4",
                      "train.mixed_precision=no", "train.warmup_steps=1", "train.eval_every=3",
                      "train.eval_max_batches=1", "train.sample_every=1000", "train.checkpoint_every=1000",
                      "train.log_every=1", *STAGE2_QUIET])
    prior, spec = load_prior(run / "prior", tokenizer=tok)
    assert type(prior).__name__ == "LlamaForCausalLM" and spec.seq_len == 1024

    # 4. Samples (generate() with the KV cache), decoded to 128x128.
    samples = tmp_path / "samples"
    sample_cli.main(["--prior", str(run / "prior"), "--tokenizer", str(stage1 / "tokenizer"), "--num", "3",
                     "--batch-size", "3", "--seed", "0", "--out", str(samples), "--device", "cpu"])
    meta = json.loads((samples / "samples.json").read_text())
    assert meta["use_cache"] is True and meta["image_size"] == 128

    # 5. FID of the samples against the val LMDB (the standard weights when installed).
    weights = [] if fid.default_weights_path() is not None else ["--weights", _standin(tmp_path)]
    result = fid.main(["--real", f"lsun_church:{root}", "--real-split", "test", "--fake", str(samples),
                       "--cache-dir", str(tmp_path / "fid"), "--out", str(tmp_path / "fid.json"), *weights])
    assert result["n_real"] == N_VAL and result["n_fake"] == 3 and np.isfinite(result["fid"]) and result["fid"] > 0
    assert "church_outdoor_val_lmdb" in result["real"]["split_rule"]
    assert result["real"]["image_shape"] == result["fake"]["image_shape"] == [128, 128, 3]
    assert os.listdir(work) == []                                   # no _cache_ (or other) files in the cwd


def _standin(tmp_path: Path) -> str:
    class Features(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.avg_pool2d(x, 50).flatten(1)

    path = tmp_path / "standin.pt"
    torch.jit.script(Features()).save(str(path))
    return str(path)
