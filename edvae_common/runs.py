"""Run folders and crash-safe checkpoints, shared by every training script.

A run folder looks like::

    <output_dir>/
      config.yaml            resolved configuration of the run
      metrics.jsonl          one JSON line per logged step (train and eval)
      logs/                  TensorBoard (or other tracker) files
      images/                reconstruction / sample grids
      checkpoints/step_00001000/   accelerator.save_state() + COMPLETE marker
      <export>/              the final save_pretrained() folder

A checkpoint is written to a hidden temporary folder and renamed into place
only once every process has finished writing, with a ``COMPLETE`` marker
inside; a run killed half-way through a save leaves the previous checkpoints
untouched, and a half-written folder is never taken for "latest".
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Callable

from .io import atomic_write_text

CHECKPOINT_RE = re.compile(r"^step_(\d{8})$")
COMPLETE_MARKER = "COMPLETE"


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first, as (step, path)."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = CHECKPOINT_RE.match(child.name)
        if match and (child / COMPLETE_MARKER).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def resolve_resume(run_dir: str | Path, resume: str | None) -> Path | None:
    """Turn the ``resume`` setting into a checkpoint folder (or None to start fresh).

    ``latest`` picks the newest complete checkpoint of ``run_dir`` and starts
    fresh when there is none; any other value must be a checkpoint folder.
    """
    if resume is None or resume == "" or resume == "none":
        return None
    if resume == "latest":
        found = list_checkpoints(run_dir)
        return found[-1][1] if found else None
    path = Path(resume)
    if not (path / COMPLETE_MARKER).is_file():
        have = ", ".join(str(p) for _, p in list_checkpoints(run_dir)) or "none"
        raise FileNotFoundError(
            f"resume='{resume}' is not a complete checkpoint folder (no {COMPLETE_MARKER} marker). "
            f"Use resume=latest, or one of: {have}"
        )
    return path


def checkpoint_to_resume(run_dir: str | Path, resume: str | None) -> Path | None:
    """``resolve_resume``, refusing to start a fresh run in a folder that already holds a run's checkpoints."""
    from .config import ConfigError

    checkpoint = resolve_resume(run_dir, resume)
    existing = list_checkpoints(run_dir)
    if checkpoint is None and existing:
        raise ConfigError(f"output_dir '{run_dir}' already holds checkpoints of a run (latest: step {existing[-1][0]}). "
                          "Continue it with resume=latest, or pick another output_dir; nothing was changed.")
    return checkpoint


def save_checkpoint(accelerator: Any, run_dir: str | Path, step: int, total_limit: int | None) -> Path:
    """Save the full training state atomically; keep at most ``total_limit`` checkpoints.

    Must be called on every process (accelerate writes per-process RNG states).
    """
    root = checkpoint_root(run_dir)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp_step_*"):  # left by a run killed while saving
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / COMPLETE_MARKER).write_text(json.dumps({"step": step}) + "\n")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        if total_limit is not None and total_limit > 0:
            for _, old in list_checkpoints(run_dir)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def export_atomically(accelerator: Any, run_dir: str | Path, name: str, write: Callable[[Path], None]) -> Path:
    """Write a run's export folder ``run_dir/name`` whole or not at all; returns its path.

    On the main process, ``write(folder)`` fills a hidden temporary folder (one left by a killed
    export is cleared first), which then takes the place of any earlier export: the old one is
    moved aside, the new one renamed in, the old one deleted, so a crash leaves either folder
    complete. Call it on every process (it waits for all of them first).
    """
    run_dir = Path(run_dir)
    export, tmp, old = run_dir / name, run_dir / f".{name}.tmp", run_dir / f".{name}.old"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for stale in (tmp, old):
            if stale.exists():
                shutil.rmtree(stale)
        write(tmp)
        if export.exists():
            export.rename(old)
        tmp.rename(export)
        shutil.rmtree(old, ignore_errors=True)
    return export


class MetricsLog:
    """Append-only JSON-lines log of metrics, truncated back to a step on resume."""

    def __init__(self, path: str | Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        """Drop records newer than ``step`` (written by a run that died after its last checkpoint)."""
        if not self.enabled or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if (record := _parse(line)) is not None and record.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [r for line in self.path.read_text().splitlines() if (r := _parse(line)) is not None]


def _parse(line: str) -> dict | None:
    """One JSON record, or None for an empty or half-written line (a run killed mid-write)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None
