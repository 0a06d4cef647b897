"""Train the stage-1 tokenizer with Accelerate (CPU, one GPU, several GPUs or nodes).

    accelerate launch stage1_tokenizer/train.py --config configs/stage1/cifar10.yaml \
        [key=value ...] [--resume latest]

Everything is set in the config (see stage1_tokenizer/config.py for every key);
``key=value`` overrides any of it, e.g. ``train.max_steps=1000 model.channels=32``.
The run folder (``output_dir``) receives the resolved config, checkpoints,
TensorBoard logs, reconstruction grids, ``metrics.jsonl`` and, at the end, the
exported tokenizer in ``output_dir/tokenizer`` (``EdVAE.from_pretrained``).
``init_from=FOLDER_OR_HUB_ID`` starts from an exported tokenizer's weights
(``init_tokenizer_from``) instead of a random init.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from edvae_common.accel import make_training_accelerator
from edvae_common.config import flat_hparams, load_config
from edvae_common.hub import CheckpointError
from edvae_common.io import save_image_grid, side_by_side, write_json
from edvae_common.runs import checkpoint_to_resume, export_atomically, save_checkpoint
from edvae_common.training import EpochShuffleSampler, TrainState, infinite_batches, micro_batch_size, open_run
from stage1_tokenizer.collapse import CollapseAlarm
from stage1_tokenizer.config import Stage1Config
from stage1_tokenizer.data import build_dataset
from stage1_tokenizer.loss import stage1_loss
from stage1_tokenizer.metrics import code_counts, codes_used, evaluate_tokenizer, perplexity, save_usage_histogram
from stage1_tokenizer.model import TRAINING_DATA_FILE, EdVAE
from stage1_tokenizer.schedules import kl_weight, learning_rate, temperature

logger = logging.getLogger("stage1.train")
EXPORT_DIR = "tokenizer"
# model.* settings that only choose initial values, which init_from replaces: they may differ from the source's
INIT_ONLY = ("conv_bias_init", "vqste_pp_kmeans_init")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML file, e.g. configs/stage1/cifar10.yaml")
    parser.add_argument("--resume", default=None, help="'latest' or a checkpoint folder (same as resume=...)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=1000")
    return parser.parse_args(argv)


def make_loaders(cfg: Stage1Config, accelerator: Accelerator):
    """Train loader (resumable shuffling, per-device micro-batches) and test loaders.

    The test loaders are the whole split, its first ``eval_max_images`` images
    (periodic evaluation) and its first 32 (image grids): each is always iterated
    to its end, so no half-consumed loader is left behind in Accelerate's state.
    """
    t = cfg.train
    train_set, test_set = build_dataset(cfg.data, "train"), build_dataset(cfg.data, "test")
    micro = micro_batch_size(t.batch_size, accelerator.num_processes, t.gradient_accumulation_steps, len(train_set))
    sampler = EpochShuffleSampler(len(train_set), t.seed)
    common = dict(num_workers=cfg.data.num_workers, pin_memory=accelerator.device.type == "cuda")
    train_loader = DataLoader(train_set, batch_size=micro, sampler=sampler, drop_last=True,
                              generator=torch.Generator(), **common)

    def test_loader(limit: int | None) -> DataLoader:
        part = test_set if limit is None or limit >= len(test_set) else Subset(test_set, range(limit))
        return DataLoader(part, batch_size=max(micro, 64), shuffle=False, generator=torch.Generator(), **common)

    test_loaders = (test_loader(None), test_loader(t.eval_max_images), test_loader(32))
    return train_loader, test_loaders, sampler, len(train_set), len(test_set)


def init_tokenizer_from(model: EdVAE, name_or_path: str) -> None:
    """Copy the weights (and buffers) of the exported tokenizer ``name_or_path``, a folder or Hub id, into ``model``.

    Continuing training from an export: every model setting but those in INIT_ONLY must equal the source's
    (its config.json); a mismatch raises a one-line CheckpointError naming each. fp16 weights, as
    benchmarks/gpu_check.py brings back, are upcast into the float32 model.
    """
    try:
        with torch.random.fork_rng(devices=[]):  # building the source draws random numbers: keep the run's stream
            source = EdVAE.from_pretrained(name_or_path)
    except CheckpointError as err:
        raise CheckpointError(f"init_from='{name_or_path}': {err}") from err
    mine, theirs = asdict(model.config), asdict(source.config)
    differ = [f"model.{key}: {theirs[key]} (source) vs {mine[key]} (this run)"
              for key in mine if key not in INIT_ONLY and mine[key] != theirs[key]]
    if differ:
        raise CheckpointError(f"init_from='{name_or_path}' does not fit this run's tokenizer: " + "; ".join(differ)
                              + ". Set those model.* keys to the source's (its config.json), or drop init_from "
                              "to start from a random init.")
    model.load_state_dict(source.state_dict())  # strict; copies into the model's float32 tensors


def random_hflip(images: torch.Tensor, seed: int, step: int, micro_step: int, process: int) -> torch.Tensor:
    """Flip each image left-right with probability 1/2; the coin flips depend only on their arguments."""
    generator = torch.Generator().manual_seed(hash((seed, step, micro_step, process)) & 0x7FFF_FFFF_FFFF_FFFF)
    flip = (torch.rand(images.shape[0], generator=generator) < 0.5).to(images.device)
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def main(argv: list[str] | None = None) -> Path | None:
    args = parse_args(argv)
    overrides = list(args.overrides) + ([f"resume={args.resume}"] if args.resume else [])
    cfg = load_config(Stage1Config, args.config, overrides)
    t = cfg.train
    run_dir = Path(cfg.output_dir)

    # 1. Accelerator: devices, processes, mixed precision, accumulation, trackers.
    accelerator = make_training_accelerator(run_dir, t.mixed_precision, t.gradient_accumulation_steps, t.tracker,
                                            t.seed)

    # 2. Model (random init, or an export's weights), optimizer, data.
    model = EdVAE.from_config(cfg.model)
    if cfg.init_from:
        # a resume restores the run's own weights from its checkpoint, as in stage 2: the source is then not read
        if checkpoint_to_resume(run_dir, cfg.resume) is not None:
            note = f"resuming: init_from='{cfg.init_from}' is not read"
        else:
            init_tokenizer_from(model, cfg.init_from)
            note = (f"initialised the tokenizer from '{cfg.init_from}' (weights {model.weights_hash()[:12]}); "
                    "optimizer and schedules start fresh")
        if accelerator.is_main_process:
            logger.info(note)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=t.lr)
    train_loader, test_loaders, sampler, n_train, n_test = make_loaders(cfg, accelerator)
    model, optimizer, train_loader, *test_loaders = accelerator.prepare(model, optimizer, train_loader, *test_loaders)
    full_test, periodic_test, grid_test = test_loaders
    forward = torch.compile(model) if t.compile else model
    state = TrainState()
    accelerator.register_for_checkpointing(state)

    # 3. Resume, or start a fresh run folder.
    log = open_run(accelerator, run_dir, cfg, state)
    if accelerator.is_main_process:
        logger.info("%d train / %d test images; %d processes; micro-batch %d; run folder %s",
                    n_train, n_test, accelerator.num_processes, t.batch_size // (accelerator.num_processes * t.gradient_accumulation_steps), run_dir)
    if t.tracker != "none":
        accelerator.init_trackers("stage1", config=flat_hparams(cfg))

    # The collapse alarm starts after the beta warm-up; on resume its best values are replayed from the log.
    alarm = CollapseAlarm(start_step=int(t.beta_warmup_steps * t.schedule_scale), min_codes=t.collapse_min_codes,
                          min_perplexity=t.collapse_min_perplexity, max_drop=t.collapse_max_drop)
    alarm.replay(log.read(), state.step)  # every process: their alarms must agree (stop_on_collapse)
    last_window_perplexity, collapsed = None, False

    unwrapped = accelerator.unwrap_model(model)
    k = unwrapped.codebook_size
    batches = infinite_batches(train_loader, sampler, state.step * t.gradient_accumulation_steps)
    progress = tqdm(total=t.max_steps, initial=state.step, disable=not (accelerator.is_main_process and t.progress_bar),
                    desc="stage1", dynamic_ncols=True)
    window_counts = torch.zeros(k, dtype=torch.long, device=accelerator.device)
    tic = time.perf_counter()
    images_seen = 0

    # 4. The training loop: one iteration = one optimizer step over batch_size images.
    while state.step < t.max_steps:
        step = state.step
        lr, beta, tau = learning_rate(step, t), kl_weight(step, t), temperature(step, t)
        for group in optimizer.param_groups:
            group["lr"] = lr
        sums = torch.zeros(4, device=accelerator.device)  # loss, mse, kl, uncertainty (per micro-batch means)
        counts = torch.zeros(k, dtype=torch.long, device=accelerator.device)
        for micro_step in range(t.gradient_accumulation_steps):
            images = next(batches)
            if cfg.data.hflip:
                images = random_hflip(images, t.seed, step, micro_step, accelerator.process_index)
            if t.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    out = forward(images, tau=tau)
                terms = stage1_loss(out, beta)
                loss = terms.loss
                accelerator.backward(loss)
                if t.grad_clip is not None and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), t.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            unc = out.uncertainty.mean() if out.uncertainty is not None else torch.zeros((), device=loss.device)
            sums += torch.stack([loss.detach(), terms.mse.detach(), terms.kl.detach(), unc.detach()])
            counts += code_counts(out.indices, k)
            images_seen += len(images)
        state.step += 1
        progress.update(1)

        # 5. Metrics of this step over all processes: mean losses, perplexity of the global batch's hard codes.
        sums = accelerator.reduce(sums, "mean") / t.gradient_accumulation_steps
        counts = accelerator.reduce(counts, "sum")
        window_counts += counts
        if state.step % t.log_every == 0 or state.step == t.max_steps:
            elapsed = time.perf_counter() - tic
            record = {"step": state.step, "loss": sums[0].item(), "mse": sums[1].item(), "kl": sums[2].item(),
                      "beta": beta, "tau": tau, "lr": lr, "perplexity": perplexity(counts),
                      "codes_used": codes_used(counts), "perplexity_window": perplexity(window_counts),
                      "codes_used_window": codes_used(window_counts),
                      "uncertainty": sums[3].item() if out.uncertainty is not None else None,
                      "images_per_s": images_seen * accelerator.num_processes / max(elapsed, 1e-9)}
            accelerator.log({f"train/{key}": v for key, v in record.items() if key != "step" and v is not None},
                            step=state.step)
            log.write({"split": "train", **record})
            last_window_perplexity = record["perplexity_window"]
            progress.set_postfix(mse=f"{record['mse']:.4f}", ppl=f"{record['perplexity']:.1f}",
                                 **({"alarm": "COLLAPSE"} if collapsed else {}))
            window_counts.zero_()
            tic, images_seen = time.perf_counter(), 0

        # 6. Reconstruction grids, periodic evaluation, checkpoints.
        if state.step % t.image_every == 0 or state.step % t.eval_every == 0 or state.step == t.max_steps:
            is_final = state.step == t.max_steps
            if state.step % t.eval_every == 0 or is_final:
                loader = full_test if (is_final and t.final_eval) else periodic_test
                result = evaluate_tokenizer(unwrapped, loader, accelerator, codes=cfg.eval_codes)
                accelerator.log({f"eval/{key}": v for key, v in result.metrics.items()
                                 if isinstance(v, (int, float)) and v is not None}, step=state.step)
                log.write({"split": "test", "step": state.step, **result.metrics})
                alarms = alarm.check(state.step, {"test_codes_used": result.metrics["codes_used"],
                                                  "train_perplexity": last_window_perplexity})
                accelerator.log({"alarm/codebook_collapse": float(bool(alarms))}, step=state.step)
                for record in alarms:
                    log.write(record)
                    if accelerator.is_main_process:
                        logger.warning("codebook collapse alarm at step %d: %s", state.step, record["message"])
                collapsed = bool(alarms)
                if collapsed:
                    progress.set_postfix(alarm="COLLAPSE")
                if accelerator.is_main_process and is_final:
                    m = result.metrics
                    logger.info("test split at step %d: mse %.5f, psnr %.2f dB, perplexity %.1f (split) / %.1f "
                                "(per 128), %d codes used, %d images", state.step, m["mse"], m["psnr"],
                                m["perplexity_split"], m["perplexity_batch"], m["codes_used"], m["n_images"])
                    write_json(run_dir / "metrics.json", {"step": state.step, **result.metrics})
                    save_usage_histogram(result.counts, str(run_dir / "codebook_usage.png"))
            else:
                result = evaluate_tokenizer(unwrapped, grid_test, accelerator, codes=cfg.eval_codes)
            if accelerator.is_main_process:
                grid = side_by_side(result.originals, result.reconstructions)
                save_image_grid(grid, run_dir / "images" / f"recon_{state.step:08d}.png")
                for tracker in accelerator.trackers:
                    if tracker.name == "tensorboard":
                        from torchvision.utils import make_grid

                        tracker.writer.add_image("eval/reconstructions", make_grid(grid, nrow=8), state.step)
        if state.step % t.checkpoint_every == 0 or state.step == t.max_steps or (collapsed and t.stop_on_collapse):
            save_checkpoint(accelerator, run_dir, state.step, t.checkpoints_total_limit)
        if collapsed and t.stop_on_collapse:
            break

    progress.close()
    if collapsed and t.stop_on_collapse:
        # 7'. A collapsing run ends here: its checkpoint is kept (to inspect, or to resume with other settings).
        if accelerator.is_main_process:
            logger.error("stopped at step %d: the codebook is collapsing (train.stop_on_collapse=true); the last "
                         "checkpoint is in %s and no tokenizer was exported. Try a larger batch, a larger "
                         "train.beta_max or a higher train.tau_min, or set train.stop_on_collapse=false to "
                         "train on regardless.", state.step, run_dir / "checkpoints")
        accelerator.end_training()
        return None

    # 7. Export the tokenizer for the library API and stage 2.
    def write_export(folder: Path) -> None:
        unwrapped.save_pretrained(str(folder))
        write_json(folder / TRAINING_DATA_FILE, asdict(cfg.data))

    export = export_atomically(accelerator, run_dir, EXPORT_DIR, write_export)
    if accelerator.is_main_process:
        logger.info("exported the tokenizer to %s", export)
    accelerator.end_training()
    return export


if __name__ == "__main__":
    from edvae_common.cli import run_cli

    run_cli(main)
