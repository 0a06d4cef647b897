"""Fine-tune a trained tokenizer's decoder on its own argmax codes (encoder and codebook frozen).

    python -m stage1_tokenizer.finetune_decoder --tokenizer runs/stage1/celeba64/tokenizer \
        --out runs/stage1/celeba64_decoder --steps 1500 [--batch-size 64] [--lr 3e-4] \
        [--mixed-precision bf16 --channels-last] [--resume latest]

Why: EdVAE trains its decoder on relaxed (Gumbel-softmax) samples of the codes, but a
tokenizer is used with hard argmax codes (token extraction, the prior's samples). While
the temperature is still high the decoder has mostly seen soft mixtures and decodes hard
codes worse (measured on CelebA at width 32: 19 dB with argmax codes against 22.6 dB on
the relaxed training codes). This script keeps everything that defines the tokens fixed
(encoder, codebook: the codes of every image, their usage, perplexity and evidential
uncertainty are exactly those of the input tokenizer) and trains only the decoder to
reconstruct images from their argmax codes with MSE. It is the decoder fine-tuning step
familiar from other two-stage generators, not part of the EdVAE paper; the export records
that it was made this way (``decoder_finetune.json``).

The data are the tokenizer's own training split (its ``training_data.json``), with its
horizontal flips when it was trained with them. Checkpoints (decoder + optimizer) go to
``OUT/checkpoints`` and ``--resume latest`` continues a killed run; the result is exported
to ``OUT/tokenizer`` (``EdVAE.from_pretrained``). Multi-process with ``accelerate launch``.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from edvae_common.accel import make_training_accelerator
from edvae_common.config import ConfigError, load_config
from edvae_common.io import read_json, save_image_grid, side_by_side, write_json
from edvae_common.runs import MetricsLog, checkpoint_to_resume, export_atomically, save_checkpoint
from edvae_common.training import (EpochShuffleSampler, TrainState, infinite_batches, micro_batch_size,
                                   warmup_cosine_lr)

from .config import Stage1Config
from .data import build_dataset
from .metrics import evaluate_tokenizer
from .model import TRAINING_DATA_FILE, EdVAE
from .train import random_hflip

logger = logging.getLogger("stage1.finetune_decoder")
RECORD_FILE = "decoder_finetune.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True, help="save_pretrained folder or training run folder to start from")
    p.add_argument("--out", required=True, help="run folder: checkpoints/, metrics.jsonl, images/, tokenizer/")
    p.add_argument("--steps", type=int, default=1500, help="optimizer steps (default 1500)")
    p.add_argument("--batch-size", type=int, default=64, help="images per step over all processes (default 64)")
    p.add_argument("--lr", type=float, default=3e-4, help="peak Adam learning rate (default 3e-4)")
    p.add_argument("--warmup", type=int, default=50, help="linear warm-up steps, then cosine to lr/100 (default 50)")
    p.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format (faster with bf16)")
    p.add_argument("--decoder-channels", type=int, default=None,
                   help="train a fresh decoder of this width n (model.decoder_channels) instead of fine-tuning the "
                        "tokenizer's own; the tokens stay those of the input tokenizer (default: keep its decoder)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--eval-every", type=int, default=250, help="evaluate on the held-out split every N steps")
    p.add_argument("--eval-max-images", type=int, default=1000, help="images of periodic evaluations (final: all)")
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--resume", default=None, help="'latest' or a checkpoint folder under OUT/checkpoints")
    args = p.parse_args(argv)
    for key in ("steps", "batch_size", "log_every", "eval_every", "checkpoint_every"):
        if getattr(args, key) <= 0:
            raise ConfigError(f"--{key.replace('_', '-')} must be positive, got {getattr(args, key)}")
    if args.decoder_channels is not None and (args.decoder_channels < 4 or args.decoder_channels % 4):
        raise ConfigError(f"--decoder-channels must be a positive multiple of 4, got {args.decoder_channels}")
    if args.lr <= 0:
        raise ConfigError(f"--lr must be positive, got {args.lr}")
    return args


def with_decoder_width(model: EdVAE, width: int | None) -> EdVAE:
    """``model`` itself, or a copy whose decoder is a fresh one of width ``width`` (encoder and codebook copied)."""
    if width is None or width == model.config.decoder_width:
        return model
    if model.config.architecture != "edvae":
        raise ConfigError("--decoder-channels needs a tokenizer of the edvae architecture")
    wider = EdVAE.from_config(replace(model.config, decoder_channels=width))
    kept = {k: v for k, v in model.state_dict().items() if not k.startswith("decoder.")}
    missing, unexpected = wider.load_state_dict(kept, strict=False)
    assert not unexpected and all(k.startswith("decoder.") for k in missing), (missing, unexpected)
    return wider.eval()


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    source = Path(args.tokenizer)
    if (source / "config.yaml").is_file() and (source / "tokenizer").is_dir():  # a training run folder
        source = source / "tokenizer"
    if not (source / TRAINING_DATA_FILE).is_file():
        raise ConfigError(f"'{source}' has no {TRAINING_DATA_FILE}: the decoder is fine-tuned on the tokenizer's own "
                          "training data, so start from an export written by stage1_tokenizer/train.py")
    data = load_config(Stage1Config, mapping={"data": read_json(source / TRAINING_DATA_FILE)}).data
    out = Path(args.out)

    # 1. Accelerator and model: encoder and codebook frozen, only the decoder is trained.
    accelerator = make_training_accelerator(out, args.mixed_precision, 1, "none", args.seed)
    model = with_decoder_width(EdVAE.from_pretrained(str(source)), args.decoder_channels).to(accelerator.device)
    model.requires_grad_(False)
    model.eval()  # the frozen part quantizes as at inference: argmax of the logits
    decoder = model.decoder
    decoder.requires_grad_(True)
    decoder.train()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(decoder.parameters(), lr=args.lr)

    # 2. Data: the tokenizer's training split (shuffled, resumable) and its held-out split.
    train_set, test_set = build_dataset(data, "train"), build_dataset(data, "test")
    micro = micro_batch_size(args.batch_size, accelerator.num_processes, 1, len(train_set), key="--batch-size")
    sampler = EpochShuffleSampler(len(train_set), args.seed)
    train_loader = DataLoader(train_set, batch_size=micro, sampler=sampler, drop_last=True,
                              num_workers=data.num_workers, generator=torch.Generator())
    periodic = Subset(test_set, range(min(args.eval_max_images, len(test_set))))
    test_loaders = [DataLoader(part, batch_size=max(micro, 64), shuffle=False) for part in (test_set, periodic)]
    decoder, optimizer, train_loader, *test_loaders = accelerator.prepare(decoder, optimizer, train_loader,
                                                                          *test_loaders)
    state = TrainState()
    accelerator.register_for_checkpointing(state)

    # 3. Resume, or start a fresh run folder.
    checkpoint = checkpoint_to_resume(out, args.resume)
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        logger.info("resumed from %s at step %d", checkpoint, state.step)
    log = MetricsLog(out / "metrics.jsonl", enabled=accelerator.is_main_process)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        log.truncate_after(state.step)
    if state.step == 0:  # the starting point, measured exactly like every later evaluation (all processes)
        start = evaluate_tokenizer(model, test_loaders[1], accelerator).metrics
        log.write({"split": "test", "step": 0, **start})
        if accelerator.is_main_process:
            logger.info("start: held-out psnr %.2f dB with argmax codes, %d codes used", start["psnr"],
                        start["codes_used"])
    decoder.train()

    # 4. The loop: argmax codes of the frozen encoder -> codebook -> decoder, MSE on the [0, 1] scale.
    batches = infinite_batches(train_loader, sampler, state.step)
    tic, seen = time.perf_counter(), 0
    while state.step < args.steps:
        lr = warmup_cosine_lr(state.step, args.lr, args.warmup, args.steps, min_lr_ratio=0.01)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images = next(batches)
        if data.hflip:
            images = random_hflip(images, args.seed, state.step, 0, accelerator.process_index)
        if args.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            codes = model.encode(images)                        # (B, h, w), fixed by the frozen encoder
            z_q = model.quantizer.embed(codes)                  # (B, d, h, w) code vectors, frozen
        with accelerator.autocast():
            recon = decoder(z_q).float() + 0.5                  # the decoder works on the x - 0.5 scale
        loss = F.mse_loss(recon, images.float())
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        seen += len(images)

        # 5. Logs, held-out evaluation, checkpoints.
        if state.step % args.log_every == 0 or state.step == args.steps:
            mse = accelerator.reduce(loss.detach(), "mean").item()
            log.write({"split": "train", "step": state.step, "mse": mse, "lr": lr,
                       "images_per_s": seen * accelerator.num_processes / (time.perf_counter() - tic)})
            tic, seen = time.perf_counter(), 0
        if state.step % args.eval_every == 0 or state.step == args.steps:
            final = state.step == args.steps
            result = evaluate_tokenizer(model, test_loaders[0] if final else test_loaders[1], accelerator)
            decoder.train()  # evaluate_tokenizer leaves the whole (frozen, eval-mode) model in eval mode
            log.write({"split": "test", "step": state.step, **result.metrics})
            if accelerator.is_main_process:
                logger.info("step %d: held-out psnr %.2f dB, mse %.5f (%d images)", state.step,
                            result.metrics["psnr"], result.metrics["mse"], result.metrics["n_images"])
                save_image_grid(side_by_side(result.originals, result.reconstructions),
                                out / "images" / f"recon_{state.step:08d}.png")
        if state.step % args.checkpoint_every == 0 or state.step == args.steps:
            save_checkpoint(accelerator, out, state.step, 2)

    # 6. Export: the frozen encoder and codebook with the new decoder, plus where it came from.
    def write_export(folder: Path) -> None:
        model.save_pretrained(str(folder))
        write_json(folder / TRAINING_DATA_FILE, read_json(source / TRAINING_DATA_FILE))
        write_json(folder / RECORD_FILE, {"source": str(args.tokenizer), "steps": args.steps,
                                          "batch_size": args.batch_size, "lr": args.lr, "warmup": args.warmup,
                                          "decoder_channels": model.config.decoder_width,
                                          "mixed_precision": args.mixed_precision, "seed": args.seed,
                                          "trained": "decoder only, on argmax codes; encoder and codebook frozen"})

    export = export_atomically(accelerator, out, "tokenizer", write_export)
    if accelerator.is_main_process:
        logger.info("exported the tokenizer to %s", export)
    accelerator.end_training()
    return export


if __name__ == "__main__":
    from edvae_common.cli import run_cli

    run_cli(main)
