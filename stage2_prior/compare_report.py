"""What a generation comparison reports, and how: the two sampling settings every row is scored at, the tables
of results.md (mean and spread per quantizer, every row), the statement of which FID gaps exceed their spread,
and Figure 11 (each quantizer's samples beside its reconstructions)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edvae_common.io import save_figure
from stage1_tokenizer import Stage1Config
from stage2_prior.config import Stage2Config

FIGURE_IMAGES = 10


@dataclass(frozen=True)
class Setting:
    """One sampling setting every row is measured at (no per-row tuning)."""

    name: str
    temperature: float
    top_p: float
    text: str


UNFILTERED = Setting("t1", 1.0, 1.0, "temperature 1, no filtering")
NUCLEUS = Setting("t1_p095", 1.0, 0.95, "temperature 1, top-p 0.95")


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _fmt(mean: float, std: float | None, digits: int = 1) -> str:
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def significance(rows: list[dict]) -> list[str]:
    """Which quantizers' FIDs (top-p 0.95) differ by more than their sampling spread, and which do not.

    Per quantizer: the mean over its rows (seeds) of each row's mean FID over sampling seeds, with the spread
    taken as the larger of the sampling-seed std (pooled over its rows) and the std over training seeds. Two
    quantizers differ when their means are further apart than twice the larger spread of the two.
    """
    per: dict[str, dict] = {}
    for q in dict.fromkeys(r["quantizer"] for r in rows):
        mine = [r for r in rows if r["quantizer"] == q]
        means = [r["sampling"][NUCLEUS.name]["fid_mean"] for r in mine]
        sampling_stds = [r["sampling"][NUCLEUS.name]["fid_std"] for r in mine if r["sampling"][NUCLEUS.name]["fid_std"]]
        spread = max([statistics.mean(sampling_stds)] if sampling_stds else [0.0])
        if len(means) > 1:
            spread = max(spread, statistics.stdev(means))
        per[q] = {"fid": statistics.mean(means), "spread": spread, "seeds": len(means)}
    lines, names = [], sorted(per, key=lambda q: per[q]["fid"])
    for i, q1 in enumerate(names):
        for q2 in names[i + 1:]:
            gap, spread = per[q2]["fid"] - per[q1]["fid"], max(per[q1]["spread"], per[q2]["spread"])
            verdict = "larger than" if spread > 0 and gap > 2 * spread else "within"
            single = [q for q in (q1, q2) if per[q]["seeds"] == 1]
            caveat = ("" if not single else f" (sampling seeds only: {' and '.join(single)} "
                      f"{'has' if len(single) == 1 else 'have'} one training seed, whose spread is not in it)")
            lines.append(f"- {q1} ({per[q1]['fid']:.1f}) vs {q2} ({per[q2]['fid']:.1f}): a gap of {gap:.1f}, "
                         f"{verdict} twice the spread ({2 * spread:.1f})" + (": **significant**" if verdict ==
                                                                             "larger than" else ": not significant")
                         + caveat)
    return lines + paired_by_training_seed(rows)


def paired_by_training_seed(rows: list[dict]) -> list[str]:
    """For two quantizers trained at the same two or more training seeds: does one give the lower FID (top-p
    0.95) at every one of them? (Paired by seed, the order of two rows does not depend on the seed-to-seed
    spread the pooled rule above has to allow for.)"""
    fid = {(r["quantizer"], r["seed"]): r["sampling"][NUCLEUS.name]["fid_mean"] for r in rows}
    seeds = {r["quantizer"]: set() for r in rows}
    for q, s in fid:
        seeds[q].add(s)
    quantizers, lines = list(seeds), []
    for i, q1 in enumerate(quantizers):
        for q2 in quantizers[i + 1:]:
            shared = sorted(seeds[q1] & seeds[q2])
            if len(shared) < 2:
                continue
            per_seed = ", ".join(f"seed {s}: {fid[q1, s]:.1f} vs {fid[q2, s]:.1f}" for s in shared)
            # the lower one at each shared seed (None for an exact tie, which neither wins)
            wins = {q1 if fid[q1, s] < fid[q2, s] else q2 if fid[q2, s] < fid[q1, s] else None for s in shared}
            verdict = (f"{wins.pop()} is lower at every one" if len(wins) == 1 and None not in wins
                       else "neither is lower at every one")
            lines.append(f"- {q1} vs {q2} paired by training seed ({len(shared)} shared seeds): {verdict} "
                         f"({per_seed})")
    return lines


def results_markdown(rows: list[dict], command: str, s1: Stage1Config, s2: Stage2Config) -> str:
    """Mean and spread per quantizer, the per-row details, and what is and is not significant."""
    b = rows[0]["budget"]
    lines = [
        "# Generation comparison: a prior on every quantizer's tokens", "",
        f"Command: `{command}`", "",
        f"Budget, the same for every row: tokenizer {b['stage1_steps']} steps at batch {b['stage1_batch']} "
        f"(width {s1.model.channels}, {s1.data.image_size}x{s1.data.image_size}, data `{s1.data.path}`); prior "
        f"{b['prior_arch']} `{b['prior_size']}`, {b['prior_steps']} steps at batch {b['prior_batch']}; "
        f"{b['num_samples']} samples per setting and seed against the held-out images (test_fraction "
        f"{s1.data.test_fraction}, split_seed {s1.data.split_seed}). FID and KID: `stage2_prior.fid`'s protocol "
        "(the standard Inception pool features, pytorch-fid preprocessing); KID x 1e3.", "",
        "| quantizer | seeds | PSNR (dB) | codes used | split perplexity | rFID | prior bits/token | bits/image | "
        "FID T=1 | FID T=1 top-p 0.95 | KID x1e3 top-p 0.95 | FID / rFID |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for q in dict.fromkeys(r["quantizer"] for r in rows):
        mine = [r for r in rows if r["quantizer"] == q]

        def col(get, digits=1):
            return _fmt(*_mean_std([get(r) for r in mine]), digits)
        lines.append(
            f"| {q} | {' '.join(str(r['seed']) for r in mine)} | {col(lambda r: r['tokenizer']['psnr'], 2)} | "
            f"{col(lambda r: r['tokenizer']['codes_used'], 0)} | {col(lambda r: r['tokenizer']['perplexity_split'])} | "
            f"{col(lambda r: r['tokenizer']['rfid'])} | {col(lambda r: r['prior']['bits_per_token'], 3)} | "
            f"{col(lambda r: r['prior']['bits_per_image'], 0)} | {col(lambda r: r['sampling'][UNFILTERED.name]['fid_mean'])} | "
            f"{col(lambda r: r['sampling'][NUCLEUS.name]['fid_mean'])} | "
            f"{col(lambda r: 1e3 * r['sampling'][NUCLEUS.name]['kid_mean'], 2)} | "
            f"{col(lambda r: r['sampling'][NUCLEUS.name]['fid_over_rfid'], 2)} |")
    lines += ["", "Mean ± std over training seeds where a quantizer has several.", "",
              "## Every row", "",
              "| row | FID T=1 | FID top-p 0.95 per sampling seed | mean ± std | KID x1e3 (± std over subsets) | "
              "tokens the prior learned: codes / perplexity | wall time (min) | warnings |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t1, p95 = r["sampling"][UNFILTERED.name], r["sampling"][NUCLEUS.name]
        kids = ", ".join(f"{1e3 * k:.2f} ± {1e3 * s:.2f}" for k, s in zip(p95["kid"], p95["kid_std_over_subsets"]))
        lines.append(f"| {r['quantizer']} seed {r['seed']} | {t1['fid_mean']:.1f} | "
                     f"{', '.join(f'{v:.1f}' for v in p95['fid'])} | {_fmt(p95['fid_mean'], p95['fid_std'])} | {kids} | "
                     f"{r['tokens']['codes_used']} / {r['tokens']['perplexity']:.1f} | {r['wall_s_total'] / 60:.0f} | "
                     f"{'; '.join(r['warnings']) or '-'} |")
    lines += ["", "## Which differences are larger than the spread (FID at top-p 0.95)", "",
              "Spread of a quantizer: the std of its FID over sampling seeds (and over training seeds where it has "
              "several), whichever is larger; a gap counts when it exceeds twice the larger spread of the two. "
              "Where two quantizers share two or more training seeds, a further line compares them seed by seed.", "",
              *(significance(rows) or ["- one quantizer only: nothing to compare"]), "",
              "![samples and reconstructions](figure11.png)", ""]
    return "\n".join(lines)


def plot_figure11(cmp: Any, rows: list[dict], out: Path) -> Path:
    """One line per quantizer: the first samples at top-p 0.95 (sampling seed 0), and beside them the
    reconstructions of the first held-out images (their originals on top), at the paper's layout."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    from edvae_common.io import to_uint8
    from stage1_tokenizer import EdVAE
    from stage2_prior import fid

    n = FIGURE_IMAGES
    real = fid.open_source(cmp.real, "test", cmp.s1.data.image_size, cmp.s1.data.test_fraction,
                           cmp.s1.data.split_seed, limit=n)
    originals = torch.stack([real.dataset[i] for i in range(len(real))])

    def strip(images: np.ndarray) -> np.ndarray:  # (k, H, W, 3) -> (H, k * W, 3)
        return np.concatenate(list(images), axis=1)

    # each strip of n images gets n x 1 inches, so every picture is shown at the same size (100 dpi: ~1.5x)
    fig, axes = plt.subplots(len(rows) + 1, 2, figsize=(2 * n + 2.4, 1.25 * (len(rows) + 1)), squeeze=False)
    axes[0, 0].axis("off")
    axes[0, 1].imshow(strip(originals.permute(0, 2, 3, 1).numpy()))
    axes[0, 1].set_title("held-out faces (top) and each tokenizer's reconstructions", fontsize=11)
    for i, r in enumerate(rows, start=1):
        row = cmp.row_name(r["quantizer"], r["seed"])
        shown = cmp.root / "samples" / row / f"{NUCLEUS.name}_seed{cmp.args.sample_seeds[0]}"
        with np.load(shown / "samples.npz" if (shown / "samples.npz").is_file() else shown / "first.npz") as f:
            samples = f["images"][:n]
        tokenizer = EdVAE.from_pretrained(cmp.root / "stage1" / row / "tokenizer").eval()
        with torch.no_grad():
            recon = to_uint8(tokenizer.reconstruct(originals.float() / 255.0))
        axes[i, 0].imshow(strip(samples))
        axes[i, 1].imshow(strip(recon))
        p95 = r["sampling"][NUCLEUS.name]
        axes[i, 0].set_ylabel(f"{r['quantizer']}\nFID {p95['fid_mean']:.0f}", rotation=0, ha="right", va="center",
                              fontsize=11)
        axes[i, 1].set_ylabel(f"rFID {r['tokenizer']['rfid']:.0f}", rotation=0, ha="right", va="center", fontsize=11)
    axes[1, 0].set_title(f"samples ({NUCLEUS.text}), training seed {rows[0]['seed']}", fontsize=11)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    fig.subplots_adjust(left=1.2 / (2 * n + 2.4), right=0.995, top=1 - 0.3 / (1.25 * (len(rows) + 1)), bottom=0.01,
                        wspace=1.0 / n, hspace=0.3)
    return save_figure(fig, out)
