"""Training-loop pieces both stages share: the step counter, the micro-batch size, resumable shuffling and
batches, and opening a run folder (fresh, or resumed with its settings checked)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from torch.utils.data import Sampler

from .config import ConfigError, flat_hparams, load_config, save_yaml
from .runs import MetricsLog, checkpoint_to_resume

logger = logging.getLogger("edvae.training")


def warmup_cosine_lr(step: int, lr: float, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """Linear warmup from 0 to ``lr`` over ``warmup_steps``, then cosine to ``lr * min_lr_ratio`` at ``max_steps``.

    A pure function of the step, so resumed runs match. The stage-2 prior and the stage-1 decoder
    fine-tuning use it (stage-1 training follows the paper's own schedules, stage1_tokenizer/schedules.py).
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


class TrainState:
    """The step counter, saved and restored with every checkpoint (``accelerator.register_for_checkpointing``)."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


def micro_batch_size(batch_size: int, processes: int, accumulation_steps: int, available: int,
                     source: str = "the training split", unit: str = "images", key: str = "train.batch_size") -> int:
    """The per-process micro-batch of a global batch (setting ``key``), checked.

    The global batch must split evenly over processes x accumulation steps, and the training set
    (``available`` items of ``source``) must hold at least one global batch.
    """
    per_step = processes * accumulation_steps
    if batch_size % per_step:
        raise ConfigError(f"invalid value for '{key}': {batch_size} is not divisible by "
                          f"processes x gradient_accumulation_steps = {processes} x {accumulation_steps}")
    if available < batch_size:
        raise ConfigError(f"{key}={batch_size} is larger than {source} ({available} {unit})")
    return batch_size // per_step


class EpochShuffleSampler(Sampler[int]):
    """Shuffles ``n`` indices with a generator seeded by ``seed + epoch``.

    Call ``set_epoch(e)`` before iterating; together with skipping the batches a
    run already consumed, a resumed run sees exactly the batches an
    uninterrupted one would.
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


def infinite_batches(loader: Any, sampler: Any, start_batch: int) -> Iterator[Any]:
    """Yield batches forever, starting ``start_batch`` micro-batches into the seeded epoch sequence.

    ``sampler`` has ``set_epoch`` (e.g. ``EpochShuffleSampler``): epoch e's order is a
    function of (seed, e), so a resumed run skips exactly the batches it had seen.
    """
    from accelerate import skip_first_batches

    epoch, skip = divmod(start_batch, len(loader))
    while True:
        loader.set_epoch(epoch)
        sampler.set_epoch(epoch)
        yield from (skip_first_batches(loader, skip) if skip else loader)
        epoch, skip = epoch + 1, 0


def check_resumed_config(saved_path: Path, cfg: Any, frozen: tuple[str, ...] = ("model.",)) -> None:
    """On resume, refuse changed settings that start with any of ``frozen``; log other changed settings.

    A resumed run equals an uninterrupted one only with unchanged settings;
    changing ``train.max_steps`` to extend a run is the common, harmless case.
    """
    if not saved_path.is_file():
        return
    saved = flat_hparams(load_config(type(cfg), saved_path))
    now = flat_hparams(cfg)
    changed = {k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v and k != "resume"}
    refused = sorted(k for k in changed if k.startswith(frozen))
    if refused:
        raise ConfigError(f"cannot resume the run in '{saved_path.parent}' with these settings changed: "
                          + ", ".join(f"{k}: {changed[k][0]} -> {changed[k][1]}" for k in refused)
                          + ". Resume with the saved values, or start a new output_dir.")
    if changed:
        logger.warning("resuming with settings that differ from %s: %s", saved_path,
                       ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in sorted(changed.items())))


def open_run(accelerator: Any, run_dir: Path, cfg: Any, state: TrainState, frozen: tuple[str, ...] = ("model.",),
             before_resume: Optional[Callable[[], None]] = None) -> MetricsLog:
    """Resume the run in ``run_dir`` (``cfg.resume``) or start it fresh; return its metrics log.

    A fresh start refuses a folder that already holds a run's checkpoints; a resume refuses changed
    ``frozen`` settings (``check_resumed_config``), runs ``before_resume`` (further checks of the
    caller's own), then restores every registered state (``state.step`` included). The main process
    then writes ``config.yaml`` and drops the ``metrics.jsonl`` lines newer than the resumed step.
    """
    run_dir = Path(run_dir)
    checkpoint = checkpoint_to_resume(run_dir, cfg.resume)
    if checkpoint is not None:
        check_resumed_config(run_dir / "config.yaml", cfg, frozen)
        if before_resume is not None:
            before_resume()
        accelerator.load_state(str(checkpoint))
        logger.info("resumed from %s at step %d", checkpoint, state.step)
    elif cfg.resume == "latest":
        logger.info("resume=latest: no checkpoint in %s yet, starting fresh", run_dir)
    log = MetricsLog(run_dir / "metrics.jsonl", enabled=accelerator.is_main_process)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, run_dir / "config.yaml")
        log.truncate_after(state.step)
    return log
