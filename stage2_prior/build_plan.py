"""The build's plan: each stage, its steps, and its wall time here, estimated from a few measured steps.

The tokenizer's and the prior's training steps are timed in this process on the actual configs (the model
each stage will build, a random batch of the configured shape, the configured precision; capped at
``MEASURE_BATCH`` images or sequences and scaled linearly to the configured batch). The other stages are
derived from those two measurements (encoding is about a third of a training step per image, a decoder
fine-tune step about 0.6 of a tokenizer step) or from an assumed Inception rate for the FID, plus an assumed start-up time per child process: they are rough, and the plan says so.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

MEASURE_BATCH = 8
START_SECONDS = 10.0   # assumed per stage: a child process importing torch, transformers and Accelerate
INCEPTION_IMAGES_PER_S = {"cpu": 8.0, "cuda": 500.0}   # assumed (the FID Inception on this 2-core CPU: a few per s)


@dataclass
class StagePlan:
    name: str
    what: str                   # the stage in a few words
    steps: str                  # e.g. "3,000 steps of batch 64"
    seconds: float | None       # estimated wall time here (None: not estimated)
    done: bool = False


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def machine() -> str:
    """This machine in words, for the plan and the model card."""
    import platform

    import torch

    cpu = f"{os.cpu_count()} CPU cores ({platform.machine()}, {platform.system()})"
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, {cpu}"
    return f"{cpu}, no GPU"


def _timed(step, repeats: int = 2) -> float:
    step()  # warm-up (allocations, first-call overheads)
    tic = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - tic) / repeats


def _autocast(dev: str, precision: str):
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(dev, dtype=dtype, enabled=dtype is not None and (dev == "cuda" or dtype == torch.bfloat16))


def tokenizer_step_seconds(cfg) -> float:
    """Seconds per optimizer step of the stage-1 config ``cfg`` (a Stage1Config), measured here."""
    import torch

    from stage1_tokenizer import EdVAE, stage1_loss

    dev, t = device(), cfg.train
    model = EdVAE.from_config(cfg.model).to(dev).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=t.lr)
    batch = min(t.batch_size, MEASURE_BATCH)
    images = torch.rand(batch, 3, cfg.data.image_size, cfg.data.image_size, device=dev)

    def step() -> None:
        with _autocast(dev, t.mixed_precision):
            out = model(images, tau=1.0)
        stage1_loss(out, t.beta_max).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if dev == "cuda":
            torch.cuda.synchronize()

    return _timed(step) * t.batch_size / batch


def prior_step_seconds(cfg, tok_cfg) -> tuple[float, float]:
    """(seconds per training step, seconds per full-length forward pass of one batch) of the stage-2 config
    ``cfg`` on the tokens of the stage-1 config ``tok_cfg``, measured here."""
    import torch

    from stage1_tokenizer import EdVAE
    from stage2_prior.model import PriorSpec, build_prior
    from stage2_prior.tokens import TokenizerFingerprint

    dev, t = device(), cfg.train
    spec = PriorSpec(TokenizerFingerprint.of(EdVAE.from_config(tok_cfg.model), tok_cfg.data.image_size))
    model = build_prior(spec, cfg.model).to(dev).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr)
    batch = min(t.batch_size, MEASURE_BATCH)
    ids = torch.randint(0, spec.codebook_size, (batch, spec.seq_len + 1), device=dev)

    def step() -> None:
        with _autocast(dev, t.mixed_precision):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if dev == "cuda":
            torch.cuda.synchronize()

    def forward() -> None:
        with torch.no_grad():
            model(input_ids=ids)

    return _timed(step) * t.batch_size / batch, _timed(forward, 1) / batch


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "not estimated"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def format_plan(stages: list[StagePlan], preset, machine_name: str) -> str:
    """The plan as printed before the build starts (and kept in the model card)."""
    width = max(len(s.name) for s in stages)
    lines = [f"Plan ({preset.name}: {preset.about}); machine: {machine_name}"]
    for s in stages:
        when = "done, skipped" if s.done else f"about {duration(s.seconds)} here"
        lines.append(f"  {s.name:<{width}}  {s.steps}; {when}  ({s.what})")
    todo = [s.seconds for s in stages if not s.done and s.seconds is not None]
    total = sum(todo)
    lines.append(f"  {'total':<{width}}  about {duration(total)} here (tokenizer and prior: from measured steps; "
                 "the rest: rough)")
    if total > 24 * 3600:
        alternative = f"--preset {preset.cpu_variant}" if preset.cpu_variant else "a smaller preset (--preset tiny to try)"
        where = "use a GPU or " if device() == "cpu" else "use more GPUs (--processes N) or "
        lines.append(f"  That is about {duration(total)} here; {where}{alternative}.")
    return "\n".join(lines)
