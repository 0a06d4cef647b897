"""How much of everything the GPU check runs: the real sizes on a GPU (FULL), tiny ones for the CPU dry run (QUICK),
and the tolerance of its numeric check."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from . import PART_NAMES

# stage1_speed's numeric check, fp32 against bf16 autocast, same seed and batch: the relative loss difference allowed
# after the first step and after the last (13th) one. Measured on a CPU at the paper width (batch 16): at most 2.5e-4
# over 13 steps. A bf16 path that did not train at all would differ by the ~5 % the loss falls in those steps.
TOL_FIRST, TOL_LAST = 5e-3, 2e-2


@dataclass(frozen=True)
class Plan:
    """Sizes, step counts and time needs of every part."""

    s1_overrides: tuple[str, ...]   # stage-1 config overrides (quick: narrow model, small batch)
    s1_warmup: int                  # untimed training steps (compilation happens here)
    s1_steps: int                   # timed training steps
    cli_steps: int                  # the CLI run's train.max_steps
    cli_checkpoint: int             # checkpoint_every; the first run is killed once one at >= 2 x this is complete
    cli_log_every: int
    cli_images: int                 # synthetic 64 x 64 images for the CLI run
    prior_sizes: tuple[str, ...]    # stage2_prior/sizes.py names
    prior_grid: int                 # token grid side (CelebA: 16, 256 tokens)
    prior_batch: int
    prior_steps: int                # timed prior training steps (after one warm-up step)
    sample_num: int                 # images sampled at once
    fid_batch: int
    train_steps: Optional[int]      # celeba_train's max_steps; None: from the time left and the measured speed
    needs: dict = field(default_factory=dict)   # seconds a part needs to be worth starting
    caps: dict = field(default_factory=dict)    # seconds a part may take at --minutes 8 (scaled with --minutes)


FULL = Plan(s1_overrides=(), s1_warmup=3, s1_steps=10, cli_steps=300, cli_checkpoint=100, cli_log_every=25,
            cli_images=2048, prior_sizes=("small", "base"), prior_grid=16, prior_batch=128, prior_steps=5,
            sample_num=64, fid_batch=200, train_steps=None,
            needs={"stage1_speed": 40, "stage1_cli": 45, "stage2": 30, "pipeline": 15, "celeba_train": 75},
            caps={"stage1_speed": 150, "stage1_cli": 80, "stage2": 80, "pipeline": 40})
QUICK = Plan(s1_overrides=("model.channels=8", "train.batch_size=2"), s1_warmup=1, s1_steps=1, cli_steps=12,
             cli_checkpoint=2, cli_log_every=2, cli_images=48, prior_sizes=("tiny",), prior_grid=4, prior_batch=2,
             prior_steps=1, sample_num=2, fid_batch=2, train_steps=3,
             needs={name: 5 for name in PART_NAMES[1:]},
             caps={"stage1_speed": 150, "stage1_cli": 80, "stage2": 80, "pipeline": 40})


def plan_for(quick: bool) -> Plan:
    return QUICK if quick else FULL
