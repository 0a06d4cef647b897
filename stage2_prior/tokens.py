"""The hand-off between the stages: token shards on disk and the manifest that ties them to a tokenizer.

A token folder written by ``extract_tokens.py`` looks like::

    <tokens>/
      manifest.json                    format, tokenizer fingerprint, data source, per-split counts
      train/shard_00000.npy            (n, h*w) uint16 argmax codes, row-major over the token grid
      train/shard_00000.labels.npy     (n,) int64 class ids, only when the source has labels
      test/...

A shard appears under its final name only once fully written (temporary
file + rename), so a killed extraction never leaves a half shard that looks
complete; the manifest is written last, so a folder without one is unfinished.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from edvae_common.hub import CheckpointError
from edvae_common.io import atomic_write_bytes, read_json, write_json

FORMAT = "edvae-tokens"
VERSION = 1
MANIFEST = "manifest.json"
TOKEN_DTYPE = np.uint16  # codebooks up to 65,536 codes


class TokenizerMismatchError(CheckpointError):
    """Tokens or a prior were made with another tokenizer than the one given."""


@dataclass
class TokenizerFingerprint:
    """What stage 2 needs to know about the tokenizer, and what must match when the stages meet."""

    codebook_size: int
    grid: list[int]                 # [h, w]
    image_size: int
    weights_hash: str               # all weights (what decoded images depend on)
    path: str = ""                  # where it was loaded from (informational)
    # the encoder and codebook only (what the tokens depend on): what a prior or a token set is checked against,
    # so a fine-tuned decoder keeps its prior; "" in records written before it existed (then weights_hash is)
    tokens_hash: str = ""

    @staticmethod
    def _shape(tokenizer: Any, image_size: int) -> dict:
        """The fields read off the tokenizer without hashing its weights."""
        return {"codebook_size": int(tokenizer.codebook_size), "grid": list(tokenizer.grid_shape(image_size))}

    @classmethod
    def of(cls, tokenizer: Any, image_size: int, path: str | Path = "") -> "TokenizerFingerprint":
        return cls(**cls._shape(tokenizer, image_size), image_size=int(image_size),
                   weights_hash=tokenizer.weights_hash(), path=str(path), tokens_hash=tokenizer.tokens_hash())

    @classmethod
    def from_dict(cls, d: dict) -> "TokenizerFingerprint":
        return cls(**{k: d[k] for k in ("codebook_size", "grid", "image_size", "weights_hash")}, path=d.get("path", ""),
                   tokens_hash=d.get("tokens_hash", ""))

    @property
    def seq_len(self) -> int:
        return int(self.grid[0] * self.grid[1])

    def check(self, tokenizer: Any, what: str) -> None:
        """Raise TokenizerMismatchError naming every field where ``tokenizer`` differs from this fingerprint.

        The weights are compared by ``tokens_hash`` (encoder and codebook): a tokenizer whose decoder
        was fine-tuned or replaced makes the same tokens and passes. Records without it compare all weights.
        """
        weights = "tokens_hash" if self.tokens_hash else "weights_hash"
        given = {**self._shape(tokenizer, self.image_size),
                 weights: getattr(tokenizer, weights)()}  # only the hash compared is computed
        diffs = [f"{name}: {getattr(self, name)} (expected) vs {value} (given)"
                 for name, value in given.items() if getattr(self, name) != value]
        if diffs:
            raise TokenizerMismatchError(
                f"{what} was made with another tokenizer ({self.path or 'path unknown'}): " + "; ".join(diffs)
                + ". Pass the tokenizer it was made with, or re-extract the tokens / retrain the prior.")


@dataclass
class SplitInfo:
    count: int
    shards: list[str]
    label_shards: list[str] = field(default_factory=list)


@dataclass
class Manifest:
    tokenizer: TokenizerFingerprint
    data: dict                       # the stage-1 DataConfig the images came from
    splits: dict[str, SplitInfo]
    num_classes: int = 0             # > 0 when every split has labels
    format: str = FORMAT
    version: int = VERSION

    def to_dict(self) -> dict:
        return {"format": self.format, "version": self.version, "tokenizer": asdict(self.tokenizer), "data": self.data,
                "num_classes": self.num_classes, "splits": {k: asdict(v) for k, v in self.splits.items()}}

    def save(self, folder: str | Path) -> None:
        write_json(Path(folder) / MANIFEST, self.to_dict())

    @classmethod
    def load(cls, folder: str | Path) -> "Manifest":
        folder = Path(folder)
        path = folder / MANIFEST
        if not path.is_file():
            partial = " (it holds shards: the extraction did not finish; run it again to resume)" \
                if any(folder.glob("*/shard_*.npy")) else ""
            raise FileNotFoundError(f"no token set at '{folder}': {MANIFEST} is missing{partial}. Make one with "
                                    "`accelerate launch stage2_prior/extract_tokens.py --tokenizer DIR --out DIR`.")
        d = read_json(path)
        if d.get("format") != FORMAT:
            raise CheckpointError(f"'{path}' is not a token manifest (format {d.get('format')!r}, expected {FORMAT!r})")
        if d.get("version", 0) > VERSION:
            raise CheckpointError(f"'{path}' has manifest version {d['version']}; this code reads up to {VERSION}")
        return cls(tokenizer=TokenizerFingerprint.from_dict(d["tokenizer"]), data=d["data"],
                   splits={k: SplitInfo(**v) for k, v in d["splits"].items()}, num_classes=d.get("num_classes", 0))


def save_array(path: Path, array: np.ndarray) -> None:
    """Write a ``.npy`` atomically: complete under its final name, or not there at all."""
    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write_bytes(path, buf.getvalue())


class TokenDataset(Dataset):
    """One split of a token folder as (seq_len,) int64 code sequences, with labels when present.

    Items are dicts ``{"codes": LongTensor (h*w,), "label": LongTensor ()}`` (label -1 without labels).
    Shards are memory-mapped, so large token sets are not read into memory at once.
    """

    def __init__(self, folder: str | Path, split: str):
        self.folder = Path(folder)
        self.manifest = Manifest.load(self.folder)
        if split not in self.manifest.splits:
            raise ValueError(f"token set '{folder}' has no split '{split}' (has: {', '.join(self.manifest.splits)})")
        info = self.manifest.splits[split]
        self.shards = [np.load(self.folder / name, mmap_mode="r") for name in info.shards]
        self.labels = [np.load(self.folder / name) for name in info.label_shards] if info.label_shards else None
        sizes = [len(s) for s in self.shards]
        if sum(sizes) != info.count:
            raise CheckpointError(f"token set '{folder}' split '{split}': shards hold {sum(sizes)} sequences, "
                                  f"manifest says {info.count}; re-run the extraction")
        seq = self.manifest.tokenizer.seq_len
        k = self.manifest.tokenizer.codebook_size
        for name, shard in zip(info.shards, self.shards):
            if shard.ndim != 2 or shard.shape[1] != seq:
                raise CheckpointError(f"'{self.folder / name}' has shape {shard.shape}, expected (n, {seq})")
            if len(shard) and int(shard.max()) >= k:
                raise CheckpointError(f"'{self.folder / name}' holds code {int(shard.max())}, outside the manifest's "
                                      f"codebook of {k}; re-run the extraction")
        self.offsets = np.cumsum([0] + sizes)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> dict:
        s = int(np.searchsorted(self.offsets, i, side="right") - 1)
        j = i - int(self.offsets[s])
        codes = torch.from_numpy(self.shards[s][j].astype(np.int64))
        label = int(self.labels[s][j]) if self.labels is not None else -1
        return {"codes": codes, "label": torch.tensor(label, dtype=torch.long)}
