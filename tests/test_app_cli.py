"""Mistakes on the command line of ``python -m app``: one line, exit status 2, before a model loads or a port binds."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

import app.registry
from app.__main__ import main
from app.access import AUTH_ENV, AUTH_FILE_ENV, is_loopback
from app.process import free_port
from tests.pipeline_helpers import ROOT

HAS_CUDA = __import__("torch").cuda.is_available()
HAS_MPS = __import__("torch").backends.mps.is_available()


@pytest.fixture
def nothing_may_load(monkeypatch):
    """main() must stop before it loads a model or starts a server: either would fail the test."""
    import gradio as gr

    def forbidden(*args, **kwargs):
        raise AssertionError("got past the flag checks")

    monkeypatch.setattr(app.registry, "load_models", forbidden)
    monkeypatch.setattr(gr.Blocks, "launch", forbidden)
    for name in (AUTH_ENV, AUTH_FILE_ENV):
        monkeypatch.delenv(name, raising=False)


def refused(capsys, argv: list[str]) -> str:
    """Run main(argv), expect exit status 2 and return the single line it wrote to stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert captured.out == ""
    return lines[0]


@pytest.mark.parametrize("argv, says", [
    (["--port", "99999"], r"--port 99999 is outside 1-65535: pass a free port such as 7860"),
    (["--port", "0"], r"--port 0 is outside 1-65535"),
    (["--port", "-5"], r"--port -5 is outside 1-65535"),
    (["--port", "http"], r"argument --port: invalid int value: 'http' \(python -m app --help"),
    (["--device", "banana"], r"--device 'banana' is not a device torch knows: pass cpu, cuda, cuda:N or mps"),
    (["--device", "cuda:x"], r"--device 'cuda:x' is not a device torch knows"),
    (["--device", "meta"], r"--device meta: the app runs on cpu, cuda or mps, not meta: pass --device cpu"),
    (["--keep-files", "0"], r"--keep-files 0: pass a number of minutes, at least 1"),
    (["--colour"], r"unrecognized arguments: --colour"),
])
def test_bad_flags_are_refused_in_one_line(nothing_may_load, capsys, argv, says):
    import re

    assert re.search(says, refused(capsys, argv))


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_refused(nothing_may_load, capsys):
    for device in ("cuda", "cuda:0"):
        line = refused(capsys, ["--device", device])
        assert f"--device {device}: no CUDA GPU is available on this machine" in line and "--device cpu" in line


@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_a_cuda_index_past_the_last_gpu_is_refused(nothing_may_load, capsys):
    import torch

    n = torch.cuda.device_count()
    assert f"this machine has {n} CUDA device(s)" in refused(capsys, ["--device", f"cuda:{n}"])


@pytest.mark.skipif(HAS_MPS, reason="this machine has MPS")
def test_mps_without_apple_silicon_is_refused(nothing_may_load, capsys):
    assert "no Apple MPS device is available" in refused(capsys, ["--device", "mps"])


def test_exposed_without_credentials_is_refused_with_how_to_add_them(nothing_may_load, capsys):
    for argv, reason in ((["--share"], "--share publishes the app on a public"),
                         (["--host", "0.0.0.0"], "--host 0.0.0.0 makes the app reachable from other machines"),
                         (["--host", "192.168.1.20"], "--host 192.168.1.20 makes"),
                         (["--host", "my-laptop.local"], "--host my-laptop.local makes")):
        line = refused(capsys, argv)
        assert reason in line and "needs sign-in: add --auth USER:PASSWORD or --auth-file PATH" in line
        assert "--no-auth" in line
    assert "contradicts the credentials given (--auth)" in refused(
        capsys, ["--host", "0.0.0.0", "--no-auth", "--auth", "ada:x"])


def test_malformed_credentials_name_the_line_never_the_password(nothing_may_load, capsys, tmp_path, monkeypatch):
    users = tmp_path / "users.txt"
    users.write_text("# demo users\nada:first-secret\ngrace hopper-second-secret\n")
    line = refused(capsys, ["--auth-file", str(users)])
    assert f"--auth-file {users} line 3: expected user:password" in line and "no colon" in line
    assert "secret" not in line
    users.write_text("ada:first-secret\n:orphan-secret\n")
    line = refused(capsys, ["--auth-file", str(users)])
    assert "line 2" in line and "user name is empty" in line and "secret" not in line
    assert "the password is empty" in refused(capsys, ["--auth", "ada:"])
    assert "cannot read it" in refused(capsys, ["--auth-file", str(tmp_path / "absent.txt")])
    monkeypatch.setenv(AUTH_ENV, "ada:one-secret\nada:two-secret")
    line = refused(capsys, [])
    assert "user 'ada' is given more than once" in line and "secret" not in line
    monkeypatch.delenv(AUTH_ENV)
    users.write_text("\n# nobody yet\n")
    monkeypatch.setenv(AUTH_FILE_ENV, str(users))
    assert f"{AUTH_FILE_ENV} {users} holds no user:password line" in refused(capsys, [])


def test_loopback_hosts():
    assert all(map(is_loopback, ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.168.1.20", "10.0.0.1", "example.org"]))


@pytest.mark.parametrize("argv", [["--share"], ["--host", "0.0.0.0"], ["--port", "99999"], ["--device", "banana"]])
def test_refused_from_the_shell_before_anything_binds(argv):
    """As a user runs it: one line, exit 2, no traceback, no server log, the port still free."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in (AUTH_ENV, AUTH_FILE_ENV)}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    args = argv if "--port" in argv else ["--port", str(port), *argv]
    done = subprocess.run([sys.executable, "-m", "app", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("error: "), done.stderr
    with socket.socket() as s:           # nothing is listening there, nothing was left behind
        s.bind(("127.0.0.1", port))
