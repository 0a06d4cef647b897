"""Sample images from a trained prior, or complete an image, and save them.

    python -m stage2_prior.sample --prior runs/stage2/celeba/prior --tokenizer runs/stage1/celeba/tokenizer \
        --num 64 --out runs/samples/celeba [--temperature 1.0 --top-k 0 --top-p 1.0 --seed 0 --batch-size 16]
    python -m stage2_prior.sample ... --complete face.png --keep-rows 8 --num 8      # completions of one image
    python -m stage2_prior.sample ... --class 3 --cfg-scale 3.0                      # class-conditional priors

Writes ``grid.png``, one PNG per image under ``images/``, ``samples.npz`` (``images``:
uint8 N x H x W x 3, ``codes``: N x h x w) and ``samples.json`` (every setting, for FID
protocols). Everything goes through ``stage2_prior.pipeline.Pipeline``: sampling settings not
given take the prior's recommended ones (its ``sampling.json``, else temperature 1, no top-k /
top-p), and ``--complete`` images get the tokenizer's own preprocessing (its
``training_data.json``: the CelebA crop for CelebA, ...). The same seed and batch size give the
same images.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from edvae_common.io import atomic_write_bytes, save_image_grid, to_uint8, write_json
from stage2_prior.inputs import KINDS

logger = logging.getLogger("stage2.sample")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prior", required=True, help="exported prior folder (output_dir/prior) or Hub id")
    p.add_argument("--tokenizer", required=True, help="the stage-1 tokenizer the prior was trained on")
    p.add_argument("--num", type=int, default=16, help="images to sample (completions: variations)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--temperature", type=float, default=None,
                   help="softmax temperature; 0 = greedy (default: the prior's sampling.json, else 1)")
    p.add_argument("--top-k", type=int, default=None,
                   help="keep the k most likely codes, 0 = all (default: sampling.json, else all)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass, 1 = off (default: sampling.json, else 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed; -1 draws a fresh one (recorded in samples.json)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--class", dest="class_label", type=int, default=None, help="class id (conditional priors)")
    p.add_argument("--cfg-scale", type=float, default=None,
                   help="classifier-free guidance scale, needs --class (default: sampling.json's guidance, else 1)")
    p.add_argument("--complete", default=None, help="an image to complete (preprocessed like the tokenizer's data)")
    p.add_argument("--keep-rows", type=int, default=None, help="token rows of --complete to keep (default: half)")
    p.add_argument("--preprocess", default=None, choices=KINDS,
                   help="override the preprocessing of --complete read from the tokenizer's training_data.json")
    p.add_argument("--no-cache", action="store_true", help="disable the KV cache (slow; for comparison)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    return p.parse_args(argv)


def save_outputs(out: Path, images: torch.Tensor, codes: torch.Tensor, meta: dict) -> None:
    """grid.png, images/NNNNN.png, samples.npz (uint8 images + codes) and samples.json."""
    import io

    from PIL import Image

    import shutil

    out.mkdir(parents=True, exist_ok=True)
    if (out / "images").is_dir():  # never mix single images of an earlier run into this one's
        shutil.rmtree(out / "images")
    arrays = to_uint8(images)
    save_image_grid(images, out / "grid.png", nrow=int(math.ceil(math.sqrt(len(images)))))
    for i, array in enumerate(arrays):
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format="PNG")
        atomic_write_bytes(out / "images" / f"{i:05d}.png", buf.getvalue())
    buf = io.BytesIO()
    np.savez_compressed(buf, images=arrays, codes=codes.numpy().astype(np.int64))
    atomic_write_bytes(out / "samples.npz", buf.getvalue())
    write_json(out / "samples.json", meta)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from stage2_prior.pipeline import Pipeline

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = Pipeline.from_pretrained(args.tokenizer, args.prior, device=device, preprocess=args.preprocess)
    sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                    class_label=args.class_label, guidance=args.cfg_scale, batch_size=args.batch_size)
    out = Path(args.out)
    tic = time.perf_counter()
    if args.complete is None:
        result = pipe.generate(args.num, use_cache=not args.no_cache, **sampling)
        images, codes, settings = result.images, result.codes, result.settings
        mode = {"mode": "sample"}
    else:
        if args.no_cache:
            raise ValueError("--no-cache is for timing plain sampling; drop it with --complete")
        result = pipe.complete(args.complete, args.keep_rows, args.num, **sampling)
        images, codes, settings = result.completions, result.codes, result.settings
        save_image_grid(torch.stack([result.kept, result.reconstruction]), out / "input.png", nrow=2)
        mode = {"mode": "complete", "image": str(args.complete), "keep_rows": result.keep_rows,
                "preprocess": pipe.preprocess}
    seconds = time.perf_counter() - tic
    meta = {**mode, "prior": str(args.prior), "tokenizer": str(args.tokenizer), "num": args.num, **settings,
            "use_cache": not args.no_cache, "grid": list(pipe.grid), "image_size": pipe.image_size,
            "seconds": seconds, "device": device}
    if "note" in pipe.sampling_defaults:
        meta["sampling_note"] = pipe.sampling_defaults["note"]
    save_outputs(out, images, codes, meta)
    print(f"wrote {len(images)} images to {out} in {seconds:.1f} s (grid.png, images/, samples.npz, samples.json)")
    return out


if __name__ == "__main__":
    from edvae_common.cli import run_cli

    run_cli(main)
