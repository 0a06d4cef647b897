"""Token extraction: manifest, shards, labels, resume, mismatch checks, two processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from stage1_tokenizer.data import build_dataset
from stage1_tokenizer.config import DataConfig
from stage1_tokenizer.model import EdVAE
from stage2_prior import extract_tokens
from stage2_prior.tokens import Manifest, TokenDataset, TokenizerMismatchError
from tests.stage2_helpers import make_image_npz, make_tokenizer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tokenizer_dir(tmp_path: Path) -> Path:
    data = make_image_npz(tmp_path / "images.npz", n=40)
    make_tokenizer(tmp_path / "tok", data)
    return tmp_path / "tok"


def test_extract_writes_codes_labels_and_manifest(tokenizer_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "tokens"
    extract_tokens.main(["--tokenizer", str(tokenizer_dir), "--out", str(out), "--shard-size", "16", "--batch-size", "7"])
    manifest = Manifest.load(out)
    tok = EdVAE.from_pretrained(tokenizer_dir)
    assert manifest.tokenizer.grid == [8, 8] and manifest.tokenizer.codebook_size == 32
    assert manifest.tokenizer.weights_hash == tok.weights_hash()
    assert manifest.splits["train"].count == 36 and manifest.splits["test"].count == 4
    assert len(manifest.splits["train"].shards) == 3 and manifest.num_classes == 3
    # the stored codes are the tokenizer's argmax codes of the same images, in order, with their labels
    train = TokenDataset(out, "train")
    images = build_dataset(DataConfig(dataset="npz", path=str(tmp_path / "images.npz"), image_size=16), "train")
    expected = tok.encode(torch.stack([images[i] for i in range(len(images))])).flatten(1)
    got = torch.stack([train[i]["codes"] for i in range(len(train))])
    assert torch.equal(got, expected)
    assert [int(train[i]["label"]) for i in range(len(train))] == images.labels.tolist()
    assert np.load(out / manifest.splits["train"].shards[0]).dtype == np.uint16


def test_extract_with_hflip_adds_mirrored_train_sequences(tokenizer_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "tokens"
    extract_tokens.main(["--tokenizer", str(tokenizer_dir), "--out", str(out), "--shard-size", "16", "--hflip"])
    manifest = Manifest.load(out)
    assert manifest.splits["train"].count == 72 and manifest.splits["test"].count == 4  # only train is doubled
    assert manifest.data["hflip"] is True
    tok = EdVAE.from_pretrained(tokenizer_dir)
    images = build_dataset(DataConfig(dataset="npz", path=str(tmp_path / "images.npz"), image_size=16), "train")
    batch = torch.stack([images[i] for i in range(len(images))])
    train = TokenDataset(out, "train")
    got = torch.stack([train[i]["codes"] for i in range(len(train))])
    assert torch.equal(got[:36], tok.encode(batch).flatten(1))
    assert torch.equal(got[36:], tok.encode(batch.flip(-1)).flatten(1))  # the mirrored copies, in the same order
    assert [int(train[i]["label"]) for i in range(72)] == images.labels.tolist() * 2


def test_extract_resumes_and_never_trusts_half_shards(tokenizer_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "tokens"
    args = ["--tokenizer", str(tokenizer_dir), "--out", str(out), "--shard-size", "16"]
    extract_tokens.main(args)
    first = (out / "train/shard_00000.npy").read_bytes()
    # simulate a killed run: manifest gone, one shard truncated (as if written in place), one deleted
    (out / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="did not finish"):
        Manifest.load(out)
    (out / "train/shard_00001.npy").write_bytes(b"\x93NUMPY")         # unreadable: not complete
    np.save(out / "train/shard_00002.npy", np.zeros((3, 64), dtype=np.uint16))  # wrong shape: not complete
    before = (out / "train/shard_00000.npy").stat().st_mtime_ns
    extract_tokens.main(args)
    assert (out / "train/shard_00000.npy").stat().st_mtime_ns == before   # complete shard skipped
    assert (out / "train/shard_00000.npy").read_bytes() == first
    assert np.load(out / "train/shard_00001.npy").shape == (16, 64)        # both redone
    assert np.load(out / "train/shard_00002.npy").shape == (4, 64)
    assert len(TokenDataset(out, "train")) == 36


def test_extract_refuses_another_tokenizer_in_the_same_folder(tokenizer_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "tokens"
    extract_tokens.main(["--tokenizer", str(tokenizer_dir), "--out", str(out), "--splits", "test"])
    # the same tokenizer by another path and with other worker counts is the same extraction
    extract_tokens.main(["--tokenizer", str(tokenizer_dir / "."), "--out", str(out), "--splits", "test",
                         "--num-workers", "1"])
    # other weights under the same path are not
    make_tokenizer(tokenizer_dir, tmp_path / "images.npz", seed=1)
    with pytest.raises(ValueError, match="tokenizer.weights_hash"):
        extract_tokens.main(["--tokenizer", str(tokenizer_dir), "--out", str(out), "--splits", "test"])


def test_a_later_split_extraction_keeps_the_earlier_splits(tokenizer_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "tokens"
    extract_tokens.main(["--tokenizer", str(tokenizer_dir), "--out", str(out), "--splits", "train"])
    extract_tokens.main(["--tokenizer", str(tokenizer_dir), "--out", str(out), "--splits", "test"])
    manifest = Manifest.load(out)
    assert sorted(manifest.splits) == ["test", "train"] and manifest.num_classes == 3
    assert len(TokenDataset(out, "train")) == 36 and len(TokenDataset(out, "test")) == 4


def test_token_set_with_out_of_range_codes_is_refused(tokenizer_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "tokens"
    extract_tokens.main(["--tokenizer", str(tokenizer_dir), "--out", str(out), "--splits", "test"])
    np.save(out / "test" / "shard_00000.npy", np.full((4, 64), 40, dtype=np.uint16))
    with pytest.raises(ValueError, match="outside the manifest's codebook of 32"):
        TokenDataset(out, "test")


def test_fingerprint_check_names_what_differs(tokenizer_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "tokens"
    extract_tokens.main(["--tokenizer", str(tokenizer_dir), "--out", str(out), "--splits", "test"])
    manifest = Manifest.load(out)
    manifest.tokenizer.check(EdVAE.from_pretrained(tokenizer_dir), "tokens")  # the same tokenizer passes
    other = make_tokenizer(tmp_path / "tok2", tmp_path / "images.npz", seed=1)
    with pytest.raises(TokenizerMismatchError, match="tokens_hash"):
        manifest.tokenizer.check(other, "tokens")
    bigger = make_tokenizer(tmp_path / "tok3", tmp_path / "images.npz", codebook_size=64)
    with pytest.raises(TokenizerMismatchError, match="codebook_size: 32 .* 64"):
        manifest.tokenizer.check(bigger, "tokens")


def test_missing_tokenizer_data_gives_a_clear_error(tmp_path: Path) -> None:
    data = make_image_npz(tmp_path / "images.npz")
    make_tokenizer(tmp_path / "tok", data)
    (tmp_path / "tok" / "training_data.json").unlink()
    with pytest.raises(FileNotFoundError, match="pass --data"):
        extract_tokens.main(["--tokenizer", str(tmp_path / "tok"), "--out", str(tmp_path / "t")])
    # with --data it works
    extract_tokens.main(["--tokenizer", str(tmp_path / "tok"), "--out", str(tmp_path / "t"), "--data", str(data),
                         "--image-size", "16", "--splits", "test"])
    assert Manifest.load(tmp_path / "t").splits["test"].count == 4


@pytest.mark.slow
def test_two_process_extraction_equals_one(tokenizer_dir: Path, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    extract_tokens.main(["--tokenizer", str(tokenizer_dir), "--out", str(one), "--shard-size", "8"])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                    "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                    str(ROOT / "stage2_prior" / "extract_tokens.py"), "--tokenizer", str(tokenizer_dir),
                    "--out", str(two), "--shard-size", "8"], check=True, env=env, cwd=ROOT, capture_output=True)
    for split in ("train", "test"):
        a, b = TokenDataset(one, split), TokenDataset(two, split)
        assert len(a) == len(b)
        assert all(torch.equal(a[i]["codes"], b[i]["codes"]) for i in range(len(a)))


def test_a_new_decoder_keeps_the_fingerprint_other_encoders_do_not(tokenizer_dir: Path, tmp_path: Path) -> None:
    from dataclasses import replace

    fingerprint = Manifest.load(_extracted(tokenizer_dir, tmp_path)).tokenizer
    assert fingerprint.tokens_hash  # new records carry the hash of the token-defining weights
    tok = EdVAE.from_pretrained(tokenizer_dir)
    with torch.no_grad():  # a fine-tuned decoder: other images, the same tokens
        tok.decoder.blocks.output.conv.weight.add_(0.1)
        assert tok.weights_hash() != fingerprint.weights_hash
        fingerprint.check(tok, "tokens")
        next(tok.encoder.parameters()).add_(0.1)  # another encoder: other tokens
    with pytest.raises(TokenizerMismatchError, match="tokens_hash"):
        fingerprint.check(tok, "tokens")
    # a record from before tokens_hash existed compares all weights, so the decoder change is refused too
    legacy = replace(fingerprint, tokens_hash="")
    with pytest.raises(TokenizerMismatchError, match="weights_hash"):
        legacy.check(tok, "tokens")


def _extracted(tokenizer_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "tokens"
    extract_tokens.main(["--tokenizer", str(tokenizer_dir), "--out", str(out), "--splits", "test"])
    return out
