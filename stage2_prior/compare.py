"""The paper's generation comparison (Figures 11-12), measured: every quantizer's tokens under the same prior.

    python -m stage2_prior.compare --stage1 configs/stage1/celeba64_ship.yaml \\
        --stage2 configs/stage2/celeba64_ship.yaml --quantizers edvae dvae gs_vqvae vqvae_ema sqvae vqste_pp \\
        --seeds 42 --out runs/compare/celeba64 [s1.key=value ...] [s2.key=value ...]

For each (quantizer, seed), in ``--out``, each stage the project's own script as a child process
(``accelerate launch`` with ``--processes``):

1. ``stage1/<row>``: the tokenizer, trained with ``stage1_tokenizer.compare``'s settings (same budget for
   all, the paper's KL weight per quantizer; ``--beta NAME=VALUE`` changes one);
2. ``tokens/<row>``: its argmax codes of the training split (with mirror images when stage 1 flipped) and of
   the held-out split (``stage2_prior/extract_tokens.py``);
3. ``stage2/<row>``: a prior of the same size, steps and schedule on them (``stage2_prior/train.py``; the row's
   seed); its bits per token on the held-out split are the prior's final validation;
4. ``rows/<row>/rfid.json``: the tokenizer's reconstruction FID and KID on the held-out images;
5. ``samples/<row>/<setting>_seed<k>``: ``--num-samples`` samples at the same two settings for every row,
   temperature 1 unfiltered (seed 0) and temperature 1 with top-p 0.95 (``--sample-seeds``, three by default),
   each with its FID and KID against the held-out images (``stage2_prior.fid``'s protocol).

Then ``results.json`` (one row per finished run), ``results.md`` (mean and spread per quantizer, and which
differences exceed the spread) and ``figure11.png`` (samples of each quantizer beside its reconstructions).

Reruns: a stage whose outputs are complete is skipped, an interrupted one resumes from its checkpoint (the
stage scripts resume themselves). Two drivers may share one output folder (e.g. one per quantizer, one
thread each): a row is locked while one of them works on it, and the tables gather every finished row.
The folder remembers its settings (``compare.json``): other configs or overrides are refused, naming the
difference. Overrides: ``s1.KEY=VALUE`` for the tokenizers, ``s2.KEY=VALUE`` for the priors.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path
from typing import Any

from edvae_common.cli import run_cli
from edvae_common.config import ConfigError, load_config, to_dict
from edvae_common.io import atomic_write_text, read_json, write_json
from stage1_tokenizer import QUANTIZERS, Stage1Config
from stage1_tokenizer import compare as stage1_compare
from stage2_prior.compare_archive import Archive
from stage2_prior.compare_report import NUCLEUS, UNFILTERED, plot_figure11, results_markdown
from stage2_prior.config import Stage2Config
from stage2_prior.driver import FolderLock, Launcher, Record

PER_RUN_STAGE1 = ("output_dir", "resume", "model.quantizer", "train.seed", "train.beta_max", "train.final_eval")
PER_RUN_STAGE2 = ("output_dir", "resume", "data.tokens", "tokenizer", "train.seed", "init_from")
COLLAPSED_CODES = 8        # a tokenizer using fewer codes than this on the held-out split is flagged as collapsed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage1", required=True, help="stage-1 YAML config every tokenizer trains with")
    p.add_argument("--stage2", required=True, help="stage-2 YAML config every prior trains with")
    p.add_argument("--quantizers", nargs="+", default=["edvae", "dvae"], help=f"any of {', '.join(QUANTIZERS)}")
    p.add_argument("--seeds", nargs="+", type=int, default=[42], help="training seeds (tokenizer and prior)")
    p.add_argument("--beta", action="append", default=[], metavar="NAME=VALUE",
                   help="KL weight of one quantizer instead of the paper's (repeatable; as stage1_tokenizer.compare)")
    p.add_argument("--out", required=True, help="output folder (resumed when it holds this comparison)")
    p.add_argument("--num-samples", type=int, default=1000, help="samples per setting and seed (default 1,000)")
    p.add_argument("--sample-seeds", nargs="+", type=int, default=[0, 1, 2],
                   help="sampling seeds at top-p 0.95 (the unfiltered setting uses the first)")
    p.add_argument("--sample-batch-size", type=int, default=50, help="sequences sampled at once")
    p.add_argument("--real", default=None,
                   help="held-out images for FID (default: stage 1's data and held-out split)")
    p.add_argument("--fid-weights", default=None, help="TorchScript FID extractor (default: the standard Inception)")
    p.add_argument("--processes", type=int, default=1, help="processes per stage (accelerate launch; GPUs)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per process (default: Accelerate's)")
    p.add_argument("--figure-seed", type=int, default=None, help="the training seed shown in figure11.png")
    p.add_argument("--archive", default=None, metavar="DIR",
                   help="a folder to commit (e.g. checkpoints/compare/celeba64) that keeps every finished stage's small "
                        "outputs: the tokenizer export and metrics, the prior in fp16 and its metrics, the FID/KID "
                        "JSONs and the figure's samples. A stage found there is restored instead of run, so a fresh "
                        "clone resumes the comparison where the last one stopped")
    p.add_argument("--snapshot", action="store_true",
                   help="with --archive: only copy into it what the rows have now, also the latest checkpoint of "
                        "a training stage that has not finished (to move a comparison to another machine, or "
                        "before a session ends), then stop; nothing trains")
    p.add_argument("--quiet", action="store_true", help="stage output to the logs only (<out>/logs/)")
    p.add_argument("--status", action="store_true",
                   help="train nothing: print where each row stands (run folder and archive; STATUS.md in the "
                        "archive), and write the tables and figure of the rows finished in the run folder")
    p.epilog = "s1.KEY=VALUE / s2.KEY=VALUE overrides (anywhere on the line) apply to every tokenizer / prior"
    argv = list(sys.argv[1:] if argv is None else argv)
    is_override = [a.startswith(("s1.", "s2.")) and "=" in a for a in argv]
    args = p.parse_args([a for a, o in zip(argv, is_override) if not o])
    given = [a for a, o in zip(argv, is_override) if o]
    args.s1 = [a[3:] for a in given if a.startswith("s1.")]
    args.s2 = [a[3:] for a in given if a.startswith("s2.")]
    # the comparison's command, as the tables show it (without the flags that only report or archive)
    args.command = "python -m stage2_prior.compare " + " ".join(a for a in argv if a not in ("--status", "--snapshot"))
    return args


def _defining(cfg: Any, per_run: tuple[str, ...]) -> dict:
    """A resolved config without the keys each run sets for itself."""
    flat: dict[str, Any] = {}

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            elif f"{prefix}{k}" not in per_run:
                flat[f"{prefix}{k}"] = v
    walk(to_dict(cfg), "")
    return {k: flat[k] for k in sorted(flat) if not k.endswith(("progress_bar", "tracker", "num_workers"))}


def real_source(cfg: Stage1Config) -> str:
    """Stage 1's data as a ``stage2_prior.fid`` source: the same images, preprocessing and held-out split."""
    d = cfg.data
    return str(d.path) if d.dataset in ("npz", "folder", "auto") else f"{d.dataset}:{d.path}"


