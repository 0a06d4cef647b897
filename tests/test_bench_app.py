"""A short run of benchmarks/bench_app.py: a few signed-in clients against a real server, with a tiny queue so
that some are turned away. What must hold is asserted (no failed request, clear refusals and bad-upload
messages, the cache inside its bound, still answering); timings and memory are reported, not asserted."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.pipeline_helpers import ROOT, make_pair, write_registry


def test_short_load_run_serves_refuses_clearly_and_keeps_answering(tmp_path):
    tok, prior = make_pair(tmp_path / "tiny")
    registry = write_registry(tmp_path / "app.yaml", {"tiny": {"tokenizer": str(tok), "prior": str(prior)}},
                              default="tiny", queue_size=1)       # one waiting request at most: some are refused
    out = tmp_path / "results.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_app.py"), "--clients", "6", "--seconds", "6",
           "--no-write", "--json", str(out), "--app-args", f"--config {registry}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert out.is_file(), done.stdout[-2000:] + done.stderr[-3000:]
    (r,) = json.loads(out.read_text())
    assert r["failed"] == 0, r["failures"]
    assert r["served"] >= 6 and r["images"] > 0
    assert r["refused"] > 0 and set(r["refusal_messages"]) == {"Queue is full! Please try again."}  # queue of 1
    assert sum(r["bad_upload_messages"].values()) == r["bad_uploads_answered"]    # each with a known message
    assert r["answered_afterwards"]
    assert r["cache_files"] > 0 and r["cache_oldest_s"] <= r["cache_bound_s"]
    assert r["rss_start_mib"] > 0 and r["rss_end_mib"] > 0
    assert "| 6 | generate |" in done.stdout                   # the latency table was printed


def test_cache_sweep_deletes_old_files_only_and_survives_uploads_arriving_meanwhile(tmp_path):
    """app.render.sweep_cache: what delete_cache promises, while another thread keeps adding files to the sets."""
    import os
    import threading
    import time
    from types import SimpleNamespace

    from app.render import sweep_cache

    def touch(name: str) -> str:
        path = tmp_path / name
        path.write_bytes(b"x")
        return str(path)

    old = {touch(f"old_{i}.png") for i in range(300)}
    example = touch("example.png")
    time.sleep(1.1)                                   # ctime cannot be set: let these grow older than 1 s
    fresh = {touch(f"fresh_{i}.png") for i in range(5)}
    uploads, outputs = set(old), {*fresh, example}
    demo = SimpleNamespace(temp_file_sets=[uploads, outputs],
                           blocks={1: SimpleNamespace(keep_in_cache={example}), 2: SimpleNamespace()})
    stop = threading.Event()

    def upload() -> None:                             # as Gradio's upload route does, during the sweep
        i = 0
        while not stop.is_set():
            uploads.add(touch(f"new_{i}.png"))
            i += 1

    adder = threading.Thread(target=upload)
    adder.start()
    try:
        removed = sweep_cache(demo, age_s=1.0)
    finally:
        stop.set()
        adder.join()
    assert removed == len(old) and not any(os.path.exists(p) for p in old) and not (old & uploads)
    assert all(os.path.exists(p) for p in fresh | {example}) and outputs == {*fresh, example}
