"""Encode a dataset into token shards once, before prior training (stage 1 -> stage 2 hand-off).

    accelerate launch stage2_prior/extract_tokens.py --tokenizer runs/stage1/celeba/tokenizer \
        --out runs/tokens/celeba [--data ../shared/data/celeba64_dev.npz] [--splits train test]

By default the images are the tokenizer's own training data (its ``training_data.json``:
the same source, preprocessing and held-out split); ``--data`` points at another
source (an .npz, an image folder, a saved ``datasets`` folder or Hub id, or a
named dataset with ``--dataset``). Codes are the deterministic argmax codes.

Shards are split over processes (shard i goes to process i mod N), each written
atomically; a re-run skips the shards that are complete, so a killed extraction
resumes where it stopped. The manifest is written last. See ``stage2_prior/tokens.py``
for the folder layout.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from dataclasses import asdict, replace
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from edvae_common.accel import make_accelerator
from edvae_common.hub import resolve_pretrained
from edvae_common.io import read_json, write_json
from stage1_tokenizer import DATASETS, TRAINING_DATA_FILE, DataConfig, EdVAE, build_dataset
from stage2_prior.tokens import TOKEN_DTYPE, Manifest, SplitInfo, TokenizerFingerprint, save_array

logger = logging.getLogger("stage2.extract")
RUN_RECORD = "extraction.json"   # what a (possibly unfinished) extraction in this folder was started with


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True, help="stage-1 export folder (or Hub id) written by save_pretrained")
    p.add_argument("--out", required=True, help="token folder to write (resumed if it holds an unfinished extraction)")
    p.add_argument("--data", default=None, help="image source path; default: the tokenizer's training data")
    p.add_argument("--dataset", default=None, choices=DATASETS, help="source kind for --data (default: auto)")
    p.add_argument("--image-size", type=int, default=None, help="side after preprocessing (default: the tokenizer's)")
    p.add_argument("--splits", nargs="+", default=["train", "test"], choices=["train", "test"])
    p.add_argument("--batch-size", type=int, default=256, help="images per encoder call, per process")
    p.add_argument("--shard-size", type=int, default=8192, help="sequences per shard file")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers per process")
    p.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=None,
                   help="also encode a left-right mirrored copy of every train image (the train split doubles; "
                        "default: on when the tokenizer was trained with data.hflip)")
    return p.parse_args(argv)


def data_config(tokenizer_dir: Path, args: argparse.Namespace) -> DataConfig:
    """The tokenizer's training data settings, with --data / --dataset / --image-size applied."""
    record = tokenizer_dir / TRAINING_DATA_FILE
    base = DataConfig(**read_json(record)) if record.is_file() else None
    if base is None and args.data is None:
        raise FileNotFoundError(f"'{tokenizer_dir}' has no {TRAINING_DATA_FILE} (not exported by stage1 train.py), so "
                                "the images cannot be guessed: pass --data (and --image-size)")
    cfg = base or DataConfig(dataset="auto", image_size=args.image_size or 32)
    if args.data is not None:
        cfg = replace(cfg, path=args.data, dataset=args.dataset or "auto", download=False)
    elif args.dataset is not None:
        cfg = replace(cfg, dataset=args.dataset)
    if args.image_size is not None:
        cfg = replace(cfg, image_size=args.image_size)
    if args.hflip is not None:
        cfg = replace(cfg, hflip=args.hflip)
    return replace(cfg, num_workers=args.num_workers)


class WithMirrors(Dataset):
    """A dataset followed by its left-right mirrored copy: item i + n is item i flipped (labels repeat)."""

    def __init__(self, base: Dataset):
        self.base, self.n = base, len(base)
        labels = getattr(base, "labels", None)
        self.labels = None if labels is None else np.concatenate([np.asarray(labels), np.asarray(labels)])

    def __len__(self) -> int:
        return 2 * self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        image = self.base[i % self.n]
        return image.flip(-1) if i >= self.n else image


