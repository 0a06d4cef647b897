"""The app as a child process: ``python -m app ...`` on a free local port, used once it answers, stopped cleanly.

For whatever serves the app for a while and talks to it over HTTP: the tests (HTTP client and headless
browser), the load benchmark (``benchmarks/bench_app.py``) and the build tests.

    with AppProcess(["--tokenizer", tok, "--prior", prior], log=Path("server.log")) as app:
        gradio_client.Client(app.url)...
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppProcess:
    """``python -m app --port PORT ARGS`` in a subprocess; ``url`` answers once the constructor returns.

    ``env`` adds to (or, with None values, removes from) the environment, on top of offline Hub access, no
    Gradio analytics and unbuffered output. The app's output goes to ``log``; a start that exits or does
    not answer within ``timeout`` seconds raises with the end of that log.
    """

    def __init__(self, args: list[str], log: Path, *, env: dict[str, str | None] | None = None,
                 timeout: float = 300.0):
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = Path(log)
        environ = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1",
                   "PYTHONPATH": str(ROOT)}
        for key, value in (env or {}).items():
            if value is None:
                environ.pop(key, None)
            else:
                environ[key] = value
        self.command = [sys.executable, "-m", "app", "--port", str(self.port), *args]
        with open(self.log, "w") as out:   # the child keeps its own handle
            self.proc = subprocess.Popen(self.command, cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT)
        self._wait(timeout)

    def _wait(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the app exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:   # not listening yet (or an HTTP error while it starts)
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the app did not answer within {timeout:.0f} s:\n{self.output()[-3000:]}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 30 s; nothing when it has already exited."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> "AppProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
