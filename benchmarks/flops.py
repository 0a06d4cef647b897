"""The work in a training budget, counted: FLOPs of one training step of each stage, times its steps.

For each ``--pairs STAGE1:STAGE2`` (config files) it counts, with ``torch.utils.flop_counter``:

- stage 1: one forward + backward of the tokenizer at the config's image size, per image (batch 1 on the CPU;
  convolutions are linear in the batch), for every quantizer in ``--quantizers`` (the quantizer is a small
  part of the step, so they differ little), times the config's batch and ``train.max_steps``;
- stage 2: one forward + backward of the prior the config builds (its ``model.arch`` / ``model.size``) on
  sequences of BOS + the tokenizer's grid of codes, at the config's batch, times ``train.max_steps``
  (counted on the meta device: nothing is computed).

Optimizer steps, data loading, evaluation, sampling and FID are not counted: they are small next to these
(sampling with the KV cache costs about 2 x parameters FLOPs per token). The time columns divide the work by a
sustained throughput (``--tflops``, TFLOP/s actually achieved, not the card's peak): they are estimates to
plan a GPU budget with, until ``benchmarks/gpu_check.py`` measures images/s and tokens/s on the card itself.

    python benchmarks/flops.py                      # the paper's CelebA and LSUN Church budgets and the CPU face run
    python benchmarks/flops.py --pairs configs/stage1/tiny.yaml:configs/stage2/tiny.yaml --no-write

Results are printed and written to ``docs/benchmarks.md`` (``--out``; ``--no-write`` skips it) as the section
``## Work of a training budget: `flops.py```; the other sections are kept.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import datetime as dt  # noqa: E402
import shlex  # noqa: E402

from doc_section import write_section  # noqa: E402  (benchmarks/ is on the path: this script's folder)

HEADING = "## Work of a training budget: `flops.py`"
DEFAULT_PAIRS = ["configs/stage1/celeba.yaml:configs/stage2/celeba.yaml",
                 "configs/stage1/lsun_church.yaml:configs/stage2/lsun_church.yaml",
                 "configs/stage1/celeba64_ship.yaml:configs/stage2/celeba64_ship.yaml"]


def tokenizer_flops_per_image(s1, quantizer: str) -> int:
    """FLOPs of one training forward + backward of the tokenizer, per image."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from stage1_tokenizer import EdVAE

    model = EdVAE.from_config(dataclasses.replace(s1.model, quantizer=quantizer)).train()
    images = torch.rand(1, 3, s1.data.image_size, s1.data.image_size)
    with FlopCounterMode(display=False) as counter:
        model(images).recon.float().mean().backward()
    return counter.get_total_flops()


