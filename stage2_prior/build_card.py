"""The model card of a build (``OUT/README.md``), generated from the files the stages wrote.

Same sections as the shipped card (checkpoints/celeba64/README.md): what it is, data, how it was trained
(every command, steps, wall time, machine), the metrics on the held-out images (tokenizer, prior, samples,
with the reconstruction and sample grids), what it is not, and the files; with the Hugging Face model-card
metadata header (license, datasets, metrics, tags), so ``push_to_hub`` of the folder publishes a proper card.
Every number is read from a stage's own JSON output; nothing is typed in.
"""

from __future__ import annotations

from pathlib import Path

from edvae_common.io import atomic_write_text, read_json

# The license of each named dataset's images (the model card's metadata), and a Hub id where there is one.
LICENSES = {"celeba": ("celeba-research-only", "CelebA: non-commercial research and education only"),
            "lsun_church": ("lsun-research-only", "LSUN: research use; the images' own copyrights apply"),
            "cifar10": ("cifar10-unstated", "CIFAR-10: no license stated by its authors")}
UNKNOWN = ("same-as-training-images", "the license of the training images applies (pass --license to name it)")
DATASET_IDS = {"cifar10": "uoft-cs/cifar10", "celeba": "CelebA", "lsun_church": "LSUN church_outdoor"}


