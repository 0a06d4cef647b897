"""What the drivers over the stages (``stage2_prior.compare``, ``stage2_prior.build``) share.

A driver holds order, paths, skipping and reporting only; each stage is the project's own script,
run as a child process (``accelerate launch SCRIPT`` for the ones that train or encode in bulk,
``python -m MODULE`` for the others), so a fix in a stage reaches the drivers, the CLI and the
tests at once, and every stage starts with a fresh Accelerate state and its own precision.

Whether a stage is done is decided by the stage's own outputs (a tokenizer export with its final
metrics, a token manifest, a prior export, a ``samples.json``, an FID JSON): the stage scripts write
those last and atomically, and resume from their checkpoints when rerun. Each driver keeps one
record per output folder (:class:`Record`) with the settings that define its outputs, so a rerun
with other settings is refused with the differences named, not silently mixed in.
"""

from __future__ import annotations

import errno
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from edvae_common.config import ConfigError
from edvae_common.io import read_json, write_json

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class StageFailed(RuntimeError):
    """A stage's child process ended with a non-zero status (its log says why)."""


@dataclass
class Launcher:
    """How every stage's child process is started: processes (Accelerate's), CPU threads per process, log folder."""

    num_processes: int = 1
    threads: int | None = None          # CPU threads per process (None: Accelerate's default, 1 per process)
    log_dir: Path | None = None         # each stage's output goes to <log_dir>/<name>.log as well as the console
    quiet: bool = False                 # only the log file, not the console (tests)
    commands: list[str] = field(default_factory=list)  # every command run, in order (for the report / model card)
    heartbeat_s: float = 30.0           # how often a running stage's time so far is written to its times.json

    def _launch(self) -> list[str]:
        """``accelerate launch`` and its options: processes, threads, on CPU or the GPUs that are there."""
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1",
                  "--num_processes", str(self.num_processes), "--mixed_precision", "no", "--dynamo_backend", "no"]
        if self.num_processes > 1:
            launch.append("--multi_gpu")
        if self.threads:
            launch += ["--num_cpu_threads_per_process", str(self.threads)]
        return launch

    def accelerate(self, script: str, args: list[str]) -> list[str]:
        """``accelerate launch SCRIPT``: one of the project's stage scripts, e.g. ``stage1_tokenizer/train.py``."""
        return [*self._launch(), str(PROJECT_ROOT / script), *args]

    def accelerate_module(self, module: str, args: list[str]) -> list[str]:
        """``accelerate launch -m MODULE``: a stage written as a package module (relative imports), e.g.
        ``stage1_tokenizer.finetune_decoder`` or ``stage2_prior.sample``."""
        return [*self._launch(), "-m", module, *args]

    def module(self, module: str, args: list[str]) -> list[str]:
        """``python -m MODULE`` for a stage that runs in one process (FID, sweeps)."""
        return [sys.executable, "-m", module, *args]

    def run(self, name: str, command: list[str], times: Path | None = None, key: str | None = None) -> float:
        """Run one stage to its end; returns its wall time in seconds, raises :class:`StageFailed` otherwise.

        With ``times`` (a ``times.json``) the stage's wall time is added to its entry there (``key``, default
        ``name``), also while it runs (every ``heartbeat_s``) and when it fails, so a killed driver loses at
        most one heartbeat's time and a stage trained across several runs reports them all.
        """
        with StageClock(times, key or name, self.heartbeat_s):
            return self._run(name, command)

    def _run(self, name: str, command: list[str]) -> float:
        env = dict(os.environ)
        if self.threads:
            env.setdefault("OMP_NUM_THREADS", str(self.threads))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
        shown = shlex.join(_display(command))
        self.commands.append(shown)
        print(f"[{name}] {shown}", flush=True)
        log_path = None
        tic = time.perf_counter()
        if self.log_dir is None:
            status = subprocess.run(command, env=env).returncode
        else:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log_path = self.log_dir / f"{name}.log"
            with open(log_path, "a", encoding="utf-8") as log:
                log.write(f"\n$ {shown}\n")
                log.flush()
                with subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, errors="replace") as child:
                    for line in _lines(child.stdout):
                        log.write(line)
                        if not self.quiet:
                            sys.stdout.write(line)
                    status = child.wait()
        seconds = time.perf_counter() - tic
        if status != 0:
            where = f"; its output is in {log_path}" if log_path else ""
            tail = _tail(log_path) if log_path else ""
            raise StageFailed(f"stage '{name}' failed (exit status {status}){where}. Fix the cause and rerun the same "
                              f"command: finished stages are kept and this one resumes.{tail}")
        return seconds


def _lines(stream: Any) -> Iterator[str]:
    for line in iter(stream.readline, ""):
        yield line


