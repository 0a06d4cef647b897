"""Evaluation of a tokenizer on a split: MSE, PSNR, perplexities, codes used, uncertainty.

Runs under Accelerate: each process evaluates its shard, ``gather_for_metrics``
collects per-image values and codes (dropping the duplicates DDP pads the last
batch with), so the numbers are the same on 1 or N processes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch

from edvae_common.io import save_figure

from .metrics import code_counts, codes_used, perplexity, psnr_from_mse

PERPLEXITY_BATCH = 128  # the paper's metric: perplexity per batch of 128 test images, averaged


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
            out = model(images, codes=codes)
        x = images.float() - 0.5
        mse = (out.recon.float() - x).pow(2).flatten(1).mean(1)
        unc = out.uncertainty.flatten(1).mean(1) if out.uncertainty is not None else torch.full_like(mse, float("nan"))
        mse, unc, idx = accelerator.gather_for_metrics((mse, unc, out.indices))
        per_image_mse.append(mse.cpu())
        per_image_unc.append(unc.cpu())
        all_codes.append(idx.cpu())
        if originals is None:
            originals = images[:num_grid_images].float().cpu()
            reconstructions = (out.recon[:num_grid_images].float() + 0.5).clamp(0, 1).cpu()
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
