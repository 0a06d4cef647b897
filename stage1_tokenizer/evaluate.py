"""Evaluate a trained tokenizer on a dataset split.

    python -m stage1_tokenizer.evaluate --checkpoint runs/stage1/cifar10/tokenizer \
        --data ../shared/data/cifar10_dev.npz [--split test|train|all] [--out metrics.json]

``--checkpoint`` is a ``save_pretrained`` folder, a training run folder (its
``tokenizer/`` export is used) or a Hub id. ``--data`` is a named dataset
(``cifar10``, ``celeba``, ``lsun_church``, optionally ``name:path``) or a path
(an ``.npz``, an image folder, a saved ``datasets`` folder). An export written
by ``train.py`` records its training data settings (``training_data.json``):
its image size and held-out split (``test_fraction``, ``split_seed``) are the
defaults.

Which images: on the run's own training source the default is ``--split test``,
exactly the part the run never trained on; on any other source the default is
``--split all``, every image of it (a held-out fraction means nothing for images
the run never saw). Without a ``training_data.json`` the training source is
unknown and the default is ``test``. The JSON's ``protocol`` says which images
were used: ``split``, why (``split_chosen_by``), ``n_images``, the ``source`` and
its ``split_rule``.

Writes a JSON file with ``mse`` (the decoder output as it is, on [0, 1]: the
release's number), ``mse_clipped`` and ``psnr`` (mean per image, dB), both of
the reconstruction clipped to [0, 1] as a viewer shows it, ``perplexity_batch``
(per batch of 128 images, averaged: the paper's metric), ``perplexity_split``
(over the whole split), ``codes_used``, ``mean_uncertainty``, ``n_images`` and
the protocol, plus a reconstruction grid and a codebook-usage histogram next to
it. Multi-process with ``accelerate launch -m stage1_tokenizer.evaluate ...``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import DataLoader, Subset

from edvae_common.accel import make_accelerator
from edvae_common.cli import run_cli
from edvae_common.config import ConfigError, load_config
from edvae_common.io import read_json, save_image_grid, side_by_side, write_json

from .config import DataConfig, Stage1Config
from .data import build_dataset
from .data.sources import GENERIC, HUB_PREFIX, NAMED
from .metrics import evaluate_tokenizer, save_usage_histogram
from .model import TRAINING_DATA_FILE, EdVAE


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="save_pretrained folder, training run folder, or Hub id")
    p.add_argument("--data", required=True, help="cifar10 | celeba | lsun_church [:path], or a path to an .npz / folder")
    p.add_argument("--split", default=None, choices=["train", "test", "all"],
                   help="which images: the held-out 'test' split (default on the run's training source), 'train', "
                        "or 'all' of the source (default on any other source)")
    p.add_argument("--out", default=None, help="metrics JSON path (default <checkpoint>/eval_<split>.json)")
    p.add_argument("--image-size", type=int, default=None, help="image side (default: the run's, else the dataset's)")
    p.add_argument("--test-fraction", type=float, default=None, help="held-out fraction for sources without a split")
    p.add_argument("--split-seed", type=int, default=None, help="seed of the held-out split")
    p.add_argument("--batch-size", type=int, default=128, help="images per batch per process (default 128)")
    p.add_argument("--codes", default="argmax", choices=["argmax", "sample"],
                   help="argmax of the logits (default) or z ~ Cat(pi) as in Algorithm 2")
    p.add_argument("--max-images", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--seed", type=int, default=0, help="seed for --codes sample")
    p.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    return p.parse_args(argv)


def data_config(args: argparse.Namespace, base: DataConfig | None) -> DataConfig:
    """Build the DataConfig from --data, falling back to the data settings the tokenizer was trained with."""
    name, _, path = args.data.partition(":") if args.data.split(":", 1)[0] in NAMED + GENERIC else ("auto", "", args.data)
    default_size = {"cifar10": 32, "celeba": 64, "lsun_church": 128}.get(name, 32)
    return DataConfig(
        dataset=name,
        path=path or None,
        image_size=args.image_size or (base.image_size if base else default_size),
        test_fraction=args.test_fraction if args.test_fraction is not None else (base.test_fraction if base else 0.1),
        split_seed=args.split_seed if args.split_seed is not None else (base.split_seed if base else 0),
    )


def source_identity(cfg: DataConfig) -> tuple[str, str]:
    """What names a source's images: its path (resolved when local), or a named dataset's default root."""
    if cfg.path is None:
        return ("path", str(Path("data", cfg.dataset).resolve())) if cfg.dataset in NAMED else ("none", cfg.dataset)
    path = cfg.path[len(HUB_PREFIX):] if cfg.path.startswith(HUB_PREFIX) else cfg.path
    return ("path", str(Path(path).resolve())) if os.path.exists(path) else ("hub", path)


def choose_split(asked: Optional[str], cfg: DataConfig, trained_on: Optional[DataConfig]) -> tuple[str, str]:
    """The split to evaluate and why: ``--split`` if given, else 'test' on the training source, 'all' elsewhere."""
    if asked is not None:
        return asked, "--split"
    if trained_on is None:
        return "test", f"default: the training source is unknown (no {TRAINING_DATA_FILE}), so its held-out split"
    if source_identity(cfg) == source_identity(trained_on):
        return "test", "default: the run's training source, so the held-out part it never trained on"
    return "all", "default: not the run's training source, so every image of it"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    checkpoint = Path(args.checkpoint)
    if (checkpoint / "config.yaml").is_file() and (checkpoint / "tokenizer").is_dir():  # a training run folder
        checkpoint = checkpoint / "tokenizer"
    trained_on = None  # the export records the data settings of its training run
    if (checkpoint / TRAINING_DATA_FILE).is_file():
        trained_on = load_config(Stage1Config, mapping={"data": read_json(checkpoint / TRAINING_DATA_FILE)}).data
    accelerator = make_accelerator(mixed_precision=args.mixed_precision)
    torch.manual_seed(args.seed)
    model = EdVAE.from_pretrained(checkpoint).to(accelerator.device)
    cfg = data_config(args, trained_on)
    if cfg.image_size % model.downsample:
        raise ConfigError(f"--image-size {cfg.image_size} is not divisible by the tokenizer's factor {model.downsample}")
    split, chosen_by = choose_split(args.split, cfg, trained_on)
    dataset = build_dataset(cfg, split)
    split_rule = getattr(dataset, "split_rule", None)
    if args.max_images is not None and args.max_images < len(dataset):
        dataset = Subset(dataset, range(args.max_images))
    loader = accelerator.prepare(DataLoader(dataset, batch_size=args.batch_size, shuffle=False))
    result = evaluate_tokenizer(model, loader, accelerator, codes=args.codes)

    out = Path(args.out) if args.out else (Path(checkpoint) if Path(checkpoint).is_dir() else Path(".")) / f"eval_{split}.json"
    metrics = {
        **result.metrics,
        "protocol": {
            "checkpoint": str(args.checkpoint), "data": args.data,
            "source": f"{cfg.dataset}:{cfg.path}" if cfg.path else cfg.dataset,
            "training_source": (f"{trained_on.dataset}:{trained_on.path}" if trained_on.path else trained_on.dataset)
                               if trained_on is not None else None,
            "split": split, "split_chosen_by": chosen_by, "split_rule": split_rule,
            "n_images": result.metrics["n_images"], "max_images": args.max_images,
            "dataset": cfg.dataset, "path": cfg.path, "image_size": cfg.image_size, "test_fraction": cfg.test_fraction,
            "split_seed": cfg.split_seed, "codes": args.codes,
            "mse_scale": "[0, 1] pixels; mse: model output unclamped (the release's); mse_clipped and psnr: "
                         "reconstruction clipped to [0, 1]",
            "perplexity_batch_size": 128, "processes": accelerator.num_processes,
        },
    }
    if accelerator.is_main_process:
        write_json(out, metrics)
        save_image_grid(side_by_side(result.originals, result.reconstructions), out.with_name(out.stem + "_recon.png"))
        save_usage_histogram(result.counts, str(out.with_name(out.stem + "_usage.png")))
        shown = {k: v for k, v in metrics.items() if k != "protocol"}
        print("\n".join(f"{k:>18}: {v}" for k, v in shown.items()))
        print(f"wrote {out}")
    accelerator.wait_for_everyone()
    accelerator.end_training()  # tears the process group down before exit (a live gloo group can abort at exit)
    return metrics


if __name__ == "__main__":
    run_cli(main)
