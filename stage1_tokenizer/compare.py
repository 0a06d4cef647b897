"""Train and evaluate several quantizers x seeds with the same budget, and tabulate them.

    python -m stage1_tokenizer.compare --config configs/stage1/cifar10_cpu.yaml \
        --quantizers edvae dvae gs_vqvae vqvae_ema --seeds 42 1773 [key=value ...]

Each (quantizer, seed) trains in ``<output_dir>/<quantizer>_seed<seed>`` with the
same config and overrides; only ``model.quantizer``, ``train.seed`` and the KL
weight differ. The KL weight of each quantizer is the paper's (Appendix D):
EdVAE takes ``train.beta_max`` from the config, dVAE 5e-5, GS-VQ-VAE 5e-6,
VQ-VAE-EMA none; ``--beta NAME=VALUE`` changes one. A run whose final metrics
exist is not trained again; an interrupted one resumes from its latest checkpoint.

Writes into ``output_dir``: ``results.json`` (one row per run: quantizer, seed,
steps and the test metrics of the whole held-out split), ``results.md`` (mean and
std over seeds) and ``curves.png`` (test perplexity and MSE against the step).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from edvae_common.cli import run_cli
from edvae_common.config import ConfigError, load_config
from edvae_common.io import atomic_write_text, read_json, save_figure, write_json
from edvae_common.runs import MetricsLog

from . import train as train_script
from .config import Stage1Config
from .quantizers import QUANTIZERS

PAPER_BETA = {"dvae": 5e-5, "gs_vqvae": 5e-6, "vqvae_ema": 0.0}  # edvae: the config's train.beta_max
TABLE_METRICS = ("mse", "psnr", "perplexity_batch", "perplexity_split", "codes_used")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="stage-1 YAML config shared by every run")
    p.add_argument("--quantizers", nargs="+", default=["edvae", "dvae"], help=f"any of {', '.join(QUANTIZERS)}")
    p.add_argument("--seeds", nargs="+", type=int, default=[42], help="seeds (the paper: 42 1773 1)")
    p.add_argument("--beta", action="append", default=[], metavar="NAME=VALUE",
                   help="KL weight of one quantizer instead of the paper's (repeatable)")
    p.epilog = "key=value overrides (anywhere on the line) apply to every run, e.g. train.max_steps=3000"
    argv = list(sys.argv[1:] if argv is None else argv)
    # key=value overrides may stand anywhere, also right after --seeds 1 2 (whose nargs would swallow them)
    is_override = ["=" in a and not a.startswith("-") and not (i > 0 and argv[i - 1] == "--beta")
                   for i, a in enumerate(argv)]
    args = p.parse_args([a for a, o in zip(argv, is_override) if not o])
    args.overrides = [a for a, o in zip(argv, is_override) if o]
    return args


def betas(cfg: Stage1Config, pairs: list[str]) -> dict[str, float]:
    """The KL weight per quantizer: the paper's, with --beta NAME=VALUE taking precedence."""
    table = {"edvae": cfg.train.beta_max, **PAPER_BETA}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or name not in QUANTIZERS:
            raise ConfigError(f"--beta expects NAME=VALUE with NAME in {', '.join(QUANTIZERS)}, got '{pair}'")
        table[name] = float(value)
    return table


def run_one(args: argparse.Namespace, cfg: Stage1Config, quantizer: str, seed: int, beta: float) -> dict:
    """Train (or resume, or skip) one run and return its row of results."""
    run_dir = Path(cfg.output_dir) / f"{quantizer}_seed{seed}"
    final = run_dir / "metrics.json"
    if not (final.is_file() and read_json(final).get("step") == cfg.train.max_steps):
        train_script.main(["--config", args.config, *args.overrides, f"output_dir={run_dir}",
                           f"model.quantizer={quantizer}", f"train.seed={seed}", f"train.beta_max={beta}",
                           "train.final_eval=true", "resume=latest"])
    metrics = read_json(final)
    return {"quantizer": quantizer, "seed": seed, "beta_max": beta, **metrics, "steps": metrics["step"],
            "run_dir": str(run_dir)}


def summary_table(rows: list[dict], cfg: Stage1Config, command: str) -> str:
    """Markdown table of mean +- std over seeds, one line per quantizer."""
    lines = [
        "# Quantizer comparison", "",
        f"Command: `{command}`", "",
        f"Same budget for every run: {cfg.train.max_steps} steps, batch {cfg.train.batch_size}, width "
        f"{cfg.model.channels}, schedule_scale {cfg.train.schedule_scale}"
        + (" (schedules compressed: not the paper's horizons)" if cfg.train.schedule_scale != 1.0 else "")
        + f"; data {cfg.data.dataset} `{cfg.data.path}`; test metrics on the whole held-out split, argmax codes.", "",
        "| quantizer | beta_max | seeds | " + " | ".join(TABLE_METRICS) + " |",
        "|---|---|---|" + "---|" * len(TABLE_METRICS),
    ]
    for name in dict.fromkeys(r["quantizer"] for r in rows):
        group = [r for r in rows if r["quantizer"] == name]
        cells = []
        for key in TABLE_METRICS:
            values = [float(r[key]) for r in group]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.4g} ± {std:.2g}" if len(values) > 1 else f"{values[0]:.4g}")
        seeds = " ".join(str(r["seed"]) for r in group)
        lines.append(f"| {name} | {group[0]['beta_max']:g} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(rows: list[dict], out: Path) -> Path:
    """Test perplexity (split) and MSE against the training step, one line per run, colour per quantizer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_ppl, ax_mse) = plt.subplots(1, 2, figsize=(11, 3.8))
    colours = {name: f"C{i}" for i, name in enumerate(dict.fromkeys(r["quantizer"] for r in rows))}
    for row in rows:
        tests = [r for r in MetricsLog(Path(row["run_dir"]) / "metrics.jsonl").read() if r["split"] == "test"]
        steps = [r["step"] for r in tests]
        label = f"{row['quantizer']} (seed {row['seed']})"
        ax_ppl.plot(steps, [r["perplexity_split"] for r in tests], "o-", color=colours[row["quantizer"]], label=label)
        ax_mse.plot(steps, [r["mse"] for r in tests], "o-", color=colours[row["quantizer"]], label=label)
    ax_ppl.set(title="test perplexity (whole split, argmax codes)", xlabel="step", ylim=(0, None))
    ax_mse.set(title="test MSE on [0, 1]", xlabel="step", yscale="log")
    ax_ppl.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, out)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    unknown = [q for q in args.quantizers if q not in QUANTIZERS]
    if unknown:
        raise ConfigError(f"unknown quantizer(s) {', '.join(unknown)}; available: {', '.join(QUANTIZERS)}")
    cfg = load_config(Stage1Config, args.config, args.overrides)
    beta = betas(cfg, args.beta)
    rows = [run_one(args, cfg, q, s, beta[q]) for q in args.quantizers for s in args.seeds]
    root = Path(cfg.output_dir)
    command = "python -m stage1_tokenizer.compare " + " ".join(sys.argv[1:] if argv is None else argv)
    table = summary_table(rows, cfg, command)
    write_json(root / "results.json", rows)
    atomic_write_text(root / "results.md", table + "\n![curves](curves.png)\n")
    plot_curves(rows, root / "curves.png")
    print(table)
    return rows


if __name__ == "__main__":
    run_cli(main)
