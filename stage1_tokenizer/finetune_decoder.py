"""Fine-tune a trained tokenizer's decoder on its own argmax codes (encoder and codebook frozen).

    python -m stage1_tokenizer.finetune_decoder --tokenizer runs/stage1/celeba64/tokenizer \
        --out runs/stage1/celeba64_decoder --steps 1500 [--batch-size 64] [--lr 3e-4] \
        [--mixed-precision bf16 --channels-last] [--decoder-channels 64] [--adversarial-weight 0.1] \
        [--resume latest]

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

Two options go further, still without touching a token:
- ``--decoder-channels N`` trains a fresh decoder of width N (``model.decoder_channels``)
  in place of the tokenizer's own, e.g. 64 behind a width-32 encoder: more capacity where
  it buys PSNR, at no cost to the prior, whose tokens are unchanged.
- ``--adversarial-weight W`` adds a PatchGAN hinge loss (stage1_tokenizer/discriminator.py)
  balanced against the MSE by VQGAN's adaptive weight, from step ``--adversarial-start``:
  sharper reconstructions and samples (lower FID) at some cost in PSNR.

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
from .discriminator import (PatchDiscriminator, adaptive_weight, discriminator_hinge_loss, frozen_logits,
                            generator_loss)
from .metrics import evaluate_tokenizer
from .model import TRAINING_DATA_FILE, EdVAE
from .train import random_hflip

logger = logging.getLogger("stage1.finetune_decoder")
RECORD_FILE = "decoder_finetune.json"
SHAPE_FILE = "networks.json"  # in the run folder: the options that decide what the checkpoints hold


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
    p.add_argument("--adversarial-weight", type=float, default=0.0,
                   help="weight of a PatchGAN hinge loss added to the MSE, balanced against it by VQGAN's adaptive "
                        "gradient-norm ratio; sharper, less blurred reconstructions (default 0: MSE only)")
    p.add_argument("--adversarial-start", type=int, default=0,
                   help="step at which the discriminator starts training and its loss joins the decoder's (default 0)")
    p.add_argument("--disc-lr", type=float, default=2e-4, help="discriminator Adam learning rate (default 2e-4)")
    p.add_argument("--disc-channels", type=int, default=64, help="discriminator width (default 64)")
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
    if args.lr <= 0 or args.disc_lr <= 0:
        raise ConfigError(f"--lr and --disc-lr must be positive, got {args.lr} and {args.disc_lr}")
    if args.adversarial_weight < 0 or args.adversarial_start < 0 or args.disc_channels <= 0:
        raise ConfigError("--adversarial-weight and --adversarial-start must be >= 0 and --disc-channels positive, got "
                          f"{args.adversarial_weight}, {args.adversarial_start}, {args.disc_channels}")
    return args


def with_decoder_width(model: EdVAE, width: int | None) -> EdVAE:
    """``model`` itself, or a copy whose decoder is a fresh one of width ``width`` (encoder and codebook copied;
    ModelConfig refuses a width for the vqvae architecture)."""
    if width is None or width == model.config.decoder_width:
        return model
    wider = EdVAE.from_config(replace(model.config, decoder_channels=width))
    kept = {k: v for k, v in model.state_dict().items() if not k.startswith("decoder.")}
    missing, unexpected = wider.load_state_dict(kept, strict=False)
    assert not unexpected and all(k.startswith("decoder.") for k in missing), (missing, unexpected)
    return wider.eval()


def tokenizer_folder(path: Path) -> Path:
    """The tokenizer export to start from: ``path`` itself, or the ``tokenizer/`` export of a run folder
    (of stage1_tokenizer/train.py or of an earlier finetune_decoder run)."""
    if not (path / TRAINING_DATA_FILE).is_file() and (path / "tokenizer" / TRAINING_DATA_FILE).is_file():
        path = path / "tokenizer"
    if not (path / TRAINING_DATA_FILE).is_file():
        raise ConfigError(f"'{path}' has no {TRAINING_DATA_FILE} (nor has '{path / 'tokenizer'}'): the decoder is "
                          "fine-tuned on the tokenizer's own training data, so start from an export written by "
                          "stage1_tokenizer/train.py or finetune_decoder, or from the run folder that holds it")
    return path


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    source = tokenizer_folder(Path(args.tokenizer))
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
    adversarial = args.adversarial_weight > 0
    # GAN training wants a short Adam memory (VQGAN's betas); plain MSE fine-tuning keeps Adam's defaults
    betas = (0.5, 0.9) if adversarial else (0.9, 0.999)
    optimizer = torch.optim.Adam(decoder.parameters(), lr=args.lr, betas=betas)
    prepared = [decoder, optimizer]
    if adversarial:  # the discriminator and its optimizer live in the checkpoints too
        discriminator = PatchDiscriminator(model.config.image_channels, args.disc_channels)
        prepared += [discriminator, torch.optim.Adam(discriminator.parameters(), lr=args.disc_lr, betas=(0.5, 0.9))]

    # 2. Data: the tokenizer's training split (shuffled, resumable) and its held-out split.
    train_set, test_set = build_dataset(data, "train"), build_dataset(data, "test")
    micro = micro_batch_size(args.batch_size, accelerator.num_processes, 1, len(train_set), key="--batch-size")
    sampler = EpochShuffleSampler(len(train_set), args.seed)
    train_loader = DataLoader(train_set, batch_size=micro, sampler=sampler, drop_last=True,
                              num_workers=data.num_workers, generator=torch.Generator())
    periodic = Subset(test_set, range(min(args.eval_max_images, len(test_set))))
    test_loaders = [DataLoader(part, batch_size=max(micro, 64), shuffle=False) for part in (test_set, periodic)]
    *prepared, train_loader, test_all, test_periodic = accelerator.prepare(*prepared, train_loader, *test_loaders)
    decoder, optimizer, test_loaders = prepared[0], prepared[1], [test_all, test_periodic]
    discriminator, disc_optimizer = prepared[2:] if adversarial else (None, None)
    bare_discriminator = accelerator.unwrap_model(discriminator) if adversarial else None  # for the decoder's step
    last_layer = accelerator.unwrap_model(decoder).blocks.output.conv.weight  # where VQGAN's balance is taken
    state = TrainState()
    accelerator.register_for_checkpointing(state)

    # 3. Resume, or start a fresh run folder.
    checkpoint = checkpoint_to_resume(out, args.resume)
    shape = {"decoder_channels": model.config.decoder_width, "adversarial": adversarial,
             "disc_channels": args.disc_channels if adversarial else None}  # what the checkpoints hold
    if checkpoint is not None:
        saved = read_json(out / SHAPE_FILE) if (out / SHAPE_FILE).is_file() else shape
        if saved != shape:
            changed = ", ".join(f"{k}: {saved.get(k)} -> {v}" for k, v in shape.items() if saved.get(k) != v)
            raise ConfigError(f"cannot resume the run in '{out}' with other model options ({changed}): its checkpoints "
                              "hold other networks. Pass the options it was started with, or use a new --out.")
        accelerator.load_state(str(checkpoint))
        logger.info("resumed from %s at step %d", checkpoint, state.step)
    log = MetricsLog(out / "metrics.jsonl", enabled=accelerator.is_main_process)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / SHAPE_FILE, shape)
        log.truncate_after(state.step)
    if state.step == 0:  # the starting point, measured exactly like every later evaluation (all processes)
        start = evaluate_tokenizer(model, test_loaders[1], accelerator).metrics
        log.write({"split": "test", "step": 0, **start})
        if accelerator.is_main_process:
            logger.info("start: held-out psnr %.2f dB with argmax codes, %d codes used", start["psnr"],
                        start["codes_used"])
    decoder.train()

    # 4. The loop: argmax codes of the frozen encoder -> codebook -> decoder, MSE on the [0, 1] scale
    #    (+ the adversarial term once the discriminator has started, which then takes its own step).
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
        loss = mse = F.mse_loss(recon, images.float())
        gan_on = adversarial and state.step >= args.adversarial_start
        if gan_on:
            with accelerator.autocast():
                g_loss = generator_loss(frozen_logits(bare_discriminator, recon - 0.5).float())
            balance = adaptive_weight(mse, g_loss, last_layer)
            loss = mse + args.adversarial_weight * balance * g_loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if gan_on:  # the discriminator's step, on real images against the decoder's (detached) ones
            with accelerator.autocast():
                logits = discriminator(torch.cat([images, recon.detach()]) - 0.5).float()
            d_loss = discriminator_hinge_loss(*logits.chunk(2))
            accelerator.backward(d_loss)
            disc_optimizer.step()
            disc_optimizer.zero_grad(set_to_none=True)
        state.step += 1
        seen += len(images)

        # 5. Logs, held-out evaluation, checkpoints.
        if state.step % args.log_every == 0 or state.step == args.steps:
            extra = {}
            if gan_on:
                extra = {name: accelerator.reduce(value.detach(), "mean").item() for name, value in
                         (("g_loss", g_loss), ("d_loss", d_loss), ("adaptive_weight", balance))}
            log.write({"split": "train", "step": state.step, "mse": accelerator.reduce(mse.detach(), "mean").item(),
                       "lr": lr, **extra,
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
                                          "adversarial_weight": args.adversarial_weight,
                                          "adversarial_start": args.adversarial_start, "disc_lr": args.disc_lr,
                                          "disc_channels": args.disc_channels,
                                          "mixed_precision": args.mixed_precision, "seed": args.seed,
                                          "trained": "decoder only, on argmax codes; encoder and codebook frozen"
                                                     + ("; MSE + adversarial (PatchGAN hinge)" if adversarial else "")})

    export = export_atomically(accelerator, out, "tokenizer", write_export)
    if accelerator.is_main_process:
        logger.info("exported the tokenizer to %s", export)
    accelerator.end_training()
    return export


if __name__ == "__main__":
    from edvae_common.cli import run_cli

    run_cli(main)