class Comparison:
    """Paths and stages of one comparison folder."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.root = Path(args.out)
        self.s1 = load_config(Stage1Config, args.stage1, args.s1)
        self.s2 = load_config(Stage2Config, args.stage2, args.s2)
        self.betas = stage1_compare.betas(self.s1, args.beta)
        self.real = args.real or real_source(self.s1)
        self.launcher = Launcher(args.processes, args.threads, self.root / "logs", quiet=args.quiet)
        self.archive = Archive(Path(args.archive), self.root) if args.archive else None

    # -------------------------------------------------------------------------------------------- checks
    def check(self, claim: bool = True) -> None:
        """Everything that can be refused before anything trains; ``claim=False`` checks an existing folder's
        record but writes none (``--status`` changes nothing)."""
        unknown = [q for q in self.args.quantizers if q not in QUANTIZERS]
        if unknown:
            raise ConfigError(f"unknown quantizer(s) {', '.join(unknown)}; available: {', '.join(QUANTIZERS)}")
        if self.s2.model.class_conditional:
            raise ConfigError(f"'{self.args.stage2}' trains a class-conditional prior; the comparison samples "
                              "unconditionally: use an unconditional stage-2 config (model.class_conditional=false)")
        if self.args.processes < 1 or (self.args.threads is not None and self.args.threads < 1):
            raise ConfigError("--processes and --threads must be at least 1")
        if self.args.num_samples < 4 or any(s < 0 for s in self.args.sample_seeds):
            raise ConfigError("--num-samples must be at least 4 and the sample seeds non-negative")
        settings = {"stage1": _defining(self.s1, PER_RUN_STAGE1), "stage2": _defining(self.s2, PER_RUN_STAGE2),
                    "betas": self.betas, "real": self.real, "num_samples": self.args.num_samples,
                    "sample_seeds": self.args.sample_seeds, "sample_batch_size": self.args.sample_batch_size,
                    "fid_weights": self.args.fid_weights}
        record = Record(self.root, "compare.json", "generation comparison")
        if claim or record.path.is_file():
            self.record = record.claim(settings, "Use the settings it was made with (see its compare.json), or "
                                                 "another --out.")

    # -------------------------------------------------------------------------------------------- stages
    def row_name(self, quantizer: str, seed: int) -> str:
        return stage1_compare.run_name(quantizer, seed)

    def stage(self, name: str, row: str, done: bool, command: list[str]) -> None:
        """Run ``command`` unless ``done``; its wall time goes into the row's times.json (while it runs too)."""
        if done:
            return
        self.launcher.run(f"{row}.{name}", command, times=self.root / "rows" / row / "times.json", key=name)
        if self.archive is not None:
            self.archive.save(row)

    def run_row(self, quantizer: str, seed: int) -> dict | None:
        """All stages of one row (each skipped when done); returns its results, or None when another driver has it."""
        row = self.row_name(quantizer, seed)
        lock = FolderLock(self.root / "rows" / row)
        if not lock.acquire():
            print(f"[{row}] another driver (pid {lock.holder()}) is working on this row: skipped here", flush=True)
            return None
        with lock:
            if self.archive is not None:
                self.archive.restore(row)
            return self._run_row(quantizer, seed, row)

    def _run_row(self, quantizer: str, seed: int, row: str) -> dict:
        a, L, root = self.args, self.launcher, self.root
        s1_dir, tokens, s2_dir = root / "stage1" / row, root / "tokens" / row, root / "stage2" / row
        tokenizer, prior, row_dir = s1_dir / "tokenizer", s2_dir / "prior", root / "rows" / row
        # 1. The tokenizer: stage 1's comparison settings (the same train.py arguments as stage1_tokenizer.compare).
        self.stage("tokenizer", row, stage1_compare.finished(s1_dir, self.s1.train.max_steps), L.accelerate(
            "stage1_tokenizer/train.py",
            stage1_compare.train_arguments(a.stage1, a.s1, s1_dir, quantizer, seed, self.betas[quantizer])))
        # 2. Its codes, extracted once (mirror images too when stage 1 trained with flips).
        self.stage("tokens", row, (tokens / "manifest.json").is_file(), L.accelerate(
            "stage2_prior/extract_tokens.py", ["--tokenizer", str(tokenizer), "--out", str(tokens)]))
        # 3. The prior on them: the same config, steps and schedule for every row.
        prior_done = prior.is_dir() and (s2_dir / "metrics.json").is_file() and \
            read_json(s2_dir / "metrics.json").get("step") == self.s2.train.max_steps
        self.stage("prior", row, prior_done, L.accelerate("stage2_prior/train.py", [
            "--config", a.stage2, *a.s2, f"output_dir={s2_dir}", f"data.tokens={tokens}", f"tokenizer={tokenizer}",
            f"train.seed={seed}", "resume=latest"]))
        # 4. The tokenizer's reconstruction FID on the held-out images: the floor for its samples.
        fid_common = ["--real", self.real, "--real-split", "test", "--test-fraction", str(self.s1.data.test_fraction),
                      "--split-seed", str(self.s1.data.split_seed), "--image-size", str(self.s1.data.image_size)]
        if a.fid_weights:
            fid_common += ["--weights", a.fid_weights]
        self.stage("rfid", row, (row_dir / "rfid.json").is_file(), L.module("stage2_prior.fid", [
            *fid_common, "--reconstruct-with", str(tokenizer), "--out", str(row_dir / "rfid.json")]))
        # 5. Samples at the two common settings, each with its FID and KID.
        for setting, seeds in ((UNFILTERED, a.sample_seeds[:1]), (NUCLEUS, a.sample_seeds)):
            for k in seeds:
                out = root / "samples" / row / f"{setting.name}_seed{k}"
                self.stage(f"sample_{setting.name}_seed{k}", row, (out / "samples.json").is_file(), L.accelerate_module(
                    "stage2_prior.sample", [
                        "--prior", str(prior), "--tokenizer", str(tokenizer), "--num", str(a.num_samples),
                        "--seed", str(k), "--temperature", str(setting.temperature), "--top-k", "0",
                        "--top-p", str(setting.top_p), "--batch-size", str(a.sample_batch_size), "--out", str(out)]))
                self.stage(f"fid_{setting.name}_seed{k}", row, (out / "fid.json").is_file(), L.module(
                    "stage2_prior.fid", [*fid_common, "--fake", str(out), "--out", str(out / "fid.json")]))
        results = self.row_results(quantizer, seed, row)
        write_json(row_dir / "results.json", results)
        if self.archive is not None:
            self.archive.save(row)   # the row's results too, so that a clone's --status and tables have them
        return results

    # -------------------------------------------------------------------------------------------- one row
    def row_results(self, quantizer: str, seed: int, row: str) -> dict:
        """One row of results.json from the stages' own output files."""
        root, a = self.root, self.args
        s1 = read_json(root / "stage1" / row / "metrics.json")
        s2 = read_json(root / "stage2" / row / "metrics.json")
        rfid = read_json(root / "rows" / row / "rfid.json")
        usage = token_usage(root / "tokens" / row)
        times = read_json(root / "rows" / row / "times.json") if (root / "rows" / row / "times.json").is_file() else {}
        settings = {}
        for setting, seeds in ((UNFILTERED, a.sample_seeds[:1]), (NUCLEUS, a.sample_seeds)):
            runs = [read_json(root / "samples" / row / f"{setting.name}_seed{k}" / "fid.json") for k in seeds]
            fids, kids = [r["fid"] for r in runs], [r["kid"] for r in runs]
            settings[setting.name] = {
                "text": setting.text, "temperature": setting.temperature, "top_p": setting.top_p, "top_k": 0,
                "seeds": list(seeds), "fid": fids, "fid_mean": statistics.mean(fids),
                "fid_std": statistics.stdev(fids) if len(fids) > 1 else None,
                "kid": kids, "kid_std_over_subsets": [r["kid_std"] for r in runs],
                "kid_mean": statistics.mean(kids), "fid_over_rfid": statistics.mean(fids) / rfid["fid"]}
        warnings = []
        if s1["codes_used"] < COLLAPSED_CODES:
            warnings.append(f"the tokenizer collapsed: {s1['codes_used']} codes used on the held-out split")
        return {
            "quantizer": quantizer, "seed": seed, "beta_max": self.betas[quantizer],
            "budget": {"stage1_steps": self.s1.train.max_steps, "stage1_batch": self.s1.train.batch_size,
                       "prior_steps": self.s2.train.max_steps, "prior_batch": self.s2.train.batch_size,
                       "prior_size": self.s2.model.size, "prior_arch": self.s2.model.arch,
                       "num_samples": a.num_samples},
            "wall_s": times, "wall_s_total": round(sum(times.values()), 1),
            "tokenizer": {"psnr": s1["psnr"], "mse": s1["mse"], "codes_used": s1["codes_used"],
                          "perplexity_split": s1["perplexity_split"], "rfid": rfid["fid"], "rkid": rfid.get("kid"),
                          "n_test": s1.get("n_images")},
            "tokens": usage,
            "prior": {"bits_per_token": s2["nll_bits_per_token"], "bits_per_image": s2["nll_bits_per_image"],
                      "split": "test (held out)"},
            "sampling": settings, "warnings": warnings,
        }

    # -------------------------------------------------------------------------------------------- reports
    def finished_rows(self) -> list[dict]:
        """Every finished row in the folder (also those another driver made), quantizer order, then seed."""
        rows = [read_json(p) for p in sorted((self.root / "rows").glob("*/results.json"))]
        order = {q: i for i, q in enumerate(QUANTIZERS)}
        return sorted(rows, key=lambda r: (order.get(r["quantizer"], 99), r["seed"]))

    def report(self) -> list[dict]:
        rows = self.finished_rows()
        if not rows:
            return rows
        write_json(self.root / "results.json", rows)
        atomic_write_text(self.root / "results.md", results_markdown(rows, self.args.command, self.s1, self.s2))
        seed = self.args.figure_seed if self.args.figure_seed is not None else rows[0]["seed"]
        shown = [r for r in rows if r["seed"] == seed]
        if shown:
            plot_figure11(self, shown, self.root / "figure11.png")
        return rows


