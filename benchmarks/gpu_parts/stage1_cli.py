"""Part `stage1_cli`: the real `accelerate launch stage1_tokenizer/train.py` on the device, killed and resumed.

The CelebA config (bf16 + channels-last) on synthetic 64 x 64 images, plan.cli_steps steps with a checkpoint
every plan.cli_checkpoint: SIGKILL of the launcher's process group once the checkpoint at twice that step is
complete, then the same command with `--resume latest` to the end. Checks: resumed from that checkpoint, ran to
the end, every logged step once in metrics.jsonl, the tokenizer exported and loadable; the CLI's own images/s.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import time
from typing import Any

import numpy as np

from edvae_common.runs import list_checkpoints
from stage1_tokenizer.model import EdVAE

from .common import STAGE1_CONFIGS, Recorder, kill_group, read_jsonl, stage1_config, tail, train_overrides


def run(args: Any, plan: Any, rec: Recorder) -> None:
    work = args.work / "stage1_cli"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    data, run_dir = work / "synthetic.npz", work / "run"
    rng = np.random.default_rng(args.seed)
    np.savez(data, images=rng.integers(0, 256, (plan.cli_images, 64, 64, 3), dtype=np.uint8))
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no"]
    if args.device == "cpu":
        launch += ["--cpu"]
    cmd = [*launch, "stage1_tokenizer/train.py", "--config", STAGE1_CONFIGS["celeba"],
           *train_overrides(run_dir, data, plan, f"train.max_steps={plan.cli_steps}", "data.test_fraction=0.05",
                            f"train.checkpoint_every={plan.cli_checkpoint}", "train.checkpoints_total_limit=2",
                            f"train.log_every={plan.cli_log_every}")]
    kill_at = 2 * plan.cli_checkpoint
    start, proc = time.time(), rec.spawn(cmd, work / "first.log")
    killed_at = None
    while proc.poll() is None and killed_at is None:
        done = list_checkpoints(run_dir)
        if done and done[-1][0] >= kill_at:
            kill_group(proc)  # SIGKILL to the launcher and the training process
            killed_at = done[-1][0]
        elif time.time() > rec.deadline:
            kill_group(proc)
            raise TimeoutError(f"no step-{kill_at} checkpoint in time; log tail:\n{tail(work / 'first.log')}")
        time.sleep(0.05)
    first_s = time.time() - start
    rec.check("first run killed (SIGKILL) after a complete checkpoint", killed_at is not None,
              f"killed after the step-{killed_at} checkpoint, {first_s:.1f} s after the launch" if killed_at else
              f"the run ended by itself (exit {proc.returncode}) before its step-{kill_at} checkpoint:\n"
              f"{tail(work / 'first.log')}")
    if killed_at is None:
        return
    start = time.time()
    proc = rec.spawn([*cmd, "--resume", "latest"], work / "resume.log")
    code = rec.wait(proc, work / "resume.log")
    resume_s, log = time.time() - start, (work / "resume.log").read_text(errors="replace")
    rec.check("--resume latest ran to the end", code == 0,
              f"exit {code}" + ("" if code == 0 else f":\n{tail(work / 'resume.log')}"))
    rec.check("it resumed from the last checkpoint", f"at step {killed_at}" in log and "resumed from" in log,
              next((ln.strip() for ln in log.splitlines() if "resumed from" in ln), "no 'resumed from' line"))
    train = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("split") == "train"]
    steps = [r["step"] for r in train]
    expected = sorted(set(range(plan.cli_log_every, plan.cli_steps + 1, plan.cli_log_every)) | {plan.cli_steps})
    rec.check("metrics.jsonl holds every logged step once", steps == expected,
              f"steps {steps[:3]}...{steps[-3:]}" if steps != expected else f"{len(steps)} records, steps "
              f"{expected[0]}..{expected[-1]}")
    exported = (run_dir / "tokenizer" / "model.safetensors").is_file()
    if exported:
        EdVAE.from_pretrained(run_dir / "tokenizer")
    rec.check("the tokenizer was exported and loads", exported, str(run_dir / "tokenizer"))
    after = [r["images_per_s"] for r in train if r["step"] > killed_at + plan.cli_log_every]  # first window: start-up
    metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
    rec.summary(killed_after_step=killed_at, first_run_s=first_s, resumed_run_s=resume_s, steps=plan.cli_steps,
                batch=stage1_config("celeba", plan).train.batch_size,
                images_per_s=statistics.median(after) if after else None,
                final_loss=train[-1]["loss"] if train else None, test_mse=metrics.get("mse"))