def run_record(fingerprint: TokenizerFingerprint, cfg: DataConfig, shard_size: int) -> dict:
    """What an extraction's shards depend on (not where the tokenizer was loaded from, nor worker counts)."""
    tokenizer = {k: v for k, v in asdict(fingerprint).items() if k != "path"}
    data = {k: v for k, v in asdict(cfg).items() if k != "num_workers"}
    return {"tokenizer": tokenizer, "data": data, "shard_size": shard_size}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def check_run_record(out: Path, record: dict) -> None:
    """Refuse to resume an extraction that was started with another tokenizer, data or shard size."""
    path = out / RUN_RECORD
    if path.is_file():
        old, new = _flatten(read_json(path)), _flatten(record)
        diff = [f"{k}: {old.get(k)} -> {new.get(k)}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        if diff:
            raise ValueError(f"'{out}' holds an extraction made with other settings ({'; '.join(diff)}); "
                             "pass another --out, or delete that folder to start over")


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    if args.batch_size <= 0 or args.shard_size <= 0:
        raise ValueError("--batch-size and --shard-size must be positive")
    accelerator = make_accelerator()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = Path(args.out)

    # 1. The tokenizer and its fingerprint (what the prior will be tied to).
    tokenizer = EdVAE.from_pretrained(args.tokenizer).to(accelerator.device).eval()
    tok_dir = resolve_pretrained(args.tokenizer, ["config.json"])
    cfg = data_config(tok_dir, args)
    fingerprint = TokenizerFingerprint.of(tokenizer, cfg.image_size, args.tokenizer)
    if cfg.image_size % tokenizer.downsample:
        raise ValueError(f"image size {cfg.image_size} is not divisible by the tokenizer's downsampling {tokenizer.downsample}")
    if fingerprint.codebook_size > np.iinfo(TOKEN_DTYPE).max + 1:
        raise ValueError(f"codebook of {fingerprint.codebook_size} codes does not fit the {TOKEN_DTYPE.__name__} shards")
    record = run_record(fingerprint, cfg, args.shard_size)
    check_run_record(out, record)  # on every process: one refusing alone would leave the others waiting
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / RUN_RECORD, record)
    accelerator.wait_for_everyone()

    # splits extracted earlier into this folder (same settings, checked above) stay in the manifest
    previous = Manifest.load(out) if (out / "manifest.json").is_file() else None
    splits: dict[str, SplitInfo] = dict(previous.splits) if previous is not None else {}
    label_max = previous.num_classes - 1 if previous is not None else -1
    for split in args.splits:
        dataset = build_dataset(cfg, split)
        if split == "train" and cfg.hflip:
            dataset = WithMirrors(dataset)  # mirrored faces are faces: twice the sequences for the prior
        labels = getattr(dataset, "labels", None)
        n = len(dataset)
        n_shards = math.ceil(n / args.shard_size)
        (out / split).mkdir(parents=True, exist_ok=True)
        names = [f"{split}/shard_{i:05d}.npy" for i in range(n_shards)]
        label_names = [f"{split}/shard_{i:05d}.labels.npy" for i in range(n_shards)] if labels is not None else []

        # 2. This process's shards that are not complete yet (a complete one has its final name and right shape).
        def done(i: int) -> bool:
            path = out / names[i]
            if not path.is_file() or (labels is not None and not (out / label_names[i]).is_file()):
                return False
            expected = (min(args.shard_size, n - i * args.shard_size), fingerprint.seq_len)
            try:
                return np.load(path, mmap_mode="r").shape == expected
            except (ValueError, OSError):  # not a readable .npy (e.g. copied in half by hand)
                return False

        mine = [i for i in range(accelerator.process_index, n_shards, accelerator.num_processes) if not done(i)]
        skipped = len(range(accelerator.process_index, n_shards, accelerator.num_processes)) - len(mine)
        if skipped:
            logger.info("process %d: %s: %d shard(s) already complete, skipped", accelerator.process_index, split, skipped)
        todo = sum(min(args.shard_size, n - i * args.shard_size) for i in mine)
        bar = tqdm(total=todo, desc=f"tokens {split} (process {accelerator.process_index})", unit="img",
                   disable=not accelerator.is_local_main_process)

        # 3. Encode each shard in batches; write codes (and labels) atomically.
        for i in mine:
            lo, hi = i * args.shard_size, min(n, (i + 1) * args.shard_size)
            loader = DataLoader(Subset(dataset, range(lo, hi)), batch_size=args.batch_size, shuffle=False,
                                num_workers=args.num_workers)
            chunks = []
            with torch.inference_mode():
                for images in loader:
                    codes = tokenizer.encode(images.to(accelerator.device))          # (b, h, w) argmax codes
                    chunks.append(codes.flatten(1).cpu().numpy().astype(TOKEN_DTYPE))  # row-major sequences
                    bar.update(len(images))
            if labels is not None:
                save_array(out / label_names[i], np.asarray(labels[lo:hi], dtype=np.int64))
            save_array(out / names[i], np.concatenate(chunks))
        bar.close()
        if labels is not None and len(labels):
            label_max = max(label_max, int(np.max(labels)))
        splits[split] = SplitInfo(count=n, shards=names, label_shards=label_names)

    # 4. Every process is done: the manifest makes the folder a complete token set.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        has_labels = all(info.label_shards for info in splits.values())
        manifest = Manifest(tokenizer=fingerprint, data=asdict(cfg), splits=splits,
                            num_classes=label_max + 1 if has_labels and label_max >= 0 else 0)
        manifest.save(out)
        logger.info("wrote %s: %s; grid %s, codebook %d%s", out,
                    ", ".join(f"{k} {v.count}" for k, v in splits.items()), fingerprint.grid,
                    fingerprint.codebook_size, f", {manifest.num_classes} classes" if manifest.num_classes else "")
    accelerator.wait_for_everyone()
    accelerator.end_training()  # tears the process group down before exit (a live gloo group can abort at exit)
    return out


if __name__ == "__main__":
    from edvae_common.cli import run_cli

    run_cli(main)