def token_usage(folder: Path) -> dict:
    """Codes used and perplexity of the training tokens the prior learned from (mirror images included)."""
    import numpy as np

    from stage2_prior.tokens import Manifest

    manifest = Manifest.load(folder)
    counts = np.zeros(manifest.tokenizer.codebook_size, np.int64)
    for name in manifest.splits["train"].shards:
        counts += np.bincount(np.load(folder / name).reshape(-1), minlength=len(counts))
    p = counts[counts > 0] / counts.sum()
    return {"split": "train", "sequences": manifest.splits["train"].count, "codes_used": int((counts > 0).sum()),
            "perplexity": float(math.exp(-(p * np.log(p)).sum()))}


def write_status(cmp: Comparison) -> str:
    """Every row's state as a table (the requested rows and any other the run folder or archive holds),
    printed and (with ``--archive``) kept in its STATUS.md."""
    from stage2_prior.compare_status import row_status, rows_to_show, status_markdown

    text = status_markdown(cmp, [row_status(cmp, q, seed) for q, seed in rows_to_show(cmp)])
    if cmp.archive is not None:
        cmp.archive.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cmp.archive.folder / "STATUS.md", text)
    print(text, flush=True)
    return text


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    cmp = Comparison(args)
    # refused here, before anything trains: unknown quantizers, wrong configs, another comparison
    cmp.check(claim=not args.status)
    if args.snapshot:
        if cmp.archive is None:
            raise ConfigError("--snapshot copies into the --archive folder: pass --archive DIR")
        for q in args.quantizers:
            for seed in args.seeds:
                cmp.archive.save(cmp.row_name(q, seed), partial=True)
        write_status(cmp)
        return cmp.finished_rows()
    if args.status:
        write_status(cmp)
        return cmp.report() if (cmp.root / "rows").is_dir() else []
    for q in args.quantizers:
        for seed in args.seeds:
            cmp.run_row(q, seed)
    rows = cmp.report()
    if (cmp.root / "results.md").is_file():
        print((cmp.root / "results.md").read_text())
    return rows


if __name__ == "__main__":
    run_cli(main)
