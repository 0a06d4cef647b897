"""Training end to end: real images, exact resume (also after a SIGKILL), 2 processes, evaluation."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import QUIET, ROOT, TINY_CONFIG, train_args
from edvae_common import ConfigError
from stage1_tokenizer import EdVAE
from stage1_tokenizer import evaluate as evaluate_cli
from stage1_tokenizer import train as train_script
from stage1_tokenizer.data import DataNotFoundError


def train_records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["split"] == "train"]


@pytest.mark.parametrize("quantizer,beta", [("edvae", "5e-7"), ("dvae", "5e-5"), ("gs_vqvae", "5e-6"),
                                            ("vqvae_ema", "0")])
def test_short_training_on_real_images_lowers_the_mse(cifar_npz, tmp_path, quantizer, beta):
    # The tiny config (width 16, batch 32, zero conv biases) leaves its initial plateau (MSE ~0.063, the
    # decoder sees the same input everywhere) after 60 to 130 steps on this data; 200 steps give a clear drop.
    run = tmp_path / "run"
    export = train_script.main(train_args(run, cifar_npz, "train.max_steps=200", "train.log_every=20",
                                          f"model.quantizer={quantizer}", f"train.beta_max={beta}"))
    records = train_records(run)
    assert [r["step"] for r in records] == list(range(20, 201, 20))
    first, last = records[0]["mse"], min(records[-1]["mse"], records[-2]["mse"])
    assert last < 0.6 * first, (first, last)
    assert records[-1]["beta"] == pytest.approx(float(beta))  # the compressed ramp (50 steps) has finished
    for key in ("loss", "kl", "tau", "lr", "perplexity", "codes_used", "uncertainty"):
        assert key in records[-1]
    assert 1 <= records[-1]["perplexity"] <= 512
    assert (records[-1]["uncertainty"] is None) == (quantizer != "edvae")  # only EdVAE defines u = K/S
    model = EdVAE.from_pretrained(export)
    assert model.config.channels == 16 and model.config.quantizer == quantizer
    assert (run / "config.yaml").is_file() and any((run / "checkpoints").iterdir())


@pytest.mark.parametrize("accumulation,batch,hflip", [(1, 16, False), (3, 24, False), (3, 24, True)])
def test_resumed_run_equals_an_uninterrupted_one(synthetic_npz, tmp_path, accumulation, batch, hflip):
    # 86 training images: with micro-batches of 8 and accumulation 3, epochs (10 micro-batches) end in the
    # middle of an optimizer step, and the resume at step 4 lands inside the second epoch; periodic
    # evaluations on a subset run in between.
    common = [f"train.gradient_accumulation_steps={accumulation}", f"train.batch_size={batch}", "train.log_every=1",
              "train.checkpoint_every=100", "train.eval_every=2", "train.eval_max_images=8", "train.image_every=3",
              f"data.hflip={str(hflip).lower()}"]
    full = tmp_path / "full"
    train_script.main(train_args(full, synthetic_npz, "train.max_steps=9", *common))
    part = tmp_path / "part"
    train_script.main(train_args(part, synthetic_npz, "train.max_steps=4", *common))  # checkpoint at its last step
    train_script.main(train_args(part, synthetic_npz, "train.max_steps=9", "resume=latest", *common))
    a, b = train_records(full), train_records(part)
    assert [r["step"] for r in b] == list(range(1, 10))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]  # exactly equal, step by step
    wa, wb = load_file(full / "tokenizer" / "model.safetensors"), load_file(part / "tokenizer" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_accumulation_takes_one_optimizer_step_per_training_step(synthetic_npz, tmp_path):
    # With accumulation 3 over 10 micro-batches per epoch, Adam must still step exactly once per step.
    run = tmp_path / "acc"
    train_script.main(train_args(run, synthetic_npz, "train.max_steps=7", "train.batch_size=24",
                                 "train.gradient_accumulation_steps=3", "train.checkpoint_every=7"))
    optimizer_state = torch.load(run / "checkpoints" / "step_00000007" / "optimizer.bin", weights_only=False)
    steps = {float(v["step"]) for v in optimizer_state["state"].values()}
    assert steps == {7.0}


def test_a_fresh_run_does_not_overwrite_an_existing_one(synthetic_npz, tmp_path):
    run = tmp_path / "run"
    train_script.main(train_args(run, synthetic_npz, "train.max_steps=2", "train.batch_size=16"))
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    with pytest.raises(ConfigError, match="already holds checkpoints.*resume=latest"):
        train_script.main(train_args(run, synthetic_npz, "train.max_steps=2", "train.batch_size=16"))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
    with pytest.raises(ConfigError, match="cannot resume.*model.channels: 16 -> 8"):
        train_script.main(train_args(run, synthetic_npz, "train.max_steps=3", "train.batch_size=16",
                                     "model.channels=8", "resume=latest"))


def test_a_half_written_metrics_line_does_not_block_resume(synthetic_npz, tmp_path):
    run = tmp_path / "run"
    common = ["train.batch_size=16", "train.log_every=1"]
    train_script.main(train_args(run, synthetic_npz, "train.max_steps=2", *common))
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"split": "train", "step": 3, "lo')  # killed mid-write
    (run / "checkpoints" / ".tmp_step_00000003").mkdir()  # killed mid-save
    train_script.main(train_args(run, synthetic_npz, "train.max_steps=3", "resume=latest", *common))
    assert [r["step"] for r in train_records(run)] == [1, 2, 3]
    assert not (run / "checkpoints" / ".tmp_step_00000003").exists()


@pytest.mark.slow
def test_a_killed_run_resumes_exactly(synthetic_npz, tmp_path):
    common = ["train.batch_size=16", "train.log_every=1", "train.checkpoint_every=3"]
    killed = tmp_path / "killed"
    cmd = [sys.executable, str(ROOT / "stage1_tokenizer" / "train.py"),
           *train_args(killed, synthetic_npz, "train.max_steps=100000", *common)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not (killed / "checkpoints" / "step_00000006" / "COMPLETE").exists():
            assert proc.poll() is None, "training process died"
            assert time.time() < deadline, "no checkpoint within 240 s"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    train_script.main(train_args(killed, synthetic_npz, "train.max_steps=10", "resume=latest", *common))
    full = tmp_path / "full"
    train_script.main(train_args(full, synthetic_npz, "train.max_steps=10", *common))
    a, b = train_records(full), train_records(killed)
    assert [r["step"] for r in b] == list(range(1, 11))  # steps logged after the last checkpoint were dropped
    assert [r["loss"] for r in a] == [r["loss"] for r in b]


@pytest.mark.slow
def test_two_process_cpu_run_through_accelerate(synthetic_npz, tmp_path):
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "stage1_tokenizer" / "train.py"),
           *train_args(run, synthetic_npz, "train.max_steps=6", "train.batch_size=16", "train.log_every=2",
                       "train.checkpoint_every=3", "train.final_eval=true")]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 processes; micro-batch 8" in result.stderr
    records = train_records(run)
    assert [r["step"] for r in records] == [2, 4, 6]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_images"] == 10  # the whole held-out split, no DDP padding duplicates
    assert EdVAE.from_pretrained(run / "tokenizer").config.channels == 16
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000003", "step_00000006"]


def test_evaluate_cli_writes_metrics_grid_and_histogram(synthetic_npz, tmp_path):
    run = tmp_path / "run"
    train_script.main(train_args(run, synthetic_npz, "train.max_steps=2", "train.batch_size=16"))
    out = tmp_path / "eval" / "metrics.json"
    metrics = evaluate_cli.main(["--checkpoint", str(run), "--data", str(synthetic_npz), "--out", str(out),
                                 "--batch-size", "4"])
    saved = json.loads(out.read_text())
    for key in ("mse", "psnr", "perplexity_batch", "perplexity_split", "codes_used", "mean_uncertainty", "n_images"):
        assert key in saved and saved[key] == metrics[key]
    assert saved["n_images"] == 10 and saved["protocol"]["split"] == "test"
    assert 0 < saved["mse"] < 1 and 1 <= saved["codes_used"] <= 512
    assert (tmp_path / "eval" / "metrics_recon.png").is_file() and (tmp_path / "eval" / "metrics_usage.png").is_file()
    # the same numbers as a direct computation over the held-out images
    model = EdVAE.from_pretrained(run / "tokenizer")
    from stage1_tokenizer.config import DataConfig
    from stage1_tokenizer.data import build_dataset

    images = torch.stack(list(build_dataset(DataConfig(dataset="auto", path=str(synthetic_npz)), "test")))
    with torch.no_grad():
        model.eval()
        direct = model(images)
    assert saved["mse"] == pytest.approx(direct.mse.item(), rel=1e-5)
    assert saved["codes_used"] == len(torch.unique(direct.indices))


@pytest.mark.slow
def test_two_process_evaluation_equals_one_process(synthetic_npz, tmp_path):
    run = tmp_path / "run"
    train_script.main(train_args(run, synthetic_npz, "train.max_steps=2", "train.batch_size=16",
                                 "data.test_fraction=0.4"))  # 38 test images: uneven over 2 processes x batch 4
    single = evaluate_cli.main(["--checkpoint", str(run), "--data", str(synthetic_npz), "--out",
                                str(tmp_path / "one.json"), "--batch-size", "4"])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "stage1_tokenizer.evaluate",
           "--checkpoint", str(run), "--data", str(synthetic_npz), "--out", str(tmp_path / "two.json"),
           "--batch-size", "4"]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    double = json.loads((tmp_path / "two.json").read_text())
    assert double["n_images"] == single["n_images"] == 38
    assert double["codes_used"] == single["codes_used"]
    for key in ("mse", "psnr", "perplexity_batch", "perplexity_split", "mean_uncertainty"):
        assert double[key] == pytest.approx(single[key], rel=1e-6), key


def test_bad_runs_fail_with_clear_messages(synthetic_npz, tmp_path):
    with pytest.raises(DataNotFoundError, match="no .npz file"):
        train_script.main(train_args(tmp_path / "r", tmp_path / "missing.npz", "data.dataset=npz"))
    with pytest.raises(ConfigError, match="larger than the training split"):
        train_script.main(train_args(tmp_path / "r", synthetic_npz, "train.batch_size=128"))
    with pytest.raises(ConfigError, match="data.dataset.*'cifar' is not one of"):
        train_script.main(train_args(tmp_path / "r", synthetic_npz, "data.dataset=cifar"))
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint folder"):
        train_script.main(train_args(tmp_path / "r", synthetic_npz, f"resume={tmp_path}/nowhere"))
    result = subprocess.run([sys.executable, str(ROOT / "stage1_tokenizer" / "train.py"), "--config",
                             str(TINY_CONFIG), "train.max_stepz=3", *QUIET], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and "Did you mean 'train.max_steps'" in result.stderr
    assert "Traceback" not in result.stderr


def test_training_curves_plot(synthetic_npz, tmp_path):
    from stage1_tokenizer.plots import plot_run

    run = tmp_path / "run"
    train_script.main(train_args(run, synthetic_npz, "train.max_steps=4", "train.batch_size=16", "train.log_every=1"))
    out = plot_run(run, tmp_path / "curves.png")
    assert out.stat().st_size > 10_000
    with pytest.raises(FileNotFoundError, match="no metrics"):
        plot_run(tmp_path, tmp_path / "x.png")


def test_random_hflip_mirrors_about_half_the_batch_and_repeats_with_its_arguments():
    images = torch.rand(400, 3, 4, 6)
    out = train_script.random_hflip(images, 42, 7, 0, 0)
    mirrored = [bool(torch.equal(o, i.flip(-1))) for o, i in zip(out, images)]
    kept = [bool(torch.equal(o, i)) for o, i in zip(out, images)]
    assert all(m != k for m, k in zip(mirrored, kept))        # every image is either mirrored or untouched
    assert 150 < sum(mirrored) < 250                           # a fair coin per image
    assert torch.equal(out, train_script.random_hflip(images, 42, 7, 0, 0))      # same arguments, same flips
    assert not torch.equal(out, train_script.random_hflip(images, 42, 8, 0, 0))  # another step, other flips
    assert not torch.equal(out, train_script.random_hflip(images, 42, 7, 0, 1))  # another process, other flips
