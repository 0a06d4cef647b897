"""Accelerator construction shared by every training and bulk-inference script."""

from __future__ import annotations

from typing import Any

import torch


def has_accelerator() -> bool:
    """True when torch sees a GPU (or another accelerator device)."""
    if hasattr(torch, "accelerator"):
        return torch.accelerator.is_available()
    return torch.cuda.is_available()  # pragma: no cover - older torch


def make_accelerator(**kwargs: Any):
    """An ``accelerate.Accelerator`` that also works for multi-process runs on CPU-only machines.

    Without a GPU, Accelerate only sets up a multi-process (gloo) group when
    asked for the CPU explicitly, so ``cpu=True`` is passed there; launching
    ``accelerate launch --multi_gpu --num_processes N`` then gives N CPU workers.
    """
    from accelerate import Accelerator

    kwargs.setdefault("cpu", not has_accelerator())
    return Accelerator(**kwargs)
