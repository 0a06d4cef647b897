"""Train the autoregressive prior over extracted tokens with Accelerate (CPU, one GPU, several GPUs).

    accelerate launch stage2_prior/train.py --config configs/stage2/celeba.yaml \
        [data.tokens=runs/tokens/celeba] [model.size=base] [key=value ...] [--resume latest]

Inputs: a token folder from ``extract_tokens.py`` (``data.tokens``). The run folder
(``output_dir``) receives the resolved config, checkpoints, TensorBoard logs,
``metrics.jsonl`` (train loss and validation NLL in bits per token), sample grids
decoded by the tokenizer and, at the end, the prior in ``output_dir/prior``
(``stage2_prior.load_prior``; ``transformers``' ``from_pretrained`` also reads it).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from edvae_common.accel import make_training_accelerator
from edvae_common.config import ConfigError, flat_hparams, load_config
from edvae_common.io import read_json, save_image_grid, write_json
from edvae_common.runs import export_atomically, save_checkpoint
from edvae_common.training import (EpochShuffleSampler, TrainState, infinite_batches, micro_batch_size, open_run,
                                   warmup_cosine_lr)
from stage2_prior.config import Stage2Config
from stage2_prior.model import PriorSpec, build_prior, init_prior_from
from stage2_prior.ema import EMA
from stage2_prior.tokens import Manifest, TokenDataset

logger = logging.getLogger("stage2.train")
EXPORT_DIR = "prior"
TOKENS_RECORD = "tokens.json"  # the token set a run trains on (a resume must use the same)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML file, e.g. configs/stage2/celeba.yaml")
    parser.add_argument("--resume", default=None, help="'latest' or a checkpoint folder (same as resume=...)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.tokens=runs/tokens/celeba")
    return parser.parse_args(argv)


def sequences(batch: dict, spec: PriorSpec, cfg_dropout: float, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Token batch -> (input_ids, labels): [start token] + codes; the start token is never a target.

    Conditional priors start with the class token, replaced by BOS for a ``cfg_dropout``
    share of training sequences (so the model also learns p(x) for guidance).
    """
    codes = batch["codes"]
    labels = batch["label"] if spec.conditional else None
    if labels is not None and training and cfg_dropout > 0:
        drop = torch.rand(labels.shape, device=labels.device) < cfg_dropout
        labels = torch.where(drop, torch.full_like(labels, -1), labels)
    ids = torch.cat([spec.start_tokens(labels, len(codes), codes.device), codes], dim=1)
    targets = ids.clone()
    targets[:, 0] = -100
    return ids, targets


@torch.no_grad()
def validation_nll(model, loader, spec: PriorSpec, accelerator, max_batches: int | None) -> float:
    """Mean negative log-likelihood of the codes in bits per token, over all processes."""
    model.eval()
    nats, tokens = 0.0, 0
    for i, batch in enumerate(loader):  # always iterated to the end (Accelerate keeps loader state otherwise)
        if max_batches is not None and i >= max_batches:
            continue
        ids, targets = sequences(batch, spec, 0.0, training=False)
        with accelerator.autocast():
            logits = model(input_ids=ids).logits[:, :-1].float()
        per_token = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets[:, 1:], reduction="none")
        # per-sequence sums, gathered without the samples Accelerate repeats to even out the last batch
        per_sequence = accelerator.gather_for_metrics(per_token.double().sum(dim=1))
        nats += float(per_sequence.sum())
        tokens += per_sequence.numel() * spec.seq_len
    model.train()
    return nats / max(tokens, 1) / math.log(2)


def sample_grid(model, spec: PriorSpec, cfg: Stage2Config, tokenizer, path: Path, seed: int) -> None:
    """Decode a grid of samples with the tokenizer (main process only), through the same pipeline as the CLI and app."""
    from stage2_prior.pipeline import Pipeline

    t = cfg.train
    was_training = model.training
    model.eval()
    label = 0 if spec.conditional else None
    samples = Pipeline(tokenizer, model, spec).generate(t.sample_num, temperature=t.sample_temperature,
                                                        top_k=t.sample_top_k, top_p=1.0, seed=seed,
                                                        batch_size=t.sample_num, class_label=label, guidance=1.0)
    save_image_grid(samples.images, path, nrow=int(math.ceil(math.sqrt(t.sample_num))))
    model.train(was_training)


