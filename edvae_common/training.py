"""Training-loop pieces both stages share: the step counter, resumable batches, the resume check."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator

from .config import ConfigError, flat_hparams, load_config

logger = logging.getLogger("edvae.training")


class TrainState:
    """The step counter, saved and restored with every checkpoint (``accelerator.register_for_checkpointing``)."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


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
