"""The drivers' shared pieces: child processes under accelerate launch, folder records, row locks."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edvae_common import ConfigError
from stage2_prior.driver import FolderLock, Launcher, Record, StageFailed, differences


def test_a_stage_runs_under_accelerate_launch_in_several_processes(tmp_path: Path) -> None:
    script = tmp_path / "stage.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        from edvae_common.accel import make_accelerator
        acc = make_accelerator()
        open(os.path.join({str(tmp_path)!r}, f"rank{{acc.process_index}}of{{acc.num_processes}}"), "w").write(
            os.environ.get("OMP_NUM_THREADS", "?"))
    """))
    launcher = Launcher(num_processes=2, threads=1, log_dir=tmp_path / "logs", quiet=True)
    seconds = launcher.run("demo", launcher.accelerate(str(script), []))
    assert seconds > 0
    assert sorted(p.name for p in tmp_path.glob("rank*")) == ["rank0of2", "rank1of2"]
    assert (tmp_path / "rank0of2").read_text() == "1"                 # one CPU thread per process
    assert launcher.commands[0].startswith("accelerate launch") and "--num_processes 2" in launcher.commands[0]
    assert "$ accelerate launch" in (tmp_path / "logs" / "demo.log").read_text()


def test_a_failing_stage_says_which_and_where_its_log_is(tmp_path: Path) -> None:
    launcher = Launcher(log_dir=tmp_path / "logs", quiet=True)
    with pytest.raises(StageFailed, match=r"(?s)stage 'broken' failed \(exit status 3\).*broken.log.*rerun.*no such data"):
        launcher.run("broken", [sys.executable, "-c", "import sys; print('no such data'); sys.exit(3)"])


def test_records_refuse_other_settings_other_kinds_and_foreign_folders(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    record = Record(folder, "made.json", "generation comparison")
    record.claim({"stage1": {"train.max_steps": 900}, "seeds": [0]}, "Use another --out.")
    assert record.claim({"stage1": {"train.max_steps": 900}, "seeds": [0]}, "x")["kind"] == "generation comparison"
    with pytest.raises(ConfigError, match=r"stage1\.train\.max_steps: 900 -> 1000.*Use another --out"):
        record.claim({"stage1": {"train.max_steps": 1000}, "seeds": [0]}, "Use another --out.")
    with pytest.raises(ConfigError, match="holds a generation comparison run, not a build"):
        Record(folder, "made.json", "build").claim({}, "")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("")
    with pytest.raises(ConfigError, match="no generation comparison wrote|that no generation comparison"):
        Record(tmp_path / "mine", "made.json", "generation comparison").claim({}, "")
    assert not (tmp_path / "mine" / "made.json").exists()
    assert differences({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}, "d": 4}) == ["b.c: 2 -> 3", "d: <unset> -> 4"]
    assert differences({"a": 1}, {"a": 1, "init_from": None}) == []   # a new key at its default of None


def test_a_folder_lock_is_exclusive_across_processes_and_dies_with_its_holder(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from stage2_prior.driver import FolderLock
        lock = FolderLock({str(tmp_path)!r}); assert lock.acquire(); print("held", flush=True); time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    mine = FolderLock(tmp_path)
    assert not mine.acquire() and mine.holder() == str(holder.pid)
    assert mine.held_elsewhere() == str(holder.pid)                  # what --status shows, without taking it
    holder.kill()
    holder.wait()
    assert mine.held_elsewhere() is None
    assert mine.acquire()   # a killed holder leaves no stale lock
    mine.release()


def test_stage_times_add_up_over_reruns_and_failures_and_survive_a_killed_driver(tmp_path: Path) -> None:
    import json
    import os
    import signal
    import time

    times = tmp_path / "times.json"
    launcher = Launcher(log_dir=tmp_path / "logs", quiet=True)
    nap = [sys.executable, "-c", "import time; time.sleep(0.3)"]
    first = launcher.run("prior", nap, times=times)
    second = launcher.run("prior", nap, times=times)
    with pytest.raises(StageFailed):
        launcher.run("tokens", [sys.executable, "-c", "import time, sys; time.sleep(0.3); sys.exit(1)"], times=times)
    recorded = json.loads(times.read_text())
    assert recorded["prior"] == pytest.approx(first + second, abs=0.11) and recorded["prior"] >= 0.6
    assert recorded["tokens"] >= 0.3                     # a failed run's time counts too (it is resumed later)

    # a driver killed while its stage runs leaves the time up to its last heartbeat
    driver = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from pathlib import Path
        from stage2_prior.driver import Launcher
        Launcher(log_dir=Path({str(tmp_path / "logs")!r}), quiet=True, heartbeat_s=0.2).run(
            "tokenizer", [sys.executable, "-c", "import time; time.sleep(60)"], times=Path({str(times)!r}))
    """)], start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and json.loads(times.read_text()).get("tokenizer", 0) < 1.0:
        time.sleep(0.1)
    os.killpg(driver.pid, signal.SIGKILL)   # the driver and its stage, as when a session ends
    driver.wait()
    kept = json.loads(times.read_text())
    assert 1.0 <= kept["tokenizer"] < 60 and kept["prior"] == recorded["prior"]
