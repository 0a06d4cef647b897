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


def make_training_accelerator(run_dir: Any, mixed_precision: str, gradient_accumulation_steps: int, tracker: str,
                              seed: int):
    """The Accelerator every training script uses, with logging set up and seeds set (per process).

    One optimizer step per loop iteration, also across epoch ends (no forced sync at the end of
    the loader); trackers write under ``run_dir/logs``.
    """
    import logging
    from pathlib import Path

    from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration, set_seed

    run_dir = Path(run_dir)
    accelerator = make_accelerator(
        mixed_precision=mixed_precision,
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=gradient_accumulation_steps,
                                                                sync_with_dataloader=False),
        log_with=None if tracker == "none" else tracker,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    set_seed(seed, device_specific=True)
    return accelerator
