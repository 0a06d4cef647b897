"""stage2_prior.compare end to end on real images: every stage's outputs, the tables and figure, resume after a
kill during the prior, and the refusals that come before anything trains."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edvae_common import ConfigError
from stage2_prior import compare, compare_report
from tests.conftest import CIFAR_NPZ, QUIET, ROOT, TINY_CONFIG
from tests.stage2_helpers import save_standin_extractor

STAGE2_TINY = ROOT / "configs" / "stage2" / "tiny.yaml"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    if not CIFAR_NPZ.is_file():
        pytest.skip(f"real CIFAR-10 sample not present at {CIFAR_NPZ}")
    folder = tmp_path_factory.mktemp("compare")
    with np.load(CIFAR_NPZ) as f:
        np.savez(folder / "cifar.npz", images=f["images"][:120])
    return {"data": folder / "cifar.npz", "weights": save_standin_extractor(folder / "standin.pt", features=16),
            "folder": folder}


def argv(setup: dict, out: Path, *extra: str, prior_steps: int = 4) -> list[str]:
    return ["--stage1", str(TINY_CONFIG), "--stage2", str(STAGE2_TINY), "--out", str(out), "--seeds", "1",
            "--num-samples", "8", "--sample-seeds", "0", "--sample-batch-size", "8", "--fid-weights",
            str(setup["weights"]), "--threads", "1", "--quiet", *extra,
            "s1.data.dataset=npz", f"s1.data.path={setup['data']}", *(f"s1.{o}" for o in QUIET),
            "s1.train.max_steps=3", "s1.data.hflip=true", "s1.train.batch_size=16", "s1.train.checkpoint_every=3", "s1.train.final_eval=true",
            f"s2.train.max_steps={prior_steps}", "s2.train.batch_size=8", "s2.train.checkpoint_every=2",
            "s2.train.eval_every=2", "s2.train.sample_every=1000", "s2.train.tracker=none", "s2.train.progress_bar=false",
            "s2.train.warmup_steps=1"]


def test_compare_runs_every_stage_and_reports(setup: dict) -> None:
    out, archive = setup["folder"] / "run", setup["folder"] / "archive"
    rows = compare.main(argv(setup, out, "--quantizers", "edvae", "dvae", "--archive", str(archive)))
    assert [(r["quantizer"], r["seed"]) for r in rows] == [("edvae", 1), ("dvae", 1)]
    for r in rows:
        row = f"{r['quantizer']}_seed1"
        # every stage's own outputs
        assert (out / "stage1" / row / "tokenizer" / "config.json").is_file()
        assert (out / "tokens" / row / "manifest.json").is_file()
        assert (out / "stage2" / row / "prior" / "config.json").is_file()
        for name in ("t1_seed0", "t1_p095_seed0"):
            assert len(list((out / "samples" / row / name / "images").glob("*.png"))) == 8
            assert json.loads((out / "samples" / row / name / "fid.json").read_text())["kid"] is not None
        # complete rows: budgets, stage-1 metrics, tokens, prior bits, both settings, wall times
        assert r["budget"]["stage1_steps"] == 3 and r["budget"]["prior_steps"] == 4
        assert r["tokenizer"]["psnr"] > 5 and 1 <= r["tokenizer"]["codes_used"] <= 512
        assert r["tokens"]["sequences"] == 2 * 108  # the training split and its mirror images
        assert 0 < r["prior"]["bits_per_token"] <= 9.1 and r["prior"]["bits_per_image"] == pytest.approx(
            64 * r["prior"]["bits_per_token"])
        for name, top_p in (("t1", 1.0), ("t1_p095", 0.95)):
            s = r["sampling"][name]
            assert s["temperature"] == 1.0 and s["top_p"] == top_p and s["fid_mean"] > 0 and s["seeds"] == [0]
        assert set(r["wall_s"]) >= {"tokenizer", "tokens", "prior", "rfid", "sample_t1_seed0", "fid_t1_p095_seed0"}
    assert rows[0]["beta_max"] == 5e-7 and rows[1]["beta_max"] == 5e-5  # the paper's KL weight per quantizer
    # 3 steps leave tokenizers with a handful of codes: such a row is still measured, and flagged
    assert any(r["tokenizer"]["codes_used"] < compare.COLLAPSED_CODES for r in rows)
    for r in rows:
        assert (r["tokenizer"]["codes_used"] < compare.COLLAPSED_CODES) == bool(r["warnings"])
        assert r["sampling"]["t1"]["fid_mean"] > 0 and "collapsed" in " ".join(r["warnings"]) or not r["warnings"]
    saved = json.loads((out / "results.json").read_text())
    assert [r["sampling"]["t1"]["fid"] for r in saved] == [r["sampling"]["t1"]["fid"] for r in rows]
    table = (out / "results.md").read_text()
    assert "| edvae | 1 |" in table and "| dvae | 1 |" in table and "edvae seed 1" in table
    assert "twice the spread" in table and "figure11.png" in table
    assert (out / "figure11.png").stat().st_size > 5_000
    # a rerun finds everything done: no stage runs again
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.json") if "rows" not in p.parts and p.name != "results.json"}
    compare.main(argv(setup, out, "--quantizers", "edvae", "dvae"))
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # --status trains nothing and tells each row's state; a row a driver holds says so
    from stage2_prior.driver import FolderLock

    with FolderLock(out / "rows" / "dvae_seed1") as lock:
        assert lock.acquire()
        compare.main(argv(setup, out, "--quantizers", "edvae", "dvae", "--archive", str(archive), "--status"))
    status = (archive / "STATUS.md").read_text()
    assert re.search(r"\| edvae_seed1 \| finished \(3 steps\) \| [\d.]+ / \d+ / [\d.]+ \| finished \(4 steps\) \|", status)
    assert re.search(rf"\| dvae_seed1 \|.*\| 2 of 2 \|.*\| driver pid {os.getpid()} working \|", status)
    assert "| finished |" in status.splitlines()[6] and "2 of 2 rows finished." in status
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # the archive (for git) holds each row's finished stages: the tokenizer in fp32, the prior in fp16 ...
    import torch
    from safetensors.torch import load_file

    from stage2_prior.model import load_prior

    kept = archive / "edvae_seed1"
    assert {v.dtype for v in load_file(kept / "stage1" / "tokenizer" / "model.safetensors").values()
            if v.is_floating_point()} == {torch.float32}
    assert {v.dtype for v in load_file(kept / "stage2" / "prior" / "model.safetensors").values()} == {torch.float16}
    prior, _ = load_prior(kept / "stage2" / "prior")
    assert next(prior.parameters()).dtype == torch.float32
    # ... a fresh clone's --status reads it without writing a run folder ...
    fresh = setup["folder"] / "fresh"
    compare.main(argv(setup, fresh, "--quantizers", "edvae", "dvae", "--archive", str(archive), "--status"))
    assert not fresh.exists() and (archive / "edvae_seed1" / "rows" / "results.json").is_file()
    assert (archive / "STATUS.md").read_text().count("finished (3 steps) in the archive") == 2
    # a command that names one row still lists every row the archive holds
    compare.main(argv(setup, fresh, "--quantizers", "edvae", "--archive", str(archive), "--status"))
    assert not fresh.exists() and "| dvae_seed1 | finished (3 steps) in the archive |" in (archive / "STATUS.md").read_text()
    # ... and a fresh folder resumes from it: no tokenizer, prior, sampling or FID run again
    again = compare.main(argv(setup, fresh, "--quantizers", "edvae", "dvae", "--archive", str(archive)))
    assert [r["sampling"]["t1_p095"]["fid"] for r in again] == [r["sampling"]["t1_p095"]["fid"] for r in rows]
    assert [r["tokenizer"] for r in again] == [r["tokenizer"] for r in rows]
    assert sorted(p.name for p in (fresh / "logs").glob("*.log")) == ["dvae_seed1.tokens.log", "edvae_seed1.tokens.log"]
    assert (fresh / "figure11.png").is_file()


def test_a_kill_during_the_prior_resumes_without_retraining_the_tokenizer(setup: dict) -> None:
    out = setup["folder"] / "killed"
    command = [sys.executable, "-m", "stage2_prior.compare", *argv(setup, out, "--quantizers", "vqvae_ema",
                                                                    prior_steps=60)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    checkpoints = out / "stage2" / "vqvae_ema_seed1" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and not any(checkpoints.glob("step_*/COMPLETE")):
        time.sleep(0.5)
    os.killpg(child.pid, signal.SIGKILL)   # the driver and the prior's training process
    child.wait()
    assert any(checkpoints.glob("step_*/COMPLETE")), "the prior stage never wrote a checkpoint"
    assert not (out / "stage2" / "vqvae_ema_seed1" / "prior").exists()
    tokenizer_log = (out / "stage1" / "vqvae_ema_seed1" / "metrics.jsonl").read_text()

    # --snapshot archives the finished tokenizer and the prior's latest checkpoint; a fresh folder resumes from them
    archive, moved = setup["folder"] / "killed_archive", setup["folder"] / "moved"
    compare.main(argv(setup, out, "--quantizers", "vqvae_ema", "--archive", str(archive), "--snapshot", prior_steps=60))
    kept = archive / "vqvae_ema_seed1"
    assert (kept / "stage1" / "tokenizer").is_dir() and any((kept / "stage2.partial" / "checkpoints").glob("step_*"))
    # its STATUS.md: the tokenizer finished, the prior at a checkpoint a rerun resumes from, no driver on the row
    assert re.search(r"\| vqvae_ema_seed1 \| finished \(3 steps\) \|.*\| step \d+ of 60, checkpoint \d+ \| - \|"
                     r".*\| 0 of 2 \|.*\| waiting \|", (archive / "STATUS.md").read_text())
    moved_rows = compare.main(argv(setup, moved, "--quantizers", "vqvae_ema", "--archive", str(archive),
                                   prior_steps=60))
    assert not (moved / "logs" / "vqvae_ema_seed1.tokenizer.log").exists()       # restored, not retrained
    assert re.search(r"resumed from \S+step_\d+ at step [1-9]", (moved / "logs" / "vqvae_ema_seed1.prior.log").read_text())
    finished_tokenizer = json.loads((out / "stage1" / "vqvae_ema_seed1" / "metrics.json").read_text())
    assert moved_rows[0]["tokenizer"]["psnr"] == pytest.approx(finished_tokenizer["psnr"])

    # the same folder, rerun: finishes the prior from its checkpoint, the tokenizer untouched
    rows = compare.main(argv(setup, out, "--quantizers", "vqvae_ema", prior_steps=60))
    assert len(rows) == 1 and rows[0]["budget"]["prior_steps"] == 60
    assert (out / "stage1" / "vqvae_ema_seed1" / "metrics.jsonl").read_text() == tokenizer_log  # not retrained
    log = (out / "logs" / "vqvae_ema_seed1.prior.log").read_text()
    assert re.search(r"resumed from \S+step_\d+ at step [1-9]", log)


def test_refusals_come_before_anything_trains(setup: dict, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown quantizer.*vq"):
        compare.main(argv(setup, tmp_path / "a", "--quantizers", "vq"))
    with pytest.raises(ConfigError, match="class-conditional"):
        compare.main([*argv(setup, tmp_path / "b", "--quantizers", "dvae"), "s2.model.class_conditional=true"])
    with pytest.raises(ConfigError, match="not divisible by the model's downsampling factor"):
        compare.main([*argv(setup, tmp_path / "c", "--quantizers", "dvae"), "s1.data.image_size=30"])
    # a folder made by another comparison (here: other prior steps) is refused, naming the difference
    made = setup["folder"] / "run"
    if (made / "compare.json").is_file():
        with pytest.raises(ConfigError, match=r"train\.max_steps: 4 -> 5"):
            compare.main(argv(setup, made, "--quantizers", "edvae", prior_steps=5))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="no generation comparison"):
        compare.main(argv(setup, tmp_path / "other", "--quantizers", "dvae"))
    for name in ("a", "b", "c"):
        assert not (tmp_path / name / "stage1").exists()


def test_the_church_comparison_runs_on_the_lsun_fixture(setup: dict, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Figure 12's command (configs/stage1/lsun_church.yaml + configs/stage2/lsun_church.yaml) at toy size on the
    LSUN-format LMDBs: 128 x 128, first kernel 7, 1,024 tokens, a Llama prior, FID against the val LMDB."""
    pytest.importorskip("lmdb", reason="the 'lmdb' package (dev / lsun extra) is not installed")
    from tests.test_lsun_church import write_lsun_fixture

    lsun = write_lsun_fixture(tmp_path / "lsun", n_train=12, n_val=4)
    monkeypatch.setenv("EDVAE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "churches"
    rows = compare.main([
        "--stage1", str(ROOT / "configs/stage1/lsun_church.yaml"), "--stage2", str(ROOT / "configs/stage2/lsun_church.yaml"),
        "--quantizers", "edvae", "--seeds", "1", "--out", str(out), "--num-samples", "4", "--sample-seeds", "0",
        "--sample-batch-size", "4", "--fid-weights", str(setup["weights"]), "--threads", "1", "--quiet",
        f"s1.data.path={lsun}", "s1.data.num_workers=0", "s1.model.channels=8", "s1.model.blocks_per_group=1",
        "s1.train.max_steps=2", "s1.train.batch_size=4", "s1.train.checkpoint_every=1000",
        *(f"s1.{o}" for o in QUIET), "s1.train.final_eval=true",
        "s2.model.size=tiny", "s2.train.max_steps=2", "s2.train.batch_size=4", "s2.train.mixed_precision=no",
        "s2.train.warmup_steps=1", "s2.train.eval_every=2", "s2.train.eval_max_batches=1", "s2.train.sample_every=1000",
        "s2.train.checkpoint_every=1000", "s2.train.tracker=none", "s2.train.progress_bar=false"])
    assert len(rows) == 1 and rows[0]["tokenizer"]["n_test"] == 4           # the val LMDB is the held-out split
    assert json.loads((out / "stage2" / "edvae_seed1" / "prior" / "config.json").read_text())["model_type"] == "llama"
    fid_run = json.loads((out / "samples" / "edvae_seed1" / "t1_p095_seed0" / "fid.json").read_text())
    assert fid_run["real"]["image_shape"] == fid_run["fake"]["image_shape"] == [128, 128, 3]
    assert "church_outdoor_val_lmdb" in fid_run["real"]["split_rule"]
    assert rows[0]["prior"]["bits_per_image"] == pytest.approx(1024 * rows[0]["prior"]["bits_per_token"])
    assert (out / "figure11.png").is_file()


def test_significance_counts_a_gap_beyond_twice_the_spread_and_names_single_training_seeds() -> None:
    def row(quantizer: str, seed: int, fids: list[float]) -> dict:
        import statistics

        return {"quantizer": quantizer, "seed": seed, "sampling": {"t1_p095": {
            "fid_mean": statistics.mean(fids), "fid_std": statistics.stdev(fids)}}}

    one_seed = compare_report.significance([row("edvae", 42, [100, 101, 102]), row("dvae", 42, [110, 111, 112])])
    assert len(one_seed) == 1 and "gap of 10.0, larger than twice the spread (2.0): **significant**" in one_seed[0]
    assert "edvae and dvae have one training seed" in one_seed[0]
    # a second training seed 15 points away: the training-seed spread (10.6) swallows the gap
    two_seeds = compare_report.significance([row("edvae", 42, [100, 101, 102]), row("edvae", 1773, [115, 116, 117]),
                                      row("dvae", 42, [120, 121, 122]), row("dvae", 1773, [120, 121, 122])])
    assert "edvae (108.5) vs dvae (121.0): a gap of 12.5, within twice the spread (21.2): not significant" \
           in two_seeds[0] and "one training seed" not in two_seeds[0]
    # ... yet paired by training seed, edvae is lower at both seeds; no paired line with one shared seed
    assert two_seeds[1] == ("- edvae vs dvae paired by training seed (2 shared seeds): edvae is lower at every one "
                            "(seed 42: 101.0 vs 121.0, seed 1773: 116.0 vs 121.0)")
    assert len(one_seed) == 1 and len(two_seeds) == 2
    split = compare_report.significance([row("edvae", 42, [100, 101, 102]), row("edvae", 1773, [125, 126, 127]),
                                         row("dvae", 42, [120, 121, 122]), row("dvae", 1773, [120, 121, 122])])
    assert "neither is lower at every one (seed 42: 101.0 vs 121.0, seed 1773: 126.0 vs 121.0)" in split[1]
    tied = compare_report.significance([row("edvae", 42, [120, 121, 122]), row("edvae", 1773, [120, 121, 122]),
                                        row("dvae", 42, [120, 121, 122]), row("dvae", 1773, [120, 121, 122])])
    assert "neither is lower at every one" in tied[1]   # a tie at a seed is no win for either
