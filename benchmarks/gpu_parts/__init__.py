"""The parts of the prepared GPU check (benchmarks/gpu_check.py), one module each.

    env              env.py              device, versions, pyproject.toml's requirements against what is installed
    stage1_speed     stage1_speed.py     one stage-1 training step at the paper configs: fp32 / bf16 / channels-last /
                                         torch.compile, images/s, peak memory, fp32-vs-bf16 loss check
    stage1_cli       stage1_cli.py       `accelerate launch stage1_tokenizer/train.py`: checkpoints, SIGKILL, resume
    stage2           stage2_speed.py     prior training tokens/s, sampling, guidance, the FID extractor's images/s
    pipeline         app_pipeline.py     the app's stage2_prior.Pipeline on the shipped pair, on the device
    celeba_train     train_tokenizer.py  the paper-width CelebA tokenizer trained with the time left, saved in fp16

Each module has ``run(args, plan, rec)``: it measures with the sizes of ``plan`` (plan.py) and reports rows,
checks and a summary through ``rec`` (common.Recorder). gpu_check.py runs each part in its own worker
subprocess (``--worker NAME``), which imports only that part's module; report.py turns the results into Markdown.
"""

from __future__ import annotations

import importlib
from typing import Callable

# part name -> module, in the order the check runs them
PART_MODULES = {"env": "env", "stage1_speed": "stage1_speed", "stage1_cli": "stage1_cli", "stage2": "stage2_speed",
                "pipeline": "app_pipeline", "celeba_train": "train_tokenizer"}
PART_NAMES = list(PART_MODULES)


def part_runner(name: str) -> Callable:
    """The ``run(args, plan, rec)`` of part ``name`` (its module imported now, and only it)."""
    return importlib.import_module(f"{__name__}.{PART_MODULES[name]}").run
