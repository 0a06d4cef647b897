"""The prepared GPU check (benchmarks/gpu_check.py) as a CPU dry run: every part end to end at tiny sizes, its
results files and the writer into docs/benchmarks_gpu.md; a tiny budget skips parts for time; a failing part is
recorded with its traceback. Timings are not asserted (they measure nothing at these sizes), only that they are
real, finite numbers."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402

SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def run_check(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture
def faces(tmp_path):
    """40 blocky random 64 x 64 'faces' in the developer data's format."""
    coarse = np.random.default_rng(0).integers(0, 256, size=(40, 16, 16, 3)).astype(np.uint8)
    path = tmp_path / "faces.npz"
    np.savez(path, images=coarse.repeat(4, axis=1).repeat(4, axis=2))
    return path


@pytest.mark.slow
def test_dry_run_runs_every_part_and_writes_results(faces, tmp_path):
    out = tmp_path / "out"
    result = run_check("--out", str(out), "--data", str(faces))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    parts = results["parts"]
    assert list(parts) == gpu_check.PART_NAMES
    for name, part in parts.items():
        assert part["status"] == "ok", (name, part.get("error"), part.get("checks"), part.get("skipped"))
        assert all(c["ok"] for c in part["checks"]), (name, part["checks"])
    assert parts["env"]["summary"]["torch"] and parts["env"]["summary"]["device"] == "cpu"

    speed = parts["stage1_speed"]["rows"]
    assert [(r["config"], r["variant"]) for r in speed] == [
        ("celeba", "fp32"), ("celeba", "bf16"), ("celeba", "bf16_channels_last"),
        ("cifar10", "fp32"), ("cifar10", "bf16"), ("cifar10", "bf16_channels_last"), ("celeba", "compile")]
    for r in speed:
        assert r["status"] == "ok" and r["finite"], r
        assert all(positive(r[k]) for k in ("images_per_s", "ms_per_step", "peak_mib", "loss_first", "loss_last"))
    assert {r["image_size"] for r in speed} == {64, 32}  # the CelebA and CIFAR-10 configs' own image sizes
    checks = {c["name"] for c in parts["stage1_speed"]["checks"]}
    assert {"celeba: bf16 loss equals fp32 loss (same seed, batch and steps)",
            "cifar10: bf16 loss equals fp32 loss (same seed, batch and steps)"} <= checks

    cli = parts["stage1_cli"]
    assert cli["summary"]["killed_after_step"] >= 4 and cli["summary"]["steps"] == 12
    assert positive(cli["summary"]["images_per_s"]) and positive(cli["summary"]["final_loss"])
    assert "accelerate.commands.launch" in cli["commands"][0] and cli["commands"][1].endswith("--resume latest")

    stage2 = parts["stage2"]["rows"]
    assert [r["what"] for r in stage2] == ["train", "train", "sample", "guidance", "guidance", "fid_features"]
    for r in stage2:
        assert r["status"] == "ok", r
        assert positive(r.get("tokens_per_s", r.get("images_per_s"))) and positive(r["seconds"])
    assert positive(stage2[4]["speedup_over_two_passes"])

    pipeline = {r["what"]: r for r in parts["pipeline"]["rows"]}
    assert set(pipeline) == {"generate", "reconstruct", "complete"} and positive(pipeline["reconstruct"]["psnr"])

    train = parts["celeba_train"]["summary"]
    assert train["steps"] == 3 and positive(train["test"]["mse"]) and train["test"]["n_images"] == 5  # 13.3 % of 40
    assert all(size < 16 for size in train["files_mb"].values())
    from safetensors import safe_open

    from stage1_tokenizer import EdVAE

    with safe_open(str(out / "tokenizer" / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    assert EdVAE.from_pretrained(out / "tokenizer").config.channels == 8

    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8  # what the device tool brings back
    markdown = (out / "results.md").read_text()
    for heading in ("### Stage 1: one training step", "### Stage 1 through the CLI", "### Stage 2",
                    "### The app's pipeline", "### Paper-width CelebA tokenizer"):
        assert heading in markdown
    assert "| celeba | fp32 eager | 2 |" in markdown and "1.00x" in markdown and "FAIL" not in markdown

    # the writer: a dry run gets its own section; a CUDA run replaces the "not yet measured" status
    doc = tmp_path / "benchmarks_gpu.md"
    doc.write_text("# GPU check\n\nintro\n\n## Status\n\nNot yet measured on a GPU.\n")
    gpu_check.write_doc(out / "results.json", doc)
    text = doc.read_text()
    assert "## Dry run:" in text and "Not yet measured on a GPU." in text and "intro" in text
    fake = dict(results, device="cuda", quick=False)
    env = {**parts["env"], "summary": {**parts["env"]["summary"], "device_name": "Fake GPU"}}
    fake["parts"] = {**parts, "env": env}
    (tmp_path / "cuda.json").write_text(json.dumps(fake))
    gpu_check.write_doc(tmp_path / "cuda.json", doc)
    text = doc.read_text()
    assert "## CUDA: Fake GPU" in text and "Measured on Fake GPU" in text and "Not yet measured" not in text
    assert "## Dry run:" in text  # kept


def test_a_tiny_budget_skips_the_later_parts_for_time(tmp_path):
    out = tmp_path / "out"
    result = run_check("--out", str(out), "--minutes", "0.02", timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    parts = json.loads((out / "results.json").read_text())["parts"]
    assert parts["env"]["status"] == "ok"  # always runs: the results need the device and versions
    for name in gpu_check.PART_NAMES[1:]:
        assert parts[name]["status"] == "skipped" and parts[name]["skipped"].startswith("time:"), parts[name]
    assert "| stage1_speed | skipped |" in (out / "results.md").read_text()


def test_a_failing_part_is_recorded_with_its_traceback(tmp_path):
    bad = tmp_path / "broken.npz"
    bad.write_text("not an archive")
    out = tmp_path / "out"
    result = run_check("--out", str(out), "--parts", "celeba_train", "--data", str(bad), timeout=300)
    assert result.returncode == 1  # a failed part makes the check fail
    parts = json.loads((out / "results.json").read_text())["parts"]
    assert list(parts) == ["env", "celeba_train"] and parts["env"]["status"] == "ok"
    failed = parts["celeba_train"]
    assert failed["status"] == "failed" and failed["error"] and "Traceback" in failed["traceback"]
    assert "| celeba_train | failed |" in (out / "results.md").read_text()