def parameters(folder: Path) -> int:
    """Parameters of an export, counted from its safetensors header (nothing loaded)."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        for key in f.keys():
            n = 1
            for d in f.get_slice(key).get_shape():
                n *= d
            total += n
    return total


def _json(path: Path) -> dict:
    return read_json(path) if path.is_file() else {}


def _hms(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min" if h else (f"{m} min {s:02d} s" if m else f"{s} s")


def metadata(kind: str, source: str, license_: str | None, arch: str, has_kid: bool) -> str:
    name, _ = LICENSES.get(kind, UNKNOWN)
    dataset = DATASET_IDS.get(kind) or (source.split(":", 1)[1] if kind == "hf" else Path(source.split(":", 1)[-1]).name)
    lines = ["---", f"license: {license_ or 'other'}", *([] if license_ else [f"license_name: {name}"])]
    lines += ["datasets:", f"- {dataset}", "metrics:", "- psnr", "- perplexity", "- fid", *(["- kid"] if has_kid else []),
              "tags:", "- edvae", "- image-tokenizer", "- autoregressive", f"- {arch}",
              "- unconditional-image-generation", "pipeline_tag: unconditional-image-generation", "---", ""]
    return "\n".join(lines)


def _files(out: Path) -> list[str]:
    rows = []
    for part in ("tokenizer", "prior"):
        folder = (out / part).resolve()
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            rows.append(f"| `{part}/{f.relative_to(folder)}` | {f.stat().st_size:,} |")
    return rows


def write_card(b, splits, stages, rerun: str) -> Path:
    """Write ``OUT/README.md`` for the build ``b`` (a stage2_prior.build.Build) from its outputs."""
    out, p, t1, t2 = b.out, b.preset, b.tok_cfg, b.prior_cfg
    ev = _json(out / "metrics/tokenizer_test.json")
    nll = _json(out / "stage2/metrics.json")
    sweep = _json(out / "sweep/sweep.json")
    fid = _json(out / "metrics/fid.json")
    times = _json(out / "times.json")
    commands = _json(out / "commands.json") if (out / "commands.json").is_file() else []
    sampling = _json(out / "prior/sampling.json")
    plan = (out / "plan.txt").read_text().rstrip() if (out / "plan.txt").is_file() else ""
    size, n_test = t1.data.image_size, ev.get("n_images", splits.n_test)
    has_kid = "kid" in fid
    kid = f", KID {fid['kid']:.4f} ± {fid.get('kid_std', float('nan')):.4f}" if has_kid else ""
    no_kid = "" if has_kid else (" KID: not reported (this version of stage2_prior.fid writes no `kid` field).")
    total = sum(times.values())
    settings = f"temperature {sampling.get('temperature')}, top-k {sampling.get('top_k') or 'off'}, top-p " \
               f"{sampling.get('top_p')}"
    decoder = "" if p.decoder is None else f"; decoder fine-tuned on its argmax codes ({p.describe_decoder()})"
    runs: dict[str, list[str]] = {}
    for c in commands:
        runs.setdefault(c["stage"], []).append(c["command"])

    text = [metadata(b.source.kind, b.given if ":" in b.given else b.source.spec, b.args.license, t2.model.arch, has_kid),
            f"# {b.args.name}: an EdVAE tokenizer and a {t2.model.arch} prior for {size} x {size} images of "
            f"`{b.given}`", "",
            f"**Status: built by `python -m stage2_prior.build` with the `{p.name}` preset ({p.scale} scale).** "
            f"The tokenizer reconstructs the {n_test:,} held-out images at {ev.get('psnr', float('nan')):.2f} dB "
            f"with {ev.get('codes_used', 0)} codes in use (perplexity {ev.get('perplexity_split', float('nan')):.1f}); "
            f"rFID {sweep.get('rfid', float('nan')):.2f}. Samples ({settings}, chosen by an FID sweep) score FID "
            f"{fid.get('fid', float('nan')):.2f}{kid} ({fid.get('n_fake', 0):,} samples against "
            f"{fid.get('n_real', 0):,} held-out images). Built in {_hms(total)} on {b.machine}.", "",
            "```python", "from stage2_prior.pipeline import Pipeline", "",
            f'pipe = Pipeline.from_pretrained("{out}/tokenizer", "{out}/prior")',
            "images = pipe.generate(16, seed=0)      # the recommended sampling settings of prior/sampling.json",
            "```", "",
            f"In the app: `python -m app` lists it as `{b.args.name}` (configs/models.local.yaml); "
            f"`python -m app --model {out}` serves it alone.", "",
            "## What it is", "",
            "| part | what | parameters |", "|---|---|---|",
            f"| `tokenizer/` | EdVAE at width {t1.model.channels}, codebook {t1.model.codebook_size} x "
            f"{t1.model.codebook_dim}, first kernel {t1.model.first_kernel}; {size} x {size} images -> "
            f"{size // 2 ** (len(t1.model.channel_mults) - 1)} x {size // 2 ** (len(t1.model.channel_mults) - 1)} "
            f"tokens; {t1.train.max_steps:,} steps of batch {t1.train.batch_size}, beta {t1.train.beta_max:g}{decoder} | "
            f"{parameters(out / 'tokenizer'):,} |",
            f"| `prior/` | `transformers` {t2.model.arch}, size `{t2.model.size}`, {t2.train.max_steps:,} steps of "
            f"batch {t2.train.batch_size}{', EMA weights' if t2.train.ema_decay else ''} | {parameters(out / 'prior'):,} |",
            "", "## Data", "",
            f"`{b.given}` read as `{b.source.kind}`"
            + (f" (through `{b.source.path}`, links to its readable images)" if b.source.spec != b.given and
               b.source.path.endswith("/data") else "") + f": {splits.n_train:,} training and {splits.n_test:,} "
            f"held-out images; split: {splits.split_rule}. Preprocessing: {splits.preprocessing}."
            + (" Training images flipped left-right at random (and mirrored for the prior)." if t1.data.hflip else ""),
            f" License of the images: {b.args.license or LICENSES.get(b.source.kind, UNKNOWN)[1]}.",
            "", *[f"- {n}" for n in b.notes], *([""] if b.notes else []),
            "## How it was trained (commands, configs, wall time)", "",
            f"Machine: {b.machine}. The build command:", "", "```bash", rerun, "```", "",
            "and the commands it ran (each stage is the project's own script; a stage run more than once was "
            "interrupted and resumed from its latest checkpoint):", "", "```bash"]
    for stage in [s.name for s in stages]:
        for i, c in enumerate(dict.fromkeys(runs.get(stage, []))):
            n = runs[stage].count(c)
            text.append(f"# {stage}" + (f" (run {n} times)" if n > 1 else "") + f"\n{c}")
    text += ["```", "", "| stage | steps | wall time |", "|---|---|---|"]
    text += [f"| {s.name} | {s.steps} | {_hms(times[s.name]) if s.name in times else '-'} |" for s in stages]
    text += [f"| **total** | | **{_hms(total)}** |", "", "The plan printed before it started (estimates):", "",
             "```", plan, "```", "",
             f"## Metrics on the {n_test:,} held-out images", "", "### Tokenizer (argmax codes)", "",
             "| MSE ([0, 1]) | PSNR (dB, mean per image) | perplexity over the split | perplexity per 128 images | "
             "codes used (of 512) | mean uncertainty K/S |", "|---|---|---|---|---|---|",
             f"| {ev.get('mse', float('nan')):.5f} | {ev.get('psnr', float('nan')):.2f} | "
             f"{ev.get('perplexity_split', float('nan')):.1f} | {ev.get('perplexity_batch', float('nan')):.1f} | "
             f"{ev.get('codes_used', 0)} | {ev.get('mean_uncertainty') or float('nan'):.4f} |", "",
             "![reconstructions](metrics/tokenizer_test_recon.png)", "",
             "(odd rows: held-out images; even rows: their reconstructions from argmax codes; "
             "`metrics/tokenizer_test.json`)", "", "### Prior", "",
             f"Validation NLL on the held-out images' tokens: **{nll.get('nll_bits_per_token', float('nan')):.3f} "
             f"bits per token** ({nll.get('nll_bits_per_image', float('nan')):,.1f} bits per image; "
             "`stage2/metrics.json`).", "", "### Samples", "",
             f"Sampling settings chosen by FID ({sweep.get('num_samples', 0):,} samples per setting, seed 0, against "
             f"{sweep.get('num_real', 0):,} held-out images; the tokenizer's rFID on them: "
             f"{sweep.get('rfid', float('nan')):.2f}; `sweep/sweep.json`):", "",
             "| temperature | top-k | top-p | FID | FID / rFID |", "|---|---|---|---|---|"]
    best = sweep.get("best", {})
    for r in sweep.get("rows", []):
        mark = "**" if r == best else ""
        text.append(f"| {mark}{r['temperature']:g}{mark} | {r['top_k'] or 'off'} | {r['top_p']:g} | "
                    f"{mark}{r['fid']:.2f}{mark} | {r['fid_over_rfid']:.2f} |")
    text += ["", f"With the chosen settings ({settings}; `prior/sampling.json`): FID **{fid.get('fid', float('nan')):.2f}**"
             f"{kid} for {fid.get('n_fake', 0):,} samples against {fid.get('n_real', 0):,} held-out images "
             f"(`metrics/fid.json`, {fid.get('protocol', {}).get('protocol', 'pytorch-fid')} protocol).{no_kid} The first 64:",
             "", "![samples](samples/grid.png)", "",
             "## What it is not", "",
             f"- Not the paper's model unless the preset is: `{p.name}` is {p.about}.",
             f"- Its FID uses {fid.get('n_fake', 0):,} samples and {fid.get('n_real', 0):,} real images: not "
             "comparable with published FIDs (50,000 samples, the full dataset).",
             "- Generated by the build from the files its stages wrote; read the numbers with the data above.", "",
             "## Files", "", "| file | bytes |", "|---|---|", *_files(out), ""]
    path = out / "README.md"
    atomic_write_text(path, "\n".join(text))
    return path
