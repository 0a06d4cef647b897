"""Train and evaluate several quantizers x seeds with the same budget, and tabulate them.

    python -m stage1_tokenizer.compare --config configs/stage1/cifar10_cpu.yaml \
        --quantizers edvae dvae gs_vqvae vqvae_ema --seeds 42 1773 [key=value ...]

Each (quantizer, seed) trains in ``<output_dir>/<quantizer>_seed<seed>`` with the
same config and overrides; only ``model.quantizer``, ``train.seed`` and the KL
weight differ. The KL weight of each quantizer is the paper's (Appendix D,
``stage1_tokenizer.loss.PAPER_BETA``, the objective's own table): EdVAE takes
``train.beta_max`` from the config, dVAE 5e-5, GS-VQ-VAE 5e-6, VQ-VAE-EMA, SQ-VAE
and VQ-STE++ none; ``--beta NAME=VALUE`` changes one. A run whose final metrics
exist is not trained again; an interrupted one resumes from its latest checkpoint.

Writes into ``output_dir``: ``results.json`` (one row per run: quantizer, seed,
steps and the test metrics of the whole held-out split), ``results.md`` (mean and
std over seeds) and ``curves.png`` (test perplexity and MSE against the step), and
for EdVAE runs ``uncertainty_perplexity.png`` (the paper's Figure 6: training
perplexity against the mean evidential uncertainty).

Ablations (Appendix E) use the same machinery with ``--sweep KEY=V1,V2,...``: every
quantizer x value x seed trains with the same budget in
``<output_dir>/<quantizer>_<KEY>_<value>_seed<seed>``, the swept key and its value are
columns of both tables (mean and std over seeds per quantizer and value), and the
curves have one colour per (quantizer, value)::

    --quantizers edvae --sweep model.clamp_max=10,15,20,25,30                # Table 5
    --quantizers edvae dvae --sweep train.beta_max=1e-7,1e-6,1e-5,1e-4      # Figure 7 (overrides each beta)
    --quantizers dvae --sweep train.tau_init=1,2,5                          # E.1 (starting temperature)
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path

from edvae_common.cli import run_cli
from edvae_common.config import ConfigError, load_config
from edvae_common.io import atomic_write_text, read_json, save_figure, write_json
from edvae_common.runs import MetricsLog

from . import train as train_script
from .config import Stage1Config
from .loss import PAPER_BETA
from .plots import plot_uncertainty_perplexity
from .quantizers import QUANTIZERS

# The KL weight per quantizer is the objective's (loss.py, Appendix D); edvae's is the config's train.beta_max.
TABLE_METRICS = ("mse", "psnr", "perplexity_batch", "perplexity_split", "codes_used")
# Keys a sweep may not vary: they name the runs, or are set per run by the comparison itself.
NOT_SWEEPABLE = ("model.quantizer", "train.seed", "output_dir", "resume", "train.final_eval")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="stage-1 YAML config shared by every run")
    p.add_argument("--quantizers", nargs="+", default=["edvae", "dvae"], help=f"any of {', '.join(QUANTIZERS)}")
    p.add_argument("--seeds", nargs="+", type=int, default=[42], help="seeds (the paper: 42 1773 1)")
    p.add_argument("--beta", action="append", default=[], metavar="NAME=VALUE",
                   help="KL weight of one quantizer instead of the paper's (repeatable)")
    p.add_argument("--sweep", default=None, metavar="KEY=V1,V2,...",
                   help="ablation: train every quantizer x seed once per value of one config key, "
                        "e.g. model.clamp_max=10,15,20,25,30 or train.beta_max=1e-7,1e-6,1e-5,1e-4")
    p.epilog = "key=value overrides (anywhere on the line) apply to every run, e.g. train.max_steps=3000"
    argv = list(sys.argv[1:] if argv is None else argv)
    # key=value overrides may stand anywhere, also right after --seeds 1 2 (whose nargs would swallow them)
    is_override = ["=" in a and not a.startswith("-") and not (i > 0 and argv[i - 1] in ("--beta", "--sweep"))
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


class Sweep:
    """One config key and the values an ablation trains with: ``raw`` as given, ``values`` as the config types them."""

    def __init__(self, key: str, raw: list[str], values: list):
        self.key, self.raw, self.values = key, raw, values

    def override(self, i: int) -> str:
        return f"{self.key}={self.raw[i]}"


def config_value(cfg: Stage1Config, key: str):
    """The value of a dotted key in a loaded config."""
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def format_value(value) -> str:
    """A swept value for tables, labels and folder names: 1e-07, 10, true, argmax."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def parse_sweep(spec: str | None, args: argparse.Namespace) -> Sweep | None:
    """Check ``KEY=V1,V2,...``: a known config key, values valid for it (each checked like an override), distinct."""
    if spec is None:
        return None
    key, sep, values = spec.partition("=")
    raw = [v.strip() for v in values.split(",")] if sep else []
    if not key or not raw or any(not v for v in raw):
        raise ConfigError(f"--sweep expects KEY=V1,V2,... (e.g. model.clamp_max=10,15,20), got '{spec}'")
    if key in NOT_SWEEPABLE:
        raise ConfigError(f"--sweep cannot vary '{key}': use --quantizers, --seeds or a key=value override instead")
    if any(o.partition("=")[0] == key for o in args.overrides):
        raise ConfigError(f"'{key}' is both swept and set by a key=value override; drop one of them")
    if key == "train.beta_max" and args.beta:
        raise ConfigError("--sweep train.beta_max sets every run's KL weight; drop --beta")
    typed = [config_value(load_config(Stage1Config, args.config, [*args.overrides, f"{key}={v}"]), key) for v in raw]
    if any(isinstance(v, (list, dict)) for v in typed):
        raise ConfigError(f"--sweep takes a key with a single value, not '{key}'")
    if len({format_value(v) for v in typed}) != len(typed):
        raise ConfigError(f"--sweep {key}: the values {', '.join(raw)} are not distinct")
    return Sweep(key, raw, typed)


