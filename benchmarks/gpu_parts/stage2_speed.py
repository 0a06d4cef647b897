"""Part `stage2`: the prior's speed on the device, with fresh priors (speed does not depend on the weights' values).

- training: tokens/s of stage2_prior/train.py's step (`sequences`, AdamW) on random codes, sizes plan.prior_sizes
  (small and base), fp32 and bf16 autocast, batch plan.prior_batch x 256 tokens;
- sampling + decoding plan.sample_num faces with the KV cache (`sample_images`, paper-width tokenizer);
- classifier-free guidance (scale 3) in one batched forward against two passes (`generate_codes(cfg_batched=)`);
- the FID Inception extractor's images/s (`InceptionFeatures`; on the device its zero-weight timing stand-in).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import torch

from bench_stage1 import peak_memory, timed
from stage1_tokenizer.model import EdVAE
from stage2_prior.config import PriorModelConfig
from stage2_prior.fid import FIDWeightsNotFound, InceptionFeatures
from stage2_prior.generation import generate_codes, sample_images
from stage2_prior.model import PriorSpec, build_prior
from stage2_prior.tokens import TokenizerFingerprint
from stage2_prior.train import sequences

from .common import Recorder, mib, reset_peak, stage1_config


def run(args: Any, plan: Any, rec: Recorder) -> None:
    device, g = torch.device(args.device), plan.prior_grid
    torch.manual_seed(args.seed)
    tokenizer = EdVAE.from_config(stage1_config("celeba", plan).model).to(device).eval()
    fingerprint = TokenizerFingerprint(codebook_size=tokenizer.codebook_size, grid=[g, g], image_size=4 * g,
                                       weights_hash=tokenizer.weights_hash())
    spec = PriorSpec(fingerprint)
    need = 2 if args.quick else 8   # seconds left for one more row
    train_rows(args, plan, rec, spec, device, need)
    sample_rows(args, plan, rec, spec, tokenizer, device, need)
    guidance_rows(args, plan, rec, PriorSpec(fingerprint, num_classes=10), device, need)
    fid_row(args, plan, rec, device)


def train_rows(args: Any, plan: Any, rec: Recorder, spec: Any, device: Any, need: float) -> None:
    """The step of stage2_prior/train.py on random codes, per size and precision."""
    g = plan.prior_grid
    for size in plan.prior_sizes:
        for precision in ("fp32", "bf16"):
            base = {"what": "train", "size": size, "precision": precision, "batch": plan.prior_batch,
                    "tokens_per_sequence": g * g}
            if rec.left() < need:
                rec.row(**base, status="skipped", reason="time")
                continue
            torch.manual_seed(args.seed)
            model = build_prior(spec, PriorModelConfig(size=size)).to(device).train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=4.5e-4, weight_decay=0.01)
            codes = torch.randint(0, spec.codebook_size, (plan.prior_batch, g * g), device=device)
            ids, targets = sequences({"codes": codes}, spec, 0.0, training=True)

            def step() -> Any:
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    loss = model(input_ids=ids, labels=targets).loss
                loss.backward()
                optimizer.step()
                return loss.detach()

            reset_peak(device)
            timed(step, device)
            times = [timed(step, device) for _ in range(plan.prior_steps)]
            seconds = statistics.median_low([t for t, _ in times])
            loss = float(times[-1][1])
            rec.row(**base, status="ok", tokens_per_s=plan.prior_batch * g * g / seconds, seconds=seconds,
                    parameters=sum(p.numel() for p in model.parameters()), loss=loss, finite=math.isfinite(loss),
                    **mib(peak_memory(device)))
            model = optimizer = None


def sample_rows(args: Any, plan: Any, rec: Recorder, spec: Any, tokenizer: Any, device: Any, need: float) -> None:
    """Sampling + decoding plan.sample_num faces with the KV cache (generate()), per size."""
    g, n = plan.prior_grid, plan.sample_num
    for size in plan.prior_sizes:
        base = {"what": "sample", "size": size, "images": n, "tokens_per_sequence": g * g}
        if rec.left() < need:
            rec.row(**base, status="skipped", reason="time")
            continue
        torch.manual_seed(args.seed)
        prior = build_prior(spec, PriorModelConfig(size=size)).to(device).eval()
        reset_peak(device)
        sample = lambda: sample_images(prior, spec, tokenizer, n, batch_size=n, seed=args.seed)  # noqa: E731
        timed(sample, device)
        seconds, (images, _) = timed(sample, device)
        rec.row(**base, status="ok", images_per_s=n / seconds, tokens_per_s=n * g * g / seconds, seconds=seconds,
                finite=bool(torch.isfinite(images).all()), **mib(peak_memory(device)))


def guidance_rows(args: Any, plan: Any, rec: Recorder, cspec: Any, device: Any, need: float) -> None:
    """Guidance (scale 3) with both branches in one batched forward, against a second pass."""
    size, n = plan.prior_sizes[0], plan.sample_num
    torch.manual_seed(args.seed)
    prior = build_prior(cspec, PriorModelConfig(size=size, class_conditional=True)).to(device).eval()
    guided = {}
    for batched in (True, False):
        base = {"what": "guidance", "size": size, "images": n, "scale": 3.0, "batched": batched}
        if rec.left() < need:
            rec.row(**base, status="skipped", reason="time")
            continue
        run = lambda: generate_codes(prior, cspec, n, batch_size=n, seed=args.seed, class_label=3,  # noqa: E731
                                     cfg_scale=3.0, cfg_batched=batched)
        timed(run, device)
        guided[batched], _ = timed(run, device)
        rec.row(**base, status="ok", images_per_s=n / guided[batched], seconds=guided[batched],
                **({"speedup_over_two_passes": guided[False] / guided[True]} if len(guided) == 2 else {}))


def fid_row(args: Any, plan: Any, rec: Recorder, device: Any) -> None:
    """The FID Inception extractor's images/s at plan.fid_batch (skipped without weights)."""
    base = {"what": "fid_features", "batch": plan.fid_batch}
    try:
        extractor = InceptionFeatures(weights=args.fid_weights, device=device)
    except FIDWeightsNotFound as err:
        rec.row(**base, status="skipped", reason=str(err))
        return
    images = torch.randint(0, 256, (plan.fid_batch, 3, 64, 64), dtype=torch.uint8)
    reset_peak(device)
    timed(lambda: extractor(images), device)
    seconds, features = timed(lambda: extractor(images), device)
    rec.row(**base, status="ok", images_per_s=plan.fid_batch / seconds, seconds=seconds,
            weights=extractor.describe()["weights_file"], features=int(features.shape[1]),
            finite=bool(torch.isfinite(features).all()), **mib(peak_memory(device)))
