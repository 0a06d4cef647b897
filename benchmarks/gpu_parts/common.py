"""What the GPU check's parts share: the Recorder a part reports through, subprocess helpers, config helpers.

Only the standard library at import time: the scheduler (gpu_check.py) imports this without torch.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
STAGE1_CONFIGS = {"celeba": "configs/stage1/celeba.yaml", "cifar10": "configs/stage1/cifar10.yaml"}


class Recorder:
    """What a part reports, appended line by line to its JSON-lines file (a killed part keeps what it wrote)."""

    def __init__(self, path: Path, deadline: float):
        self.path, self.deadline = path, deadline
        self.children: list[subprocess.Popen] = []

    def write(self, **entry: Any) -> None:
        line = json.dumps(entry, default=str)
        with open(self.path, "a") as f:
            f.write(line + "\n")
        print(line[:400], flush=True)  # into the part's log (gpu_check.log)

    def row(self, **fields: Any) -> None:
        self.write(row=fields)

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.write(check={"name": name, "ok": bool(ok), "detail": detail})

    def command(self, cmd: list[str]) -> None:
        self.write(command=shlex.join(cmd))

    def summary(self, **fields: Any) -> None:
        self.write(summary=fields)

    def skip(self, reason: str) -> None:
        self.write(skipped=reason)

    def left(self) -> float:
        return self.deadline - time.time()

    def spawn(self, cmd: list[str], log: Path) -> subprocess.Popen:
        """Start cmd in its own process group (so it can be SIGKILLed whole), output to log."""
        self.command(cmd)
        with open(log, "w") as handle:
            proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=handle, stderr=subprocess.STDOUT, env=child_env(),
                                    start_new_session=True)
        self.children.append(proc)
        return proc

    def wait(self, proc: subprocess.Popen, log: Path) -> int:
        """Wait for proc until this part's deadline; past it, kill its group and raise TimeoutError."""
        while proc.poll() is None:
            if time.time() > self.deadline:
                kill_group(proc)
                raise TimeoutError(f"killed after running out of this part's time; log tail:\n{tail(log)}")
            time.sleep(0.1)
        return proc.returncode

    def kill_children(self) -> None:
        for proc in self.children:
            if proc.poll() is None:
                kill_group(proc)


def child_env() -> dict:
    """The environment of the CLI subprocesses: this checkout importable (the device has it uninstalled), offline."""
    path = os.pathsep.join([str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def reset_peak(device: Any) -> None:
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def mib(peak: tuple[int, str]) -> dict:
    """bench_stage1.peak_memory's (bytes, kind) as row fields."""
    return {"peak_mib": peak[0] / 2**20, "memory": "allocated" if peak[1] == "cuda_max_allocated" else "process RSS"}


def stage1_config(name: str, plan: Any, *extra: str):
    """The Stage1Config of configs/stage1/<name>.yaml with the plan's overrides (quick: narrow, small batch)."""
    from edvae_common.config import load_config
    from stage1_tokenizer.config import Stage1Config

    return load_config(Stage1Config, REPO_ROOT / STAGE1_CONFIGS[name], [*plan.s1_overrides, *extra])


def train_overrides(run: Path, data: Path, plan: Any, *extra: str) -> list[str]:
    """train.py overrides shared by the CLI part and the training part: bf16 + channels-last, quiet, no tracker."""
    return [f"output_dir={run}", "data.dataset=npz", f"data.path={data}", "data.hflip=true",
            "train.mixed_precision=bf16", "train.channels_last=true", "train.tracker=none",
            "train.progress_bar=false", "train.eval_every=1000000", "train.image_every=1000000",
            *plan.s1_overrides, *extra]
