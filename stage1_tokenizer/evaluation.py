"""Evaluation of a tokenizer on a split: MSE, PSNR, perplexities, codes used, uncertainty.

Every number comes from ``EdVAE.analyze`` (reconstruction, codes, uncertainty in one pass), the
call the app and the stage-2 pipeline make too. ``mean_uncertainty_quantiles`` gives the reference
the app places an image's mean uncertainty against (``uncertainty_reference.json``).

Runs under Accelerate: each process evaluates its shard, ``gather_for_metrics``
collects per-image values and codes (dropping the duplicates DDP pads the last
batch with), so the numbers are the same on 1 or N processes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from edvae_common.io import save_figure

from .metrics import code_counts, codes_used, perplexity, psnr_from_mse

PERPLEXITY_BATCH = 128  # the paper's metric: perplexity per batch of 128 test images, averaged
UNCERTAINTY_REFERENCE_FILE = "uncertainty_reference.json"  # optional, beside a tokenizer's weights


@dataclass
class EvalResult:
    metrics: dict[str, Any]
    counts: torch.Tensor                 # (K,) code usage over the split
    originals: Optional[torch.Tensor]    # a few test images, for a grid
    reconstructions: Optional[torch.Tensor]


@torch.no_grad()
def evaluate_tokenizer(model: Any, loader: Any, accelerator: Any, codes: str = "argmax",
                       num_grid_images: int = 32) -> EvalResult:
    """Evaluate an (unwrapped) EdVAE on all of ``loader``; every process gets the same result.

    To evaluate part of a split, pass a loader over a ``Subset``: the loader is
    always run to its end (Accelerate tracks the active loader, and one left
    half-iterated would confuse its end-of-data bookkeeping).
    """
    was_training = model.training
    model.eval()
    per_image_mse, per_image_unc, all_codes = [], [], []
    originals = reconstructions = None
    for images in loader:
        with accelerator.autocast():
            out = model.analyze(images, codes=codes)
        mse = out.mse
        unc = out.uncertainty.flatten(1).mean(1) if out.uncertainty is not None else torch.full_like(mse, float("nan"))
        mse, unc, idx = accelerator.gather_for_metrics((mse, unc, out.codes))
        per_image_mse.append(mse.cpu())
        per_image_unc.append(unc.cpu())
        all_codes.append(idx.cpu())
        if originals is None:
            originals = images[:num_grid_images].float().cpu()
            reconstructions = out.reconstruction[:num_grid_images].cpu()
    model.train(was_training)
    if not per_image_mse:
        raise ValueError("the evaluation split is empty")
    mse = torch.cat(per_image_mse)
    unc = torch.cat(per_image_unc)
    codes_all = torch.cat(all_codes)
    k = model.codebook_size
    counts = code_counts(codes_all, k)
    # Like the release's test loader (drop_last=True): full batches only, unless there is none.
    n_full = max(len(codes_all) // PERPLEXITY_BATCH, 1)
    batch_ppl = [perplexity(code_counts(codes_all[i * PERPLEXITY_BATCH : (i + 1) * PERPLEXITY_BATCH], k))
                 for i in range(n_full)]
    mean_mse = float(mse.mean())
    metrics = {
        "mse": mean_mse,
        "psnr": float(torch.tensor([psnr_from_mse(max(float(m), 1e-10)) for m in mse]).mean()),
        "psnr_of_mean_mse": psnr_from_mse(mean_mse),
        "perplexity_batch": float(sum(batch_ppl) / len(batch_ppl)),
        "perplexity_split": perplexity(counts),
        "codes_used": codes_used(counts),
        "codebook_size": k,
        "mean_uncertainty": float(unc.mean()) if not math.isnan(float(unc.mean())) else None,
        "n_images": int(len(mse)),
        "codes": codes,
        "token_grid": list(codes_all.shape[1:]),
    }
    return EvalResult(metrics, counts, originals, reconstructions)


def save_usage_histogram(counts: torch.Tensor, path: str, title: str = "codebook usage") -> None:
    """Bar plot of code usage, codes sorted from most to least used."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sorted_counts = torch.sort(counts.double(), descending=True).values
    freq = (sorted_counts / sorted_counts.sum()).numpy()
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.bar(range(len(freq)), freq, width=1.0)
    ax.set_xlabel("code rank (most used first)")
    ax.set_ylabel("fraction of positions")
    used = int((counts > 0).sum())
    ax.set_title(f"{title}: {used}/{len(counts)} codes used, perplexity {perplexity(counts):.1f}")
    ax.set_xlim(-0.5, len(freq) - 0.5)
    fig.tight_layout()
    save_figure(fig, path)


