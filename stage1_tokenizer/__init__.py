"""Stage 1: the EdVAE image tokenizer.

    from stage1_tokenizer import EdVAE
    tok = EdVAE.from_pretrained("runs/stage1/cifar10/tokenizer")
    codes = tok.encode(images)     # (B, 3, H, W) floats in [0, 1] -> LongTensor (B, H/4, W/4)
    recon = tok.decode(codes)      # -> (B, 3, H, W) in [0, 1]
    out = tok.analyze(images)      # reconstruction, codes and evidential uncertainty u = K/S in one pass

Everything listed in ``__all__`` is the public API; other code (stage 2, the app) imports stage 1
only from here. The data and uncertainty names load their modules on first use (``import
stage1_tokenizer`` stays as light as the model).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import DATASETS, DataConfig, ModelConfig, Stage1Config, TrainConfig
from .loss import PAPER_BETA, LossTerms, dirichlet_kl_per_position, kl_dirichlet_uniform, stage1_loss
from .model import TRAINING_DATA_FILE, EdVAE, TokenizerAnalysis, TokenizerOutput
from .quantizers import QUANTIZERS, EdVAEQuantizer

# name -> submodule, imported when the name is first used
_LAZY = {
    "DataNotFoundError": "data", "Preprocess": "data", "build_dataset": "data", "held_out_split": "data",
    "IMAGE_EXTENSIONS": "data.sources", "detect_source": "data.sources",
    "EvalResult": "metrics", "evaluate_tokenizer": "metrics", "psnr_from_mse": "metrics", "perplexity": "metrics",
    "code_counts": "metrics", "codes_used": "metrics", "per_image_mse": "metrics",
    "UNCERTAINTY_REFERENCE_FILE": "uncertainty", "mean_uncertainty_quantiles": "uncertainty",
    "per_image_mean_uncertainty": "uncertainty", "per_image_scores": "uncertainty",
    "percentile_of": "uncertainty", "read_uncertainty_reference": "uncertainty",
    "write_uncertainty_reference": "uncertainty",
}
# public submodules: the quantizer comparison (stage2_prior.compare trains its tokenizers with its settings)
_SUBMODULES = ("compare",)

if TYPE_CHECKING:  # pragma: no cover
    from . import compare
    from .data import DataNotFoundError, Preprocess, build_dataset, held_out_split
    from .data.sources import IMAGE_EXTENSIONS, detect_source
    from .metrics import (EvalResult, code_counts, codes_used, evaluate_tokenizer, per_image_mse, perplexity,
                          psnr_from_mse)
    from .uncertainty import (UNCERTAINTY_REFERENCE_FILE, mean_uncertainty_quantiles, per_image_mean_uncertainty,
                              per_image_scores, percentile_of, read_uncertainty_reference,
                              write_uncertainty_reference)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))


__all__ = ["DATASETS", "PAPER_BETA", "QUANTIZERS", "TRAINING_DATA_FILE", "DataConfig", "EdVAE", "EdVAEQuantizer",
           "LossTerms", "ModelConfig", "Stage1Config", "TokenizerAnalysis", "TokenizerOutput", "TrainConfig",
           "dirichlet_kl_per_position", "kl_dirichlet_uniform", "stage1_loss", *_LAZY, *_SUBMODULES]
