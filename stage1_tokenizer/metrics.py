"""The tokenizer's metrics: codebook usage and reconstruction error, always on hard codes.

Per batch: ``code_counts``, ``perplexity``, ``codes_used``, ``per_image_mse``, ``psnr_from_mse``.
Over a whole split: ``evaluate_tokenizer`` (MSE, PSNR, perplexities, codes used, uncertainty), what
training's periodic evaluation and ``python -m stage1_tokenizer.evaluate`` report; every number
comes from ``EdVAE.analyze`` (reconstruction, codes, uncertainty in one pass), the call the app and
the stage-2 pipeline make too.

Two reconstruction errors, both on the [0, 1] scale:

- ``mse``: of the decoder output as it is, unclipped: the training loss's MSE and the number the
  authors' release reports;
- ``mse_clipped``: of the reconstruction clipped to [0, 1], the image a viewer shows (``decode``
  returns it). ``psnr`` is computed from it.

``evaluate_tokenizer`` runs under Accelerate: each process evaluates its shard, ``gather_for_metrics``
collects per-image values and codes (dropping the duplicates DDP pads the last batch with), so the
numbers are the same on 1 or N processes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch

from edvae_common.io import save_figure

PERPLEXITY_BATCH = 128  # the paper's metric: perplexity per batch of 128 test images, averaged


def code_counts(indices: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """How often each code occurs in ``indices`` (any shape): LongTensor (K,) on the same device.

    A scatter-add rather than ``torch.bincount``, which synchronises a GPU to size its output.
    """
    flat = indices.reshape(-1).long()
    counts = torch.zeros(codebook_size, dtype=torch.long, device=flat.device)
    return counts.scatter_add_(0, flat, torch.ones_like(flat))


def perplexity(counts: torch.Tensor) -> float:
    """exp(entropy) of the empirical code distribution (1 = one code, K = uniform use)."""
    counts = counts.double()
    total = counts.sum()
    if total <= 0:
        return float("nan")
    p = counts[counts > 0] / total
    return math.exp(float(-(p * p.log()).sum()))


def codes_used(counts: torch.Tensor) -> int:
    """Number of codes that occur at least once."""
    return int((counts > 0).sum())


def psnr_from_mse(mse: float, peak: float = 1.0) -> float:
    """PSNR in dB of images on a [0, peak] scale."""
    return float("inf") if mse <= 0 else 10.0 * math.log10(peak**2 / mse)


def per_image_mse(reconstructions: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image, (B,), in float32 (``images`` are moved to the reconstructions' device)."""
    target = images.to(reconstructions.device).float()
    return (reconstructions.float() - target).pow(2).flatten(1).mean(1)


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

    ``psnr`` is the mean over images of the PSNR of the clipped reconstruction, ``psnr_of_mean_mse``
    the PSNR of ``mse_clipped``; ``mse`` is the unclipped decoder output's error.

    To evaluate part of a split, pass a loader over a ``Subset``: the loader is
    always run to its end (Accelerate tracks the active loader, and one left
    half-iterated would confuse its end-of-data bookkeeping).
    """
    was_training = model.training
    model.eval()
    per_image, per_image_clipped, per_image_unc, all_codes = [], [], [], []
    originals = reconstructions = None
    for images in loader:
        with accelerator.autocast():
            out = model.analyze(images, codes=codes)
        mse, mse_clipped = out.mse, per_image_mse(out.reconstruction, images)
        unc = out.uncertainty.flatten(1).mean(1) if out.uncertainty is not None else torch.full_like(mse, float("nan"))
        mse, mse_clipped, unc, idx = accelerator.gather_for_metrics((mse, mse_clipped, unc, out.codes))
        per_image.append(mse.cpu())
        per_image_clipped.append(mse_clipped.cpu())
        per_image_unc.append(unc.cpu())
        all_codes.append(idx.cpu())
        if originals is None:
            originals = images[:num_grid_images].float().cpu()
            reconstructions = out.reconstruction[:num_grid_images].cpu()
    model.train(was_training)
    if not per_image:
        raise ValueError("the evaluation split is empty")
    mse, mse_clipped = torch.cat(per_image), torch.cat(per_image_clipped)
    unc = torch.cat(per_image_unc)
    codes_all = torch.cat(all_codes)
    k = model.codebook_size
    counts = code_counts(codes_all, k)
    # Like the release's test loader (drop_last=True): full batches only, unless there is none.
    n_full = max(len(codes_all) // PERPLEXITY_BATCH, 1)
    batch_ppl = [perplexity(code_counts(codes_all[i * PERPLEXITY_BATCH : (i + 1) * PERPLEXITY_BATCH], k))
                 for i in range(n_full)]
    mean_clipped = float(mse_clipped.mean())
    metrics = {
        "mse": float(mse.mean()),                      # decoder output as it is (the release's, training's MSE)
        "mse_clipped": mean_clipped,                   # reconstruction clipped to [0, 1] (what a viewer shows)
        "psnr": float(torch.tensor([psnr_from_mse(max(float(m), 1e-10)) for m in mse_clipped]).mean()),
        "psnr_of_mean_mse": psnr_from_mse(mean_clipped),
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