def prior_flops_per_sequence(s1, s2) -> tuple[int, int, int]:
    """(FLOPs of one training forward + backward per sequence, parameters, tokens per image) of the prior."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from stage1_tokenizer import EdVAE
    from stage2_prior.model import PriorSpec, build_prior
    from stage2_prior.tokens import TokenizerFingerprint

    with torch.device("meta"):
        tokenizer = EdVAE.from_config(s1.model)
    grid = list(tokenizer.grid_shape(s1.data.image_size))
    spec = PriorSpec(TokenizerFingerprint(codebook_size=s1.model.codebook_size, grid=grid,
                                          image_size=s1.data.image_size, weights_hash=""))
    with torch.device("meta"):
        prior = build_prior(spec, s2.model)
        ids = torch.zeros(1, spec.seq_len + 1, dtype=torch.long)   # [BOS] + the codes, as stage2_prior/train.py
    with FlopCounterMode(display=False) as counter:
        prior(input_ids=ids, labels=ids).loss.backward()
    return counter.get_total_flops(), sum(p.numel() for p in prior.parameters()), spec.seq_len


def count(pair: str, quantizers: list[str]) -> dict:
    from edvae_common.config import load_config
    from stage1_tokenizer import Stage1Config
    from stage2_prior.config import Stage2Config

    stage1, _, stage2 = pair.partition(":")
    if not stage2:
        raise SystemExit(f"--pairs takes STAGE1.yaml:STAGE2.yaml, got '{pair}'")
    s1, s2 = load_config(Stage1Config, stage1, []), load_config(Stage2Config, stage2, [])
    per_image = {q: tokenizer_flops_per_image(s1, q) for q in quantizers}
    per_sequence, params, tokens = prior_flops_per_sequence(s1, s2)
    return {
        "stage1": stage1, "stage2": stage2, "image_size": s1.data.image_size, "width": s1.model.channels,
        "s1_batch": s1.train.batch_size, "s1_steps": s1.train.max_steps, "s1_precision": s1.train.mixed_precision,
        "tokenizer_flops_per_image": per_image,
        "tokenizer_total": {q: f * s1.train.batch_size * s1.train.max_steps for q, f in per_image.items()},
        "prior": f"{s2.model.arch} `{s2.model.size}`", "prior_params": params, "tokens_per_image": tokens,
        "s2_batch": s2.train.batch_size, "s2_steps": s2.train.max_steps, "s2_precision": s2.train.mixed_precision,
        "prior_flops_per_sequence": per_sequence,
        "prior_total": per_sequence * s2.train.batch_size * s2.train.max_steps,
    }


def duration(flop: float, tflops: float) -> str:
    """FLOPs at a sustained rate as a readable time."""
    seconds = flop / (tflops * 1e12)
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h" if seconds < 36_000 else f"{seconds / 3600:.0f} h"


def amount(flop: float) -> str:
    for unit, scale in (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12)):
        if flop >= scale:
            return f"{flop / scale:.3g} {unit}"
    return f"{flop / 1e9:.3g} GFLOP"


def precision(setting: str) -> str:
    return "fp32" if setting == "no" else setting


def tables(rows: list[dict], tflops: list[float]) -> str:
    rate_cols = " | ".join(f"time at {t:g} TFLOP/s" for t in tflops)
    lines = [f"| stage | config | model | work | steps x batch | total | {rate_cols} |",
             "|---|---|---|---|---|---|" + "---|" * len(tflops)]
    for r in rows:
        name = Path(r["stage1"]).stem
        per_q = r["tokenizer_flops_per_image"]
        lo, hi = min(per_q.values()), max(per_q.values())
        total = max(r["tokenizer_total"].values())
        spread = f"{lo / 1e9:.1f}" if hi - lo < 0.05e9 else f"{lo / 1e9:.1f}-{hi / 1e9:.1f}"
        lines.append(
            f"| tokenizer | `{r['stage1']}` | {r['image_size']}x{r['image_size']}, width {r['width']}, "
            f"{precision(r['s1_precision'])} | {spread} GFLOP per image | {r['s1_steps']:,} x {r['s1_batch']} | "
            f"{amount(total)} | " + " | ".join(duration(total, t) for t in tflops) + " |")
        lines.append(
            f"| prior | `{r['stage2']}` | {r['prior']}, {r['prior_params'] / 1e6:.1f}M parameters, "
            f"{r['tokens_per_image']} + 1 tokens, {precision(r['s2_precision'])} | "
            f"{r['prior_flops_per_sequence'] / 1e9:.1f} GFLOP per sequence | {r['s2_steps']:,} x {r['s2_batch']} | "
            f"{amount(r['prior_total'])} | " + " | ".join(duration(r['prior_total'], t) for t in tflops) + " |")
        pair_total = total + r["prior_total"]
        lines.append(f"| **tokenizer + prior** | `{name}` | | | | {amount(pair_total)} | "
                     + " | ".join(duration(pair_total, t) for t in tflops) + " |")
    return "\n".join(lines)


def section(rows: list[dict], args: argparse.Namespace) -> str:
    import torch

    quantizer_lines = [
        f"- `{Path(r['stage1']).stem}` tokenizer, GFLOP per image by quantizer: "
        + ", ".join(f"{q} {f / 1e9:.2f}" for q, f in r["tokenizer_flops_per_image"].items()) for r in rows]
    return "\n".join([
        HEADING, "",
        f"- date: {dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}; torch {torch.__version__}",
        f"- command: `{shlex.join(['python', 'benchmarks/flops.py', *args.argv])}`",
        "- counted with `torch.utils.flop_counter.FlopCounterMode` (a multiply-add is 2 FLOPs): one training forward "
        "+ backward per image (tokenizer) or per sequence (prior), times batch and steps; optimizer, data, evaluation, "
        "sampling and FID not counted",
        "- time = total / sustained throughput: estimates for planning, not measurements. For scale: an H100 SXM's "
        "dense peak is 989 TFLOP/s in bf16 and 495 in TF32 (NVIDIA's data sheet); transformer training commonly "
        "sustains 30-50% of the bf16 peak. `benchmarks/gpu_check.py` measures the real images/s and tokens/s "
        "(docs/benchmarks_gpu.md). Small models (the CPU face run's) are bound by per-step overheads on a GPU, not by "
        "FLOPs, so the time columns do not apply to them; on the 2-core CPU they sustain about 50-60 GFLOP/s a thread",
        *quantizer_lines, "", tables(rows, args.tflops), ""])


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", nargs="+", default=DEFAULT_PAIRS, help="STAGE1.yaml:STAGE2.yaml (default: %(default)s)")
    p.add_argument("--quantizers", nargs="+", default=None, help="stage-1 quantizers to count (default: all six)")
    p.add_argument("--tflops", type=float, nargs="+", default=[100.0, 400.0],
                   help="sustained TFLOP/s for the time columns (default: %(default)s)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    import torch

    from stage1_tokenizer import QUANTIZERS

    torch.manual_seed(0)
    quantizers = args.quantizers or list(QUANTIZERS)
    unknown = [q for q in quantizers if q not in QUANTIZERS]
    if unknown:
        raise SystemExit(f"unknown quantizer(s) {', '.join(unknown)}; available: {', '.join(QUANTIZERS)}")
    rows = [count(pair, quantizers) for pair in args.pairs]
    text = section(rows, args)
    print(text)
    if not args.no_write:
        write_section(args.out, HEADING, text)
        print(f"written to {args.out}")
    return text


if __name__ == "__main__":
    main()