# ---------------------------------------------------------------------------- mean-uncertainty reference
@torch.no_grad()
def per_image_mean_uncertainty(model: Any, images: Dataset | Iterable[torch.Tensor], batch_size: int = 100) -> torch.Tensor:
    """Mean evidential uncertainty u = K/S over each image's token grid (argmax codes): a float64 tensor (N,).

    ``images`` is a dataset of (3, H, W) tensors in [0, 1] (e.g. ``stage1_tokenizer.data.build_dataset``)
    or an iterable of (B, 3, H, W) batches.
    """
    if model.config.quantizer != "edvae":
        raise ValueError(f"only the EdVAE quantizer has an evidential uncertainty; this tokenizer uses "
                         f"'{model.config.quantizer}'")
    batches = DataLoader(images, batch_size=batch_size, shuffle=False) if isinstance(images, Dataset) else images
    means = [model.analyze(batch.float()).uncertainty.flatten(1).mean(1).double().cpu() for batch in batches]
    if not means:
        raise ValueError("no images to compute the mean uncertainty of")
    return torch.cat(means)


def mean_uncertainty_quantiles(model: Any, images: Dataset | Iterable[torch.Tensor], batch_size: int = 100) -> list[float]:
    """The 0th, 1st, ..., 100th percentiles (101 floats) of the per-image mean uncertainty over ``images``.

    Computed over a tokenizer's training images, they are the ``mean_uncertainty_quantiles`` of
    ``uncertainty_reference.json`` (see ``write_uncertainty_reference``).
    """
    scores = per_image_mean_uncertainty(model, images, batch_size).numpy()
    return [float(q) for q in np.percentile(scores, np.arange(101))]


def check_uncertainty_reference(reference: Any, where: str = "the uncertainty reference") -> dict:
    """Validate ``{"mean_uncertainty_quantiles": [101 non-decreasing floats], "statement": str, ...}``."""
    if not isinstance(reference, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(reference).__name__}")
    q = reference.get("mean_uncertainty_quantiles")
    if not isinstance(q, list) or len(q) != 101 or not all(isinstance(v, (int, float)) for v in q):
        raise ValueError(f"{where}: 'mean_uncertainty_quantiles' must be a list of 101 numbers (0..100th percentile)")
    if any(b < a for a, b in zip(q, q[1:])):
        raise ValueError(f"{where}: 'mean_uncertainty_quantiles' must be non-decreasing")
    statement = reference.get("statement")
    if statement is not None and (not isinstance(statement, str) or not statement.strip()):
        raise ValueError(f"{where}: 'statement' must be a non-empty sentence")
    return reference


def write_uncertainty_reference(folder: str | Path, quantiles: list[float], statement: str, **extra: Any) -> Path:
    """Write ``uncertainty_reference.json`` into a tokenizer folder (checked first; extra keys are kept)."""
    from edvae_common.io import write_json

    reference = check_uncertainty_reference({"mean_uncertainty_quantiles": [float(v) for v in quantiles],
                                             "statement": statement, **extra})
    path = Path(folder) / UNCERTAINTY_REFERENCE_FILE
    write_json(path, reference)
    return path


def read_uncertainty_reference(folder: str | Path) -> Optional[dict]:
    """The tokenizer folder's ``uncertainty_reference.json``, checked, or None when there is none."""
    from edvae_common.io import read_json

    path = Path(folder) / UNCERTAINTY_REFERENCE_FILE
    if not path.is_file():
        return None
    try:
        reference = read_json(path)
    except ValueError as err:  # json.JSONDecodeError
        raise ValueError(f"'{path}' is not valid JSON: {err}") from err
    return check_uncertainty_reference(reference, f"'{path}'")


def percentile_of(value: float, quantiles: list[float]) -> float:
    """Where ``value`` falls among the images the 101 quantiles describe, in percent, in [0, 100]."""
    q = np.asarray(quantiles, np.float64)
    if q.shape != (101,):
        raise ValueError(f"expected 101 quantiles (0..100th percentile), got {q.shape[0] if q.ndim else 0}")
    return float(np.interp(value, q, np.arange(101.0), left=0.0, right=100.0))