def _tail(path: Path | None, lines: int = 8) -> str:
    if path is None or not path.is_file():
        return ""
    last = path.read_text(errors="replace").splitlines()[-lines:]
    return "\nLast lines:\n  " + "\n  ".join(last)


def shown(command: list[str]) -> str:
    """The command line as a user would type it (what :meth:`Launcher.run` prints and records)."""
    return shlex.join(_display(command))


def _display(command: list[str]) -> list[str]:
    """The command as a user would type it: ``accelerate launch``, ``python``, paths relative to the project."""
    out = list(command)
    if out[:3] == [sys.executable, "-m", "accelerate.commands.launch"]:
        out = ["accelerate", "launch", *out[3:]]
    elif out[:1] == [sys.executable]:
        out = ["python", *out[1:]]
    return [_relative(a) for a in out]


def _relative(arg: str) -> str:
    try:
        return str(Path(arg).relative_to(PROJECT_ROOT)) if arg.startswith(str(PROJECT_ROOT)) else arg
    except ValueError:
        return arg


# ---------------------------------------------------------------------------------------------- records
def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Human-readable differences between two nested settings dicts: ``key: old -> new``.

    A key that is absent and a key set to None mean the same (not set): a folder made before a config key
    existed still matches a run that leaves the new key at its default of None.
    """
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, name + ".")
        elif a != b:
            out.append(f"{name}: {'<unset>' if key not in old else repr(a)} -> {'<unset>' if key not in new else repr(b)}")
    return out


@dataclass
class Record:
    """``<folder>/<name>``: what made this output folder (kind and the settings that define its outputs)."""

    folder: Path
    name: str
    kind: str

    @property
    def path(self) -> Path:
        return Path(self.folder) / self.name

    def claim(self, settings: dict, fix: str) -> dict:
        """Write the record of a new folder, or check that an existing one was made with ``settings``.

        Refuses a folder made by another kind of run, or with other settings (each difference named,
        then ``fix``: what the user can do instead). Returns the record.
        """
        path = self.path
        if path.is_file():
            old = read_json(path)
            if old.get("kind") != self.kind:
                raise ConfigError(f"'{self.folder}' holds a {old.get('kind', 'different')} run, not a {self.kind} run: "
                                  "pick another output folder; nothing was changed.")
            diff = differences(old.get("settings", {}), settings)
            if diff:
                raise ConfigError(f"'{self.folder}' was made with other settings ({'; '.join(diff)}). {fix}")
            return old
        if Path(self.folder).is_dir() and any(p.name not in ("logs", ".lock") for p in Path(self.folder).iterdir()):
            raise ConfigError(f"'{self.folder}' already holds files that no {self.kind} run wrote (no {self.name}): "
                              "pick another output folder; nothing was changed.")
        record = {"kind": self.kind, "settings": settings, "created": time.strftime("%Y-%m-%d %H:%M:%S")}
        write_json(path, record)
        return record

    def rewrite(self, settings: dict) -> dict:
        """Replace the record's settings (after the driver removed the outputs the old settings made)."""
        old = read_json(self.path) if self.path.is_file() else {}
        record = {"kind": self.kind, "settings": settings, "created": old.get("created", time.strftime("%Y-%m-%d %H:%M:%S")),
                  "changed": time.strftime("%Y-%m-%d %H:%M:%S")}
        write_json(self.path, record)
        return record


# ---------------------------------------------------------------------------------------------- locks
class FolderLock:
    """An exclusive, non-blocking lock on a folder (``flock`` on ``<folder>/.lock``): two drivers sharing an
    output folder never work on the same run at once; the lock dies with its process (kill -9 included)."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / ".lock"
        self._fd: int | None = None

    def acquire(self) -> bool:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return False
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def held_elsewhere(self) -> str | None:
        """The pid of another holder of the lock now, or None (tested by taking the lock and dropping it at
        once; nothing is created when no lock file exists)."""
        import fcntl

        if not self.path.is_file():
            return None
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return self.holder()
            raise
        finally:
            os.close(fd)   # closing drops a lock taken here
        return None

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


class StageClock:
    """Adds a running stage's wall time to its entry of a ``times.json``: every ``every`` seconds while it
    runs (a background thread) and once more when it ends, however it ends; nothing with no path."""

    def __init__(self, path: Path | None, name: str, every: float):
        import threading

        self.path, self.name, self.every = path, name, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _write(self) -> None:
        times = read_json(self.path) if self.path.is_file() else {}
        times[self.name] = round(self.base + time.perf_counter() - self.tic, 1)
        write_json(self.path, times)

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            self._write()

    def __enter__(self) -> "StageClock":
        if self.path is not None:
            self.base = (read_json(self.path) if self.path.is_file() else {}).get(self.name, 0.0)
            self.tic = time.perf_counter()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.path is not None:
            self._stop.set()
            self._thread.join()
            self._write()
