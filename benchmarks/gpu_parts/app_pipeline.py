"""Part `pipeline`: the app's library calls on the device, on the shipped pair (checkpoints/celeba64).

`Pipeline.from_pretrained(..., device=...)`: generate plan.sample_num faces, reconstruct the example face, complete
its bottom rows; times of the first and the second call. Checks: the pair is on the device, the same seed twice
gives the same images (generate, complete), the kept rows are kept, and the reconstruction's PSNR equals the
CPU's within 0.05 dB.
"""

from __future__ import annotations

from typing import Any

import torch

from bench_stage1 import timed
from stage2_prior.pipeline import Pipeline

from .common import REPO_ROOT, Recorder

SHIPPED = REPO_ROOT / "checkpoints" / "celeba64"
EXAMPLE_FACE = REPO_ROOT / "app" / "examples" / "face_1_000954.png"


def run(args: Any, plan: Any, rec: Recorder) -> None:
    device = torch.device(args.device)
    pipe = Pipeline.from_pretrained(SHIPPED / "tokenizer", SHIPPED / "prior", device=device)
    rec.check("the pair is on the device", pipe.device.type == device.type, str(pipe.device))
    n = plan.sample_num
    t1, a = timed(lambda: pipe.generate(n, seed=args.seed, batch_size=n), device)
    t2, b = timed(lambda: pipe.generate(n, seed=args.seed, batch_size=n), device)
    same = torch.equal(a.codes, b.codes) and torch.equal(a.images, b.images)
    rec.check("generate: the same seed twice gives the same images", same,
              "identical codes and images" if same else
              f"codes differ at {int((a.codes != b.codes).sum())} positions, images by up to "
              f"{float((a.images - b.images).abs().max()):.3g}")
    rec.row(what="generate", images=n, status="ok", seconds=t2, first_call_s=t1, images_per_s=n / t2)

    t, r = timed(lambda: pipe.reconstruct(EXAMPLE_FACE), device)
    if device.type != "cpu":
        cpu = Pipeline.from_pretrained(SHIPPED / "tokenizer", SHIPPED / "prior", device="cpu").reconstruct(EXAMPLE_FACE)
        rec.check("reconstruct: PSNR equals the CPU's (0.05 dB)", abs(r.psnr - cpu.psnr) <= 0.05,
                  f"{r.psnr:.3f} dB on {device.type}, {cpu.psnr:.3f} dB on the CPU")
    rec.check("reconstruct: a face comes back (PSNR > 15 dB)", r.psnr > 15, f"{r.psnr:.2f} dB")
    rec.row(what="reconstruct", images=1, status="ok", seconds=t, psnr=r.psnr, distinct_codes=r.distinct_codes,
            mean_uncertainty=r.mean_uncertainty)

    keep = pipe.grid[0] - 2 if args.quick else pipe.grid[0] // 2   # --quick: sample two rows only
    t1, c = timed(lambda: pipe.complete(EXAMPLE_FACE, keep_rows=keep, num=4, seed=args.seed), device)
    t2, d = timed(lambda: pipe.complete(EXAMPLE_FACE, keep_rows=keep, num=4, seed=args.seed), device)
    same = torch.equal(c.codes, d.codes) and torch.equal(c.completions, d.completions)
    kept = torch.equal(c.codes[:, :keep], c.codes[:1, :keep].expand(len(c.codes), -1, -1))
    rec.check("complete: the same seed twice gives the same images, the kept rows are kept", same and kept,
              f"same: {same}, kept rows identical across the 4: {kept}")
    rec.row(what="complete", images=4, status="ok", seconds=t2, first_call_s=t1, images_per_s=4 / t2, keep_rows=keep)
