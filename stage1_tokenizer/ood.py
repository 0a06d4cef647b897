"""The evidential uncertainty u = K/S as an "unlike the training data" signal, measured honestly.

    python -m stage1_tokenizer.ood --tokenizer checkpoints/celeba64/tokenizer \
        --cifar ../shared/data/cifar10_dev.npz --out docs/results/celeba64/ood.json [--write-reference]

Scores every image by its mean evidential uncertainty over the token grid (argmax codes, eval mode)
and, as the obvious baseline, by its reconstruction MSE (``mse``: the decoder output as it is;
``mse_clipped``: the reconstruction clipped to [0, 1]), all from ``uncertainty.per_image_scores``;
then reports the AUROC of each score for telling the tokenizer's held-out images (in-distribution) from:

- ``cifar10``: CIFAR-10 images brought to the tokenizer's size (bilinear upscaling);
- ``upside_down``: the same held-out images flipped vertically (same pixels, unfamiliar layout);
- ``noisy``: the held-out images plus Gaussian noise of std 0.3, clipped to [0, 1];
- ``uniform_noise``: images of i.i.d. uniform pixels.

AUROC is the probability that a random out-of-distribution image scores higher than a random
held-out one (0.5: no signal; ties count half). ``--write-reference`` also stores the 0..100th
percentiles of the per-image mean uncertainty over the tokenizer's *training* images, with a
one-sentence statement of these AUROCs, as ``uncertainty_reference.json`` in the tokenizer folder:
the app shows where an upload falls among the training images, beside that statement.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from edvae_common.hub import resolve_pretrained
from edvae_common.io import read_json, write_json

from .config import DataConfig
from .data import build_dataset
from .data.preprocess import Preprocess
from .model import TRAINING_DATA_FILE, EdVAE
from .uncertainty import (UNCERTAINTY_REFERENCE_FILE, mean_uncertainty_quantiles, per_image_scores,
                          write_uncertainty_reference)

logger = logging.getLogger("stage1.ood")
__all__ = ["auroc", "main", "per_image_scores"]  # per_image_scores: stage1_tokenizer.uncertainty's


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """P(out score > in score) + P(equal) / 2 over all (in, out) pairs: the Mann-Whitney form of the AUROC."""
    in_scores, out_scores = np.asarray(in_scores, np.float64), np.asarray(out_scores, np.float64)
    if in_scores.size == 0 or out_scores.size == 0:
        raise ValueError("AUROC needs at least one in-distribution and one out-of-distribution score")
    both = np.concatenate([in_scores, out_scores])
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # 1-based ranks, ties share their average rank
    n_in, n_out = len(in_scores), len(out_scores)
    return float((ranks[n_in:].sum() - n_out * (n_out + 1) / 2) / (n_in * n_out))


def _stack(dataset: Dataset, n: int | None) -> torch.Tensor:
    n = len(dataset) if n is None else min(n, len(dataset))
    return torch.stack([dataset[i] for i in range(n)])


def _batches(images: torch.Tensor, size: int = 100) -> list[torch.Tensor]:
    return list(images.split(size))


def reference_statement(n_in: int, sets: dict, useful: float = 0.6) -> str:
    """The one-sentence reading of the AUROCs that the app shows beside an upload's percentile.

    It says what was measured, and it says that a high percentile means "unlike the training images"
    only where the mean uncertainty scored at least ``useful`` against some set; otherwise it says the
    score does not separate them, so the app never claims a signal that was not measured.
    """
    unc = {name.replace("_", " "): v["auroc_mean_uncertainty"] for name, v in sets.items()}
    mse = {name.replace("_", " "): v["auroc_reconstruction_mse"] for name, v in sets.items()}
    measured = (f"Measured on {n_in} held-out images: mean uncertainty separates them from other images with AUROC "
                + ", ".join(f"{n} {a:.2f}" for n, a in unc.items()) + " (0.5 = chance; reconstruction error as the "
                "score: " + ", ".join(f"{n} {a:.2f}" for n, a in mse.items()) + "). ")
    separated = [n for n, a in unc.items() if a >= useful]
    if separated:
        return measured + (f"A high percentile hints that an image is unlike the training images (as {', '.join(separated)} "
                           "were); it is not a detector.")
    return measured + (f"It scored below {useful} against every one of them, so a high or low percentile here says "
                       "nothing about whether an image is like the training images.")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True, help="an EdVAE export folder with its training_data.json")
    p.add_argument("--cifar", default=None, help="a CIFAR-10 .npz (key 'images') for the cifar10 set; omitted: skipped")
    p.add_argument("--num", type=int, default=1000, help="images per set (the held-out split is used up to this)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise sets")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--write-reference", action="store_true",
                   help=f"also write {UNCERTAINTY_REFERENCE_FILE} (training-image percentiles + the measured statement) into the tokenizer folder")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    folder = resolve_pretrained(args.tokenizer, ["config.json"])
    model = EdVAE.from_pretrained(args.tokenizer).eval()
    record = folder / TRAINING_DATA_FILE
    if not record.is_file():
        raise FileNotFoundError(f"'{folder}' has no {TRAINING_DATA_FILE}: the held-out images cannot be found")
    data = replace(DataConfig(**read_json(record)), num_workers=0)
    size = data.image_size

    # 1. In-distribution: the held-out split of the tokenizer's own training data; then the other sets.
    faces = _stack(build_dataset(data, "test"), args.num)
    generator = torch.Generator().manual_seed(args.seed)
    sets = {"upside_down": faces.flip(-2),
            "noisy": (faces + 0.3 * torch.randn(faces.shape, generator=generator)).clamp(0, 1),
            "uniform_noise": torch.rand(faces.shape, generator=generator)}
    if args.cifar:
        with np.load(args.cifar) as archive:
            cifar = archive["images"][: args.num]
        resize = Preprocess("generic", size)
        sets = {"cifar10": torch.stack([resize(image) for image in cifar]), **sets}

    # 2. Scores and AUROCs.
    base = per_image_scores(model, _batches(faces))
    result = {"tokenizer": str(args.tokenizer), "n_in_distribution": int(len(faces)), "codes": "argmax",
              "in_distribution": f"held-out split of {data.dataset}:{data.path} (test_fraction {data.test_fraction}, "
                                 f"split_seed {data.split_seed})",
              "mean_uncertainty_in_distribution": float(base["mean_uncertainty"].mean()), "sets": {}}
    for name, images in sets.items():
        scores = per_image_scores(model, _batches(images))
        result["sets"][name] = {
            "n": int(len(images)),
            "auroc_mean_uncertainty": auroc(base["mean_uncertainty"], scores["mean_uncertainty"]),
            "auroc_reconstruction_mse": auroc(base["mse"], scores["mse"]),
            "auroc_reconstruction_mse_clipped": auroc(base["mse_clipped"], scores["mse_clipped"]),
            "mean_uncertainty": float(scores["mean_uncertainty"].mean()),
        }
        logger.info("%s: AUROC mean uncertainty %.3f, reconstruction MSE %.3f", name,
                    result["sets"][name]["auroc_mean_uncertainty"], result["sets"][name]["auroc_reconstruction_mse"])
    write_json(Path(args.out), result)

    # 3. The reference the app reads: training-image percentiles and what the AUROCs say.
    if args.write_reference:
        quantiles = mean_uncertainty_quantiles(model, build_dataset(data, "train"))
        statement = reference_statement(len(faces), result["sets"])
        path = write_uncertainty_reference(folder, quantiles, statement, measured_in=str(args.out),
                                           training_images=f"train split of {data.dataset}:{data.path}")
        logger.info("wrote %s", path)
    return result


if __name__ == "__main__":
    from edvae_common.cli import run_cli

    run_cli(main)
