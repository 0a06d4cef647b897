"""Training curves of a stage-1 run from its ``metrics.jsonl``.

    python -m stage1_tokenizer.plots --run runs/stage1/cifar10_cpu --out docs/results/curves.png

Three panels against the training step: MSE (train and test), codebook
perplexity on hard codes (per logged batch, over each logging window, and on
the test split), and the mean evidential uncertainty u = K/S next to the
perplexity (the paper's Figure 6 tracks the two together).
"""

from __future__ import annotations

import argparse
from pathlib import Path

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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a stage-1 run folder (holding metrics.jsonl)")
    p.add_argument("--out", default=None, help="PNG path (default <run>/curves.png)")
    args = p.parse_args(argv)
    print(plot_run(args.run, args.out or Path(args.run) / "curves.png"))


if __name__ == "__main__":
    main()
