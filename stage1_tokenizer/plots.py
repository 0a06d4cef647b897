"""Plots of stage-1 runs from their ``metrics.jsonl``.

    python -m stage1_tokenizer.plots --run runs/stage1/cifar10_cpu --out docs/results/curves.png
    python -m stage1_tokenizer.plots --kind uncertainty --run RUN [RUN ...] --out figure6.png

``--kind curves`` (default, one run): three panels against the training step: MSE (train and
test), codebook perplexity on hard codes (per logged batch, over each logging window, and on the
test split), and the mean evidential uncertainty u = K/S next to the perplexity.

``--kind uncertainty`` (one or several EdVAE runs): the paper's Figure 6, codebook perplexity
against the mean evidential uncertainty during training. Left: perplexity against u, one point per
logged training step, coloured by the step; right: both against the step. Each point pairs the
perplexity of a step's hard codes (``perplexity``: the argmax of the relaxed sample, over that
step's batch) with the mean u = K/S over the same batch; the legend gives Pearson's r per run.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Sequence

from edvae_common.io import save_figure
from edvae_common.runs import MetricsLog


def plot_run(run_dir: str | Path, out: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = MetricsLog(Path(run_dir) / "metrics.jsonl").read()
    if not records:
        raise FileNotFoundError(f"no metrics in {Path(run_dir) / 'metrics.jsonl'}: is this a stage-1 run folder?")
    train = [r for r in records if r["split"] == "train"]
    test = [r for r in records if r["split"] == "test"]
    steps = [r["step"] for r in train]
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    axes[0].plot(steps, [r["mse"] for r in train], label="train (relaxed codes)")
    axes[0].plot([r["step"] for r in test], [r["mse"] for r in test], "o-", label="test (hard codes)")
    axes[0].set(title="MSE on [0, 1]", xlabel="step", yscale="log")
    axes[1].plot(steps, [r["perplexity"] for r in train], alpha=0.5, label="train batch")
    axes[1].plot(steps, [r["perplexity_window"] for r in train], label="train window")
    axes[1].plot([r["step"] for r in test], [r["perplexity_split"] for r in test], "o-", label="test split")
    axes[1].set(title="codebook perplexity (hard codes)", xlabel="step", ylim=(0, None))
    uncertainty = [r["uncertainty"] if r.get("uncertainty") is not None else float("nan") for r in train]
    axes[2].plot(steps, uncertainty, color="tab:red", label="uncertainty u = K/S (EdVAE only)")
    axes[2].set(title="evidential uncertainty vs perplexity", xlabel="step")
    twin = axes[2].twinx()
    twin.plot(steps, [r["perplexity_window"] for r in train], color="tab:blue", alpha=0.6, label="perplexity (window)")
    axes[2].legend(loc="upper left")
    twin.legend(loc="upper right")
    for ax in axes[:2]:
        ax.legend()
    fig.tight_layout()
    return save_figure(fig, out, dpi=90)


def uncertainty_series(run_dir: str | Path, perplexity_key: str = "perplexity") -> dict[str, list[float]]:
    """Training steps, mean evidential uncertainty and perplexity of one run (records that log u)."""
    path = Path(run_dir) / "metrics.jsonl"
    records = MetricsLog(path).read()
    if not records:
        raise FileNotFoundError(f"no metrics in {path}: is this a stage-1 run folder?")
    train = [r for r in records if r.get("split") == "train" and r.get("uncertainty") is not None]
    if not train:
        raise ValueError(f"{path} has no training record with an evidential uncertainty "
                         "(only EdVAE runs log u = K/S)")
    return {"step": [r["step"] for r in train], "uncertainty": [float(r["uncertainty"]) for r in train],
            "perplexity": [float(r[perplexity_key]) for r in train]}


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Pearson's correlation coefficient (nan when fewer than two points or a constant series)."""
    n = len(xs)
    if n < 2:
        return float("nan")
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx, syy = sum((x - mx) ** 2 for x in xs), sum((y - my) ** 2 for y in ys)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")


def plot_uncertainty_perplexity(run_dirs: Sequence[str | Path], out: str | Path, labels: Sequence[str] | None = None,
                                perplexity_key: str = "perplexity") -> Path:
    """The paper's Figure 6 for one or several EdVAE runs: perplexity against mean uncertainty, and both
    against the step. ``perplexity_key`` may also be ``perplexity_window`` (hard codes over each logging window)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dirs = list(run_dirs)
    if not run_dirs:
        raise ValueError("give at least one run folder")
    labels = list(labels) if labels is not None else [Path(r).name for r in run_dirs]
    if len(labels) != len(run_dirs):
        raise ValueError(f"got {len(labels)} labels for {len(run_dirs)} runs")
    series = [uncertainty_series(r, perplexity_key) for r in run_dirs]
    fig, (ax_xy, ax_step) = plt.subplots(1, 2, figsize=(12, 4.2))
    twin = ax_step.twinx()
    last_steps = max(s["step"][-1] for s in series)
    points = None
    for i, (data, label) in enumerate(zip(series, labels)):
        colour = f"C{i % 10}"
        r = pearson(data["uncertainty"], data["perplexity"])
        ax_xy.plot(data["uncertainty"], data["perplexity"], "-", color=colour, alpha=0.6, linewidth=1.0,
                   label=f"{label} (r = {r:.2f})")
        points = ax_xy.scatter(data["uncertainty"], data["perplexity"], c=data["step"], cmap="viridis", s=12,
                               vmin=0, vmax=last_steps, edgecolors=colour, linewidths=0.5, zorder=3)
        ax_step.plot(data["step"], data["perplexity"], "-", color=colour, label=f"{label}: perplexity")
        twin.plot(data["step"], data["uncertainty"], "--", color=colour, alpha=0.8, label=f"{label}: uncertainty")
    ax_xy.set(title="perplexity vs mean evidential uncertainty (training)", xlabel="mean uncertainty u = K/S",
              ylabel=f"codebook perplexity ({perplexity_key}, hard codes)")
    fig.colorbar(points, ax=ax_xy, label="step")
    ax_xy.legend(fontsize=7)
    ax_step.set(title="during training", xlabel="step", ylabel="perplexity (solid)", ylim=(0, None))
    twin.set_ylabel("mean uncertainty u = K/S (dashed)")
    ax_step.legend(loc="upper left", fontsize=7)
    twin.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    return save_figure(fig, out, dpi=90)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, nargs="+", help="stage-1 run folder(s) holding metrics.jsonl")
    p.add_argument("--kind", choices=("curves", "uncertainty"), default="curves",
                   help="curves: one run's training curves; uncertainty: Figure 6 for one or several EdVAE runs")
    p.add_argument("--labels", nargs="+", default=None, help="legend labels for --kind uncertainty (one per run)")
    p.add_argument("--perplexity-key", default="perplexity", choices=("perplexity", "perplexity_window"),
                   help="for --kind uncertainty: per logged batch (default) or over each logging window")
    p.add_argument("--out", default=None,
                   help="PNG path (default <run>/curves.png or <run>/uncertainty_perplexity.png)")
    args = p.parse_args(argv)
    if args.kind == "curves":
        if len(args.run) != 1:
            p.error("--kind curves draws one run; give a single --run")
        print(plot_run(args.run[0], args.out or Path(args.run[0]) / "curves.png"))
    else:
        print(plot_uncertainty_perplexity(args.run, args.out or Path(args.run[0]) / "uncertainty_perplexity.png",
                                          args.labels, args.perplexity_key))


if __name__ == "__main__":
    from edvae_common.cli import run_cli

    run_cli(main)
