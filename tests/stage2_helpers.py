"""Builders for stage-2 tests: a small random tokenizer with its training data, structured token sets."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from edvae_common.io import write_json
from stage1_tokenizer.config import DataConfig
from stage1_tokenizer.model import TRAINING_DATA_FILE, EdVAE
from stage2_prior.tokens import Manifest, SplitInfo, TokenizerFingerprint, save_array

STAGE2_QUIET = ["train.tracker=none", "train.progress_bar=false"]


class StandInExtractor(torch.nn.Module):
    """A small fixed random conv net standing in for the FID Inception: ``features`` numbers per
    (B, 3, 299, 299) input in [-1, 1]; the same weights every time (seed 0)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, features, 9, stride=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x)).mean(dim=(2, 3)) * 10


def save_standin_extractor(path: Path, features: int) -> Path:
    """Save a ``StandInExtractor`` as TorchScript at ``path`` (what ``stage2_prior.fid --weights`` loads)."""
    torch.jit.script(StandInExtractor(features).eval()).save(str(path))
    return path


def make_tokenizer(folder: Path, data_path: Path, seed: int = 0, codebook_size: int = 32) -> EdVAE:
    """An untrained small tokenizer (16x16 images -> 8x8 codes) exported like stage1 train.py does."""
    torch.manual_seed(seed)
    tok = EdVAE(channels=8, channel_mults=[1, 2], blocks_per_group=1, codebook_size=codebook_size, codebook_dim=4).eval()
    tok.save_pretrained(str(folder))
    write_json(folder / TRAINING_DATA_FILE, asdict(DataConfig(dataset="npz", path=str(data_path), image_size=16)))
    return tok


def make_image_npz(path: Path, n: int = 40, labels: bool = True) -> Path:
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, size=(n, 4, 4, 3)).astype(np.uint8)
    images = coarse.repeat(4, axis=1).repeat(4, axis=2)
    extra = {"labels": rng.integers(0, 3, size=n).astype(np.int64)} if labels else {}
    np.savez(path, images=images, **extra)
    return path


def pattern_sequences(n: int, grid: tuple[int, int], k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable token grids: each row repeats one code drawn per (class, row); label = class (3 classes)."""
    rng = np.random.default_rng(seed)
    h, w = grid
    table = np.random.default_rng(123).integers(0, k, size=(3, h))
    labels = rng.integers(0, 3, size=n)
    rows = table[labels]                                           # (n, h)
    noise = rng.random((n, h)) < 0.1                               # 10% rows take a random code
    rows = np.where(noise, rng.integers(0, k, size=(n, h)), rows)
    seqs = np.repeat(rows[:, :, None], w, axis=2).reshape(n, h * w)
    return seqs.astype(np.uint16), labels.astype(np.int64)


def make_token_set(folder: Path, fingerprint: TokenizerFingerprint, n_train: int = 512, n_val: int = 64,
                   shard_size: int = 200) -> Path:
    """A token folder in the extract_tokens layout holding pattern_sequences (train/test), with labels."""
    splits = {}
    for split, n, seed in (("train", n_train, 0), ("test", n_val, 1)):
        seqs, labels = pattern_sequences(n, tuple(fingerprint.grid), fingerprint.codebook_size, seed)
        (folder / split).mkdir(parents=True, exist_ok=True)
        names, label_names = [], []
        for i, lo in enumerate(range(0, n, shard_size)):
            names.append(f"{split}/shard_{i:05d}.npy")
            label_names.append(f"{split}/shard_{i:05d}.labels.npy")
            save_array(folder / names[-1], seqs[lo:lo + shard_size])
            save_array(folder / label_names[-1], labels[lo:lo + shard_size])
        splits[split] = SplitInfo(count=n, shards=names, label_shards=label_names)
    Manifest(tokenizer=fingerprint, data={"dataset": "synthetic"}, splits=splits, num_classes=3).save(folder)
    return folder