def load_grid_tokenizer(cfg: Stage2Config, manifest: Manifest, device):
    """The tokenizer for sample grids, or None (with a warning) when it is missing or does not match the tokens."""
    from stage1_tokenizer import EdVAE

    path = cfg.tokenizer or manifest.tokenizer.path
    try:
        tokenizer = EdVAE.from_pretrained(path).to(device).eval()
        manifest.tokenizer.check(tokenizer, f"the token set '{cfg.data.tokens}'")
        return tokenizer
    except (OSError, ValueError) as err:
        logger.warning("no sample grids in this run: the tokenizer '%s' cannot be used (%s). Set tokenizer=<folder>.",
                       path, err)
        return None


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    overrides = list(args.overrides) + ([f"resume={args.resume}"] if args.resume else [])
    cfg = load_config(Stage2Config, args.config, overrides)
    t = cfg.train
    run_dir = Path(cfg.output_dir)

    # 1. Accelerator: devices, processes, mixed precision, accumulation, trackers.
    accelerator = make_training_accelerator(run_dir, t.mixed_precision, t.gradient_accumulation_steps, t.tracker,
                                            t.seed)

    # 2. Tokens and the prior's layout.
    manifest = Manifest.load(cfg.data.tokens)
    if cfg.model.class_conditional and manifest.num_classes == 0:
        raise ConfigError(f"model.class_conditional=true needs labels, but the token set '{cfg.data.tokens}' has none")
    spec = PriorSpec(manifest.tokenizer, num_classes=manifest.num_classes if cfg.model.class_conditional else 0)
    train_set = TokenDataset(cfg.data.tokens, cfg.data.train_split)
    val_set = TokenDataset(cfg.data.tokens, cfg.data.val_split) if cfg.data.val_split in manifest.splits else None
    micro = micro_batch_size(t.batch_size, accelerator.num_processes, t.gradient_accumulation_steps, len(train_set),
                             source="the token set", unit="sequences")

    # 3. Model, optimizer (weight decay on matrices only), data loaders.
    model = build_prior(spec, cfg.model)
    if cfg.init_from:  # fine-tune an exported prior (a resume below still restores the run's own weights)
        source_spec = init_prior_from(model, cfg.init_from)
        same = source_spec.tokenizer.tokens_hash == spec.tokenizer.tokens_hash
        logger.info("initialised the prior from '%s'%s", cfg.init_from,
                    "" if same else " (trained on another tokenizer's codes: fine-tuning it on this token set)")
    # weight decay on the blocks' matrices only: not on biases, norms or (token / position) embeddings
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay = [p for p in model.parameters() if p.dim() >= 2 and id(p) not in embeddings]
    no_decay = [p for p in model.parameters() if p.dim() < 2 or id(p) in embeddings]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=t.lr, betas=(t.beta1, t.beta2))
    sampler = EpochShuffleSampler(len(train_set), t.seed)
    train_loader = DataLoader(train_set, batch_size=micro, sampler=sampler, drop_last=True,
                              num_workers=cfg.data.num_workers, generator=torch.Generator())
    loaders = [train_loader]
    if val_set is not None:
        loaders.append(DataLoader(val_set, batch_size=max(micro, 32), shuffle=False, num_workers=cfg.data.num_workers))
    model, optimizer, *loaders = accelerator.prepare(model, optimizer, *loaders)
    train_loader, val_loader = loaders[0], (loaders[1] if val_set is not None else None)
    unwrapped = accelerator.unwrap_model(model)
    state = TrainState()
    accelerator.register_for_checkpointing(state)
    ema = EMA(unwrapped, t.ema_decay) if t.ema_decay else None
    if ema is not None:
        accelerator.register_for_checkpointing(ema)

    # The tokenizer for sample grids (main process only; under a private RNG: its construction draws random numbers).
    tokenizer = None
    if accelerator.is_main_process:
        with torch.random.fork_rng(devices=[]):
            tokenizer = load_grid_tokenizer(cfg, manifest, accelerator.device)

    # 4. Resume, or start a fresh run folder (the restored RNG states continue exactly where they were saved).
    token_record = {"tokenizer": asdict(manifest.tokenizer) | {"path": ""}, "num_classes": spec.num_classes,
                    "train_count": len(train_set)}

    def check_token_set() -> None:
        saved = run_dir / TOKENS_RECORD
        if saved.is_file() and read_json(saved) != token_record:
            raise ConfigError(f"cannot resume the run in '{run_dir}' on another token set: '{cfg.data.tokens}' differs "
                              f"from the one it was trained on ({saved}). Point data.tokens back at it, or start a "
                              "new output_dir.")

    log = open_run(accelerator, run_dir, cfg, state, frozen=("model.", "train.ema_decay"), before_resume=check_token_set)
    if accelerator.is_main_process:
        write_json(run_dir / TOKENS_RECORD, token_record)
        n_params = sum(p.numel() for p in unwrapped.parameters())
        logger.info("%d train / %s val sequences of %d tokens; %s %s (%.2fM parameters, vocab %d); %d processes; "
                    "micro-batch %d; run folder %s", len(train_set), len(val_set) if val_set else 0, spec.seq_len,
                    cfg.model.arch, cfg.model.size, n_params / 1e6, spec.vocab_size, accelerator.num_processes, micro,
                    run_dir)
    if t.tracker != "none":
        accelerator.init_trackers("stage2", config=flat_hparams(cfg))

    batches = infinite_batches(train_loader, sampler, state.step * t.gradient_accumulation_steps)
    progress = tqdm(total=t.max_steps, initial=state.step, disable=not (accelerator.is_main_process and t.progress_bar),
                    desc="stage2", dynamic_ncols=True)
    tic, tokens_seen = time.perf_counter(), 0
    loss_window = torch.zeros(2, device=accelerator.device)  # summed step losses, steps since the last log line
    model.train()

    def evaluate_and_sample(step: int, final: bool) -> None:
        """Validation NLL (and a sample grid) with the weights that will be exported."""
        with ema.swapped(unwrapped) if ema is not None else nullcontext():
            if val_loader is not None and (step % t.eval_every == 0 or final):
                bpt = validation_nll(model, val_loader, spec, accelerator, None if final else t.eval_max_batches)
                record = {"split": "val", "step": step, "nll_bits_per_token": bpt,
                          "nll_bits_per_image": bpt * spec.seq_len, "full": final or t.eval_max_batches is None}
                log.write(record)
                accelerator.log({"val/nll_bits_per_token": bpt}, step=step)
                if accelerator.is_main_process:
                    logger.info("step %d: validation NLL %.4f bits/token", step, bpt)
                    if final:
                        write_json(run_dir / "metrics.json", record)
            if tokenizer is not None and (step % t.sample_every == 0 or final):
                sample_grid(unwrapped, spec, cfg, tokenizer, run_dir / "images" / f"samples_{step:08d}.png", seed=t.seed)
        accelerator.wait_for_everyone()

    # 5. The training loop: one iteration = one optimizer step over batch_size sequences.
    while state.step < t.max_steps:
        lr = warmup_cosine_lr(state.step, t.lr, t.warmup_steps, t.max_steps, t.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=accelerator.device)
        for _ in range(t.gradient_accumulation_steps):
            ids, targets = sequences(next(batches), spec, cfg.model.cfg_dropout, training=True)
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    loss = model(input_ids=ids, labels=targets).loss  # mean cross-entropy over h*w targets, nats
                accelerator.backward(loss)
                if t.grad_clip is not None and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), t.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach()
            tokens_seen += targets[:, 1:].numel()
        loss_window += torch.stack([loss_sum / t.gradient_accumulation_steps, torch.ones((), device=loss_sum.device)])
        if ema is not None:
            ema.update(unwrapped)
        state.step += 1
        progress.update(1)

        # 6. Logging, evaluation, sample grids, checkpoints.
        if state.step % t.log_every == 0 or state.step == t.max_steps:
            window = accelerator.reduce(loss_window, "sum")
            mean_loss = (window[0] / window[1]).item()  # mean over the steps since the last line and processes
            loss_window.zero_()
            elapsed = time.perf_counter() - tic
            record = {"step": state.step, "loss": mean_loss, "bits_per_token": mean_loss / math.log(2), "lr": lr,
                      "tokens_per_s": tokens_seen * accelerator.num_processes / max(elapsed, 1e-9)}
            accelerator.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=state.step)
            log.write({"split": "train", **record})
            progress.set_postfix(bpt=f"{record['bits_per_token']:.3f}")
            tic, tokens_seen = time.perf_counter(), 0
        final = state.step == t.max_steps
        if state.step % t.eval_every == 0 or state.step % t.sample_every == 0 or final:
            evaluate_and_sample(state.step, final)
        if state.step % t.checkpoint_every == 0 or final:
            save_checkpoint(accelerator, run_dir, state.step, t.checkpoints_total_limit)
    progress.close()

    # 7. Export the prior (EMA weights when enabled): a transformers folder with the tokenizer fingerprint inside.
    def write_export(folder: Path) -> None:
        with ema.swapped(unwrapped) if ema is not None else nullcontext():
            unwrapped.save_pretrained(str(folder))
        write_json(folder / "training.json", {"tokens": str(cfg.data.tokens), "steps": state.step,
                                              "config": flat_hparams(cfg), "ema": bool(ema)})

    export = export_atomically(accelerator, run_dir, EXPORT_DIR, write_export)
    if accelerator.is_main_process:
        logger.info("exported the prior to %s", export)
    accelerator.end_training()
    return export


if __name__ == "__main__":
    from edvae_common.cli import run_cli

    run_cli(main)