def run_name(quantizer: str, seed: int, sweep: Sweep | None = None, i: int = 0) -> str:
    """The run's folder name: ``edvae_seed42``, or ``edvae_model.clamp_max_10_seed42`` in a sweep."""
    if sweep is None:
        return f"{quantizer}_seed{seed}"
    value = re.sub(r"[^A-Za-z0-9.+-]", "_", format_value(sweep.values[i]))
    return f"{quantizer}_{sweep.key}_{value}_seed{seed}"


def train_arguments(config: str, overrides: list[str], run_dir: str | Path, quantizer: str, seed: int, beta: float,
                    extra: list[str] = ()) -> list[str]:
    """The ``train.py`` command line of one run of a comparison: the shared config and overrides, then what differs
    per run (its folder, quantizer, seed and KL weight), a final evaluation on the whole held-out split, and
    ``resume=latest`` so that a rerun continues an interrupted run. ``stage2_prior.compare`` trains with it too."""
    return ["--config", str(config), *overrides, f"output_dir={run_dir}", f"model.quantizer={quantizer}",
            f"train.seed={seed}", f"train.beta_max={beta}", "train.final_eval=true", "resume=latest", *extra]


def finished(run_dir: str | Path, max_steps: int) -> bool:
    """A run whose final metrics (written after its export) are those of ``max_steps``: nothing left to train."""
    final = Path(run_dir) / "metrics.json"
    return final.is_file() and read_json(final).get("step") == max_steps and (Path(run_dir) / "tokenizer").is_dir()


def run_one(args: argparse.Namespace, cfg: Stage1Config, quantizer: str, seed: int, beta: float,
            sweep: Sweep | None = None, i: int = 0) -> dict:
    """Train (or resume, or skip) one run and return its row of results."""
    run_dir = Path(cfg.output_dir) / run_name(quantizer, seed, sweep, i)
    final = run_dir / "metrics.json"
    swept = [sweep.override(i)] if sweep is not None else []  # last: a swept train.beta_max replaces the paper's
    if sweep is not None and sweep.key == "train.beta_max":
        beta = float(sweep.values[i])
    if not finished(run_dir, cfg.train.max_steps):
        train_script.main(train_arguments(args.config, args.overrides, run_dir, quantizer, seed, beta, swept))
    metrics = read_json(final)
    row = {"quantizer": quantizer, "seed": seed, "beta_max": beta}
    if sweep is not None:
        row.update({"sweep_key": sweep.key, sweep.key: sweep.values[i]})
    return {**row, **metrics, "steps": metrics["step"], "run_dir": str(run_dir)}


def groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    """Rows by (quantizer, swept value), in the order they were trained."""
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        key = r.get("sweep_key")
        out.setdefault((r["quantizer"], format_value(r[key]) if key else None), []).append(r)
    return out


def summary_table(rows: list[dict], cfg: Stage1Config, command: str, sweep: Sweep | None = None) -> str:
    """Markdown table of mean +- std over seeds, one line per quantizer (and swept value)."""
    swept = f"; swept `{sweep.key}` over {', '.join(format_value(v) for v in sweep.values)}" if sweep else ""
    lines = [
        "# Quantizer comparison" if sweep is None else f"# Ablation: `{sweep.key}`", "",
        f"Command: `{command}`", "",
        f"Same budget for every run: {cfg.train.max_steps} steps, batch {cfg.train.batch_size}, width "
        f"{cfg.model.channels}, schedule_scale {cfg.train.schedule_scale}"
        + (" (schedules compressed: not the paper's horizons)" if cfg.train.schedule_scale != 1.0 else "")
        + f"; data {cfg.data.dataset} `{cfg.data.path}`{swept}; test metrics on the whole held-out split, "
        "argmax codes.", "",
        "| quantizer | " + (f"{sweep.key} | " if sweep else "") + "beta_max | seeds | "
        + " | ".join(TABLE_METRICS) + " |",
        "|---|" + ("---|" if sweep else "") + "---|---|" + "---|" * len(TABLE_METRICS),
    ]
    for (name, value), group in groups(rows).items():
        cells = []
        for key in TABLE_METRICS:
            values = [float(r[key]) for r in group]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.4g} ± {std:.2g}" if len(values) > 1 else f"{values[0]:.4g}")
        seeds = " ".join(str(r["seed"]) for r in group)
        lines.append(f"| {name} | " + (f"{value} | " if sweep else "") + f"{group[0]['beta_max']:g} | {seeds} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(rows: list[dict], out: Path) -> Path:
    """Test perplexity (split) and MSE against the training step, one line per run, colour per quantizer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_ppl, ax_mse) = plt.subplots(1, 2, figsize=(11, 3.8))
    grouped = groups(rows)
    palette = plt.get_cmap("tab10" if len(grouped) <= 10 else "tab20")
    colours = {group: palette(i % palette.N) for i, group in enumerate(grouped)}
    for (name, value), group in grouped.items():
        for row in group:
            tests = [r for r in MetricsLog(Path(row["run_dir"]) / "metrics.jsonl").read() if r["split"] == "test"]
            steps = [r["step"] for r in tests]
            swept = f" {row['sweep_key'].rsplit('.', 1)[-1]}={value}" if value is not None else ""
            label = f"{name}{swept} (seed {row['seed']})"
            colour = colours[(name, value)]
            ax_ppl.plot(steps, [r["perplexity_split"] for r in tests], "o-", color=colour, label=label)
            ax_mse.plot(steps, [r["mse"] for r in tests], "o-", color=colour, label=label)
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
    sweep = parse_sweep(args.sweep, args)
    if sweep is None:
        rows = [run_one(args, cfg, q, s, beta[q]) for q in args.quantizers for s in args.seeds]
    else:
        rows = [run_one(args, cfg, q, s, beta[q], sweep, i)
                for q in args.quantizers for i in range(len(sweep.values)) for s in args.seeds]
    root = Path(cfg.output_dir)
    command = "python -m stage1_tokenizer.compare " + " ".join(sys.argv[1:] if argv is None else argv)
    table = summary_table(rows, cfg, command, sweep)
    figures = "\n![curves](curves.png)\n"
    plot_curves(rows, root / "curves.png")
    edvae = [r for r in rows if r["quantizer"] == "edvae"]
    if edvae:  # Figure 6: perplexity against the mean evidential uncertainty during training
        labels = [Path(r["run_dir"]).name for r in edvae]
        plot_uncertainty_perplexity([r["run_dir"] for r in edvae], root / "uncertainty_perplexity.png", labels)
        figures += "\n![perplexity against mean evidential uncertainty, EdVAE training](uncertainty_perplexity.png)\n"
    write_json(root / "results.json", rows)
    atomic_write_text(root / "results.md", table + figures)
    print(table)
    return rows


if __name__ == "__main__":
    run_cli(main)
