"""The evidential uncertainty u = K/S per image, and the reference an image's value is placed against.

``per_image_scores`` gives each image's mean uncertainty over its token grid (argmax codes, eval mode,
from ``EdVAE.analyze``) and its reconstruction errors; ``mean_uncertainty_quantiles`` the 101
percentiles of the mean uncertainty over a set of images, which a tokenizer folder may carry as
``uncertainty_reference.json`` (``write_uncertainty_reference`` / ``read_uncertainty_reference``), and
``percentile_of`` places a value among them. ``stage1_tokenizer.ood`` measures what the score is worth
and writes the reference; the app shows an upload's percentile beside its statement.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from edvae_common.io import read_json, write_json

from .metrics import per_image_mse

UNCERTAINTY_REFERENCE_FILE = "uncertainty_reference.json"  # optional, beside a tokenizer's weights


@torch.no_grad()
def per_image_scores(model: Any, images: Dataset | Iterable[torch.Tensor], batch_size: int = 100) -> dict[str, np.ndarray]:
    """Per image: mean evidential uncertainty, reconstruction MSE (decoder output as it is) and the MSE of
    the reconstruction clipped to [0, 1]: float64 arrays (N,) under ``mean_uncertainty``, ``mse`` and
    ``mse_clipped``, from ``EdVAE.analyze`` (argmax codes, eval mode).

    ``images`` is a dataset of (3, H, W) tensors in [0, 1] (e.g. ``stage1_tokenizer.build_dataset``)
    or an iterable of (B, 3, H, W) batches.
    """
    if model.config.quantizer != "edvae":
        raise ValueError(f"only the EdVAE quantizer has an evidential uncertainty; this tokenizer uses "
                         f"'{model.config.quantizer}'")
    batches = DataLoader(images, batch_size=batch_size, shuffle=False) if isinstance(images, Dataset) else images
    unc, mse, clipped = [], [], []
    for batch in batches:
        batch = batch.float()
        out = model.analyze(batch)
        unc.append(out.uncertainty.flatten(1).double().mean(1).cpu())
        mse.append(out.mse.double().cpu())
        clipped.append(per_image_mse(out.reconstruction, batch).double().cpu())
    if not unc:
        raise ValueError("no images to score")
    return {"mean_uncertainty": torch.cat(unc).numpy(), "mse": torch.cat(mse).numpy(),
            "mse_clipped": torch.cat(clipped).numpy()}


def per_image_mean_uncertainty(model: Any, images: Dataset | Iterable[torch.Tensor], batch_size: int = 100) -> torch.Tensor:
    """Mean evidential uncertainty u = K/S over each image's token grid (argmax codes): a float64 tensor (N,).

    ``per_image_scores``'s ``mean_uncertainty``.
    """
    return torch.from_numpy(per_image_scores(model, images, batch_size)["mean_uncertainty"])


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
    reference = check_uncertainty_reference({"mean_uncertainty_quantiles": [float(v) for v in quantiles],
                                             "statement": statement, **extra})
    path = Path(folder) / UNCERTAINTY_REFERENCE_FILE
    write_json(path, reference)
    return path


def read_uncertainty_reference(folder: str | Path) -> Optional[dict]:
    """The tokenizer folder's ``uncertainty_reference.json``, checked, or None when there is none."""
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
