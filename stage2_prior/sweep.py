"""Choose a prior's recommended sampling settings by FID, and record the sweep.

    python -m stage2_prior.sweep --tokenizer checkpoints/celeba64/tokenizer --prior checkpoints/celeba64/prior \
        --real ../shared/data/celeba64_dev.npz --real-split test --test-fraction 0.13333 --num 1000 \
        --temperature 1.0 0.9 --top-k 0 100 --top-p 1.0 --seed 0 --out docs/results/celeba64/sweep \
        [--write-recommended]

For every combination of ``--temperature`` x ``--top-k`` x ``--top-p`` it samples ``--num`` images
with the same seed (``Pipeline.generate``) and measures their FID against the real images
(``stage2_prior.fid``'s protocol, reference statistics cached). It also measures the FID of the
tokenizer's own reconstructions of those real images (rFID): the floor a prior on these tokens can
reach, so ``FID / rFID`` is the part of the gap the prior owns. Writes ``sweep.json`` and
``sweep.md`` to ``--out``; ``--write-recommended`` stores the best setting (lowest FID) as the
prior's ``sampling.json``, the defaults of ``stage2_prior.sample`` and the app.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from edvae_common.io import atomic_write_text, write_json

logger = logging.getLogger("stage2.sweep")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True, help="stage-1 export folder (or Hub id)")
    p.add_argument("--prior", required=True, help="exported prior folder (or Hub id) trained on that tokenizer")
    p.add_argument("--real", required=True, help="real images: a stage-1 data source (an .npz, a folder, celeba:PATH, ...)")
    p.add_argument("--real-split", default="test", choices=["all", "train", "test"])
    p.add_argument("--test-fraction", type=float, default=0.1, help="held-out split of sources without one")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--num", type=int, default=1000, help="samples per setting (and real images used, at most)")
    p.add_argument("--temperature", type=float, nargs="+", default=[1.0])
    p.add_argument("--top-k", type=int, nargs="+", default=[0], help="0 = no top-k filter")
    p.add_argument("--top-p", type=float, nargs="+", default=[1.0])
    p.add_argument("--seed", type=int, default=0, help="the same seed for every setting")
    p.add_argument("--batch-size", type=int, default=50, help="sequences sampled at once")
    p.add_argument("--protocol", default="pytorch-fid", help="FID preprocessing protocol (see stage2_prior.fid)")
    p.add_argument("--weights", default=None, help="TorchScript feature extractor (default: the standard FID Inception)")
    p.add_argument("--cache-dir", default=None, help="reference-statistics cache (default: stage2_prior.fid's)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--out", required=True, help="folder for sweep.json and sweep.md")
    p.add_argument("--write-recommended", action="store_true", help="write the best setting as the prior's sampling.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import torch

    from stage2_prior import fid
    from stage2_prior.pipeline import SAMPLING_FILE, Pipeline

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.num < 2:
        raise ValueError(f"--num must be at least 2 (FID needs two images per side), got {args.num}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out)
    cache_dir = args.cache_dir if args.cache_dir is not None else str(fid.DEFAULT_CACHE)

    # 1. The pair, the real images (the pair's own resolution) and the feature extractor.
    pipe = Pipeline.from_pretrained(args.tokenizer, args.prior, device=device)
    real = _real_images(args, pipe.image_size)
    if real.shape[1:3] != (pipe.image_size, pipe.image_size):
        raise ValueError(f"the real images are {real.shape[1]}x{real.shape[2]}, the pair makes "
                         f"{pipe.image_size}x{pipe.image_size}: pass real images at the pair's resolution")
    extractor = fid.InceptionFeatures(args.weights, device=device, protocol=args.protocol)

    # 2. The floor: FID of the tokenizer's reconstructions of the same real images.
    recon, _ = fid.reconstruct_images(real, args.tokenizer, device=device)
    rfid = fid.compute_fid(real, recon, extractor, cache_dir=cache_dir)
    logger.info("rFID (tokenizer reconstructions of %d real images): %.2f", len(real), rfid)

    # 3. Every setting, the same seed.
    rows = []
    for temperature, top_k, top_p in itertools.product(args.temperature, args.top_k, args.top_p):
        tic = time.perf_counter()
        samples = pipe.generate(args.num, temperature=temperature, top_k=top_k, top_p=top_p, seed=args.seed,
                                batch_size=args.batch_size)
        seconds = time.perf_counter() - tic
        value = fid.compute_fid(real, samples.uint8(), extractor, cache_dir=cache_dir)
        rows.append({"temperature": temperature, "top_k": top_k, "top_p": top_p, "fid": value,
                     "fid_over_rfid": value / rfid, "sampling_seconds": seconds})
        logger.info("temperature %g, top_k %d, top_p %g: FID %.2f (%.2fx rFID), sampled in %.0f s",
                    temperature, top_k, top_p, value, value / rfid, seconds)
    best = min(rows, key=lambda r: r["fid"])

    # 4. Results, and the recommended setting.
    result = {"tokenizer": str(args.tokenizer), "prior": str(args.prior), "num_samples": args.num,
              "num_real": int(len(real)), "seed": args.seed, "batch_size": args.batch_size,
              "real": {"source": args.real, "split": args.real_split, "test_fraction": args.test_fraction,
                       "split_seed": args.split_seed},
              "fid_protocol": extractor.describe(), "rfid": rfid, "rows": rows, "best": best}
    write_json(out / "sweep.json", result)
    lines = [f"# Sampling sweep: FID of {args.num} samples (seed {args.seed}) against {len(real)} real images",
             "", f"Real: `{args.real}` split `{args.real_split}`; FID protocol `{args.protocol}`. "
             f"rFID (the tokenizer's reconstructions of the real images): **{rfid:.2f}**.", "",
             "| temperature | top-k | top-p | FID | FID / rFID | sampling time (s) |", "|---|---|---|---|---|---|"]
    for r in rows:
        mark = " **(chosen)**" if r is best else ""
        lines.append(f"| {r['temperature']:g} | {r['top_k'] or 'off'} | {r['top_p']:g} | {r['fid']:.2f}{mark} | "
                     f"{r['fid_over_rfid']:.2f} | {r['sampling_seconds']:.0f} |")
    atomic_write_text(out / "sweep.md", "\n".join(lines) + "\n")
    if args.write_recommended:
        folder = Path(args.prior)
        if not folder.is_dir():
            raise ValueError(f"--write-recommended needs a local prior folder, got '{args.prior}'")
        write_json(folder / SAMPLING_FILE, {
            "temperature": best["temperature"], "top_k": best["top_k"], "top_p": best["top_p"],
            "note": f"lowest FID ({best['fid']:.2f}, {args.num} samples, seed {args.seed}) of the sweep in "
                    f"{out / 'sweep.md'}"})
        logger.info("wrote %s", folder / SAMPLING_FILE)
    return result


def _real_images(args: argparse.Namespace, size: int) -> np.ndarray:
    """uint8 (N, H, W, 3): an .npz or image folder as it is; a ``KIND:PATH`` source (``lsun_church:``,
    ``folder:``, ...) through stage 1's loader, split and preprocessing at the pair's resolution."""
    from stage2_prior import fid

    if fid.parse_source(args.real)[0] == "auto":
        return fid.load_images(args.real, args.real_split, args.test_fraction, args.split_seed)[: args.num]
    source = fid.open_source(args.real, args.real_split, size, args.test_fraction, args.split_seed, args.num)
    return np.stack([source.dataset[i].permute(1, 2, 0).numpy() for i in range(len(source))])


if __name__ == "__main__":
    from edvae_common.cli import run_cli

    run_cli(main)
