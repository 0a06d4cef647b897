"""Part `stage1_speed`: one stage-1 training step at the paper's CelebA and CIFAR-10 configs (width 128, batch 128).

bench_stage1's own step (`train_step`: EdVAE forward, stage1_loss, backward, Adam) in fp32 eager, bf16 autocast,
bf16 + channels-last and torch.compile, each on a fresh model from the same seed and the same batch: images/s,
ms/step, the first step's time (compilation included) and peak memory. Numeric check: the loss after the first
and the last step in bf16 within TOL_FIRST / TOL_LAST of fp32's (a bf16 path that did not train would differ by
the ~5 % the loss falls in those steps; plan.py).
"""

from __future__ import annotations

import math
import statistics
import traceback
from typing import Any

import torch

from bench_stage1 import LR, VARIANTS, BenchConfig, make_batch, peak_memory, timed_step
from stage1_tokenizer.model import EdVAE

from .common import STAGE1_CONFIGS, Recorder, mib, reset_peak, stage1_config
from .plan import TOL_FIRST, TOL_LAST


def run(args: Any, plan: Any, rec: Recorder) -> None:
    device = torch.device(args.device)
    configs = {name: stage1_config(name, plan) for name in STAGE1_CONFIGS}
    order = [(c, v) for c in configs for v in ("fp32", "bf16", "bf16_channels_last")]
    # last: the slowest to start and likeliest to break (--quick: one config, dynamo tracing takes seconds on a CPU)
    order += [(c, "compile") for c in list(configs)[:1 if args.quick else None]]
    need = {"compile": 5 if args.quick else 60}
    losses: dict[tuple[str, str], list[float]] = {}
    for name, key in order:
        cfg, variant = configs[name], VARIANTS[key]
        label = variant.label + (f" ({args.compile_backend})" if variant.compile else "")
        base = {"config": name, "variant": key, "label": label, "batch": cfg.train.batch_size,
                "channels": cfg.model.channels, "image_size": cfg.data.image_size}
        if rec.left() < need.get(key, 1 if args.quick else 5):
            rec.row(**base, status="skipped", reason=f"time: {max(rec.left(), 0):.0f} s left in this part")
            continue
        try:
            torch.manual_seed(args.seed)
            model = EdVAE.from_config(cfg.model).to(device)
            if variant.channels_last:
                model = model.to(memory_format=torch.channels_last)
            model.train()
            optimizer = torch.optim.Adam(model.parameters(), lr=LR)
            forward = torch.compile(model, backend=args.compile_backend) if variant.compile else model
            shape = BenchConfig(name, cfg.model.channels, cfg.data.image_size, cfg.train.batch_size, "")
            images = make_batch(shape, cfg.train.batch_size, variant, device, args.seed)
            reset_peak(device)
            times, step_losses = [], []
            for _ in range(plan.s1_warmup + plan.s1_steps):
                seconds, loss = timed_step(forward, optimizer, images, variant, device)
                times.append(seconds)
                step_losses.append(loss)
            values = [float(v) for v in step_losses]
            timed = times[plan.s1_warmup:]
            rate = statistics.median_low([cfg.train.batch_size / t for t in timed])
            losses[name, key] = values
            rec.row(**base, status="ok", images_per_s=rate, ms_per_step=1000 * cfg.train.batch_size / rate,
                    first_step_s=times[0], **mib(peak_memory(device)), loss_first=values[0], loss_last=values[-1],
                    steps=len(values), finite=all(math.isfinite(v) for v in values))
        except Exception as err:  # one variant failing (a compile graph break, OOM) keeps the others
            rec.row(**base, status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        finally:
            model = optimizer = forward = None
            if variant.compile:
                torch._dynamo.reset()
    check_losses(rec, list(configs), losses)


def check_losses(rec: Recorder, configs: list[str], losses: dict[tuple[str, str], list[float]]) -> None:
    """bf16 against fp32 per config (within the tolerances); every measured loss finite."""
    for name in configs:
        if (name, "fp32") in losses and (name, "bf16") in losses:
            a, b = losses[name, "fp32"], losses[name, "bf16"]
            first, last = abs(b[0] - a[0]) / abs(a[0]), abs(b[-1] - a[-1]) / abs(a[-1])
            rec.check(f"{name}: bf16 loss equals fp32 loss (same seed, batch and steps)",
                      first <= TOL_FIRST and last <= TOL_LAST,
                      f"relative difference {first:.2e} after step 1 (tolerance {TOL_FIRST:g}), {last:.2e} after "
                      f"step {len(a)} (tolerance {TOL_LAST:g}); fp32 {a[0]:.5f} -> {a[-1]:.5f}, "
                      f"bf16 {b[0]:.5f} -> {b[-1]:.5f}")
    bad = [f"{c}/{v}" for (c, v), values in losses.items() if not all(math.isfinite(x) for x in values)]
    rec.check("every measured variant's losses are finite", not bad, ", ".join(bad) or "all finite")
