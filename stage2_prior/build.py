"""From a folder of images (or any stage-1 source) to a generator in the app, in one command.

    python -m stage2_prior.build --data folder:/my/images --name mine [--preset auto] [--out DIR] [key=value ...]
    python -m stage2_prior.build --data lsun_church:/data/lsun --name churches --preset lsun_church128

Runs, in order, each stage as the project's own script in a child process (``accelerate launch`` for the
trainings and the extraction, ``python -m`` for the rest): the tokenizer (stage1_tokenizer/train.py), the
decoder fine-tune on argmax codes where the preset has one (stage1_tokenizer.finetune_decoder), token
extraction (stage2_prior/extract_tokens.py), the prior (stage2_prior/train.py), the sampling sweep on the
held-out split that writes the prior's sampling.json (stage2_prior.sweep), 64+ samples and their grid
(stage2_prior.sample), the tokenizer's metrics (stage1_tokenizer.evaluate: PSNR, codes used, perplexity; rFID
comes from the sweep) and the samples' FID (stage2_prior.fid; KID too when fid.py reports it). Then it writes
a model card (OUT/README.md), links OUT/tokenizer and OUT/prior to the final exports, and registers the model
for the app in configs/models.local.yaml (python -m app lists it; python -m app --model OUT serves it alone).

Before starting it checks the data (unreadable, non-image, tiny, oddly-moded files; missing or unreadable
LMDBs; batches larger than the data) and prints the plan with each stage's steps and wall time here,
estimated from a few measured steps. A stage whose outputs are complete is skipped; an interrupted one
resumes from its latest checkpoint; a finished build rerun does nothing. OUT/build.json records the settings
of every stage: a rerun with other settings is refused with the differences named (--restart-from STAGE
rebuilds from that stage on). Presets: stage2_prior/presets.py; docs/build.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from edvae_common.config import ConfigError, load_config
from edvae_common.io import read_json, write_json
from edvae_common.runs import list_checkpoints
from stage2_prior import build_data, build_plan, presets
from stage2_prior.driver import PROJECT_ROOT, FolderLock, Launcher, Record, StageFailed, differences, shown

STAGES = ("tokenizer", "decoder", "tokens", "prior", "sweep", "samples", "evaluate", "fid")
DEFAULT_REGISTRY = PROJECT_ROOT / "configs" / "models.local.yaml"   # app/registry.py merges it into configs/app.yaml


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m stage2_prior.build", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="presets:\n" + "\n".join(f"  {p.name:<19} {p.about}" for p in presets.PRESETS.values())
                                + "\n\nkey=value overrides go to one stage by their first word: tokenizer.KEY=V and data.KEY=V "
                                "(stage-1 config keys), prior.KEY=V (stage-2 keys), decoder.FLAG=V (finetune_decoder "
                                "flags; decoder=off skips it), sweep.temperature=1.0,0.95, sweep.top_p=..., "
                                "sweep.top_k=..., sweep.num=N, fid.num=N, samples.num=N (docs/build.md)")
    p.add_argument("--data", required=True, metavar="SOURCE",
                   help="the images: folder:PATH, npz:PATH, lsun_church:PATH, celeba:PATH, cifar10:PATH, hf:user/name "
                        "(or a saved datasets folder), or a bare path (its kind is detected)")
    p.add_argument("--name", required=True, help="the model's name (in the app's model list; default folder runs/build/NAME)")
    p.add_argument("--preset", default="auto", help=f"the recipe (default auto): {', '.join(presets.PRESETS)}")
    p.add_argument("--out", default=None, help="output folder (default runs/build/NAME under the project)")
    p.add_argument("--hours", type=float, default=None,
                   help="auto preset: the time budget of the trainings on this machine (default 2); steps are fitted "
                        "to it from measured step times")
    p.add_argument("--restart-from", default=None, choices=STAGES,
                   help="rebuild from this stage on (its outputs and every later stage's are deleted): to change the "
                        "settings of a finished build")
    p.add_argument("--plan-only", action="store_true", help="check the data, print the plan and stop")
    p.add_argument("--processes", type=int, default=1, help="processes per training stage (accelerate launch; GPUs)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per process (default: Accelerate's)")
    p.add_argument("--registry", default=str(DEFAULT_REGISTRY),
                   help="the app's user registry to add the model to (default configs/models.local.yaml; '' = none)")
    p.add_argument("--license", default=None,
                   help="license of the images, for the model card's metadata (default: the dataset's, else 'other')")
    p.add_argument("--fid-weights", default=None, help="FID feature extractor (default: the standard Inception)")
    p.add_argument("--quiet", action="store_true", help="stage output to OUT/logs only, not the console")
    p.add_argument("overrides", nargs="*", help="key=value: tokenizer.KEY=V, data.KEY=V, prior.KEY=V, decoder.FLAG=V, "
                                               "decoder=off, sweep.temperature=1.0,0.9, sweep.num=N, fid.num=N, samples.num=N")
    args = p.parse_args(argv)
    if args.processes < 1 or (args.threads is not None and args.threads < 1):
        p.error("--processes and --threads must be at least 1")
    return args


@dataclass
class Stage:
    name: str
    what: str
    command: list[str]
    done: Callable[[], bool]
    outputs: list[Path]                     # what --restart-from deletes
    settings: dict                          # what defines its outputs (recorded in OUT/build.json)
    steps: str = ""
    seconds: float | None = None
    done_now: bool = False                  # complete when the build started


@dataclass
class Build:
    """Everything the stages are built from: the recipe, the folders, the resolved stage configs."""

    args: argparse.Namespace
    preset: presets.Preset
    out: Path
    source: build_data.Source               # what the stages read
    given: str                              # --data as given
    tok_cfg: object = None                  # Stage1Config
    prior_cfg: object = None                # Stage2Config
    notes: list[str] = field(default_factory=list)
    machine: str = ""                       # this machine in words (plan, card)

    @property
    def tokenizer(self) -> Path:            # the tokenizer the prior is trained on and served with
        return self.out / ("decoder" if self.preset.decoder is not None else "stage1") / "tokenizer"


def _portable(value, out: Path):
    """A setting with the output folder written as <out> (the record survives moving the folder)."""
    if isinstance(value, dict):
        return {k: _portable(v, out) for k, v in value.items()}
    if isinstance(value, list):
        return [_portable(v, out) for v in value]
    return value.replace(str(out), "<out>") if isinstance(value, str) else value


def _flags(args: list[str]) -> dict:
    """``--flag a b --other`` -> {'flag': 'a b', 'other': ''}: a command's settings, keyed for the record."""
    out, key = {}, None
    for a in args:
        if a.startswith("--"):
            key = a[2:]
            out[key] = ""
        elif key is not None:
            out[key] = f"{out[key]} {a}".strip()
    return out


def tokenizer_overrides(b: Build) -> list[str]:
    """Stage 1's overrides: the source first (so data.* overrides win), the preset's and the user's, the folder."""
    p = b.preset
    return [f"data.dataset={b.source.kind}", f"data.path={b.source.path}", f"data.image_size={p.image_size}",
            *p.tokenizer, f"output_dir={b.out / 'stage1'}", "train.final_eval=true"]


def prior_overrides(b: Build) -> list[str]:
    return [*b.preset.prior, f"data.tokens={b.out / 'tokens'}", f"output_dir={b.out / 'stage2'}",
            f"tokenizer={b.tokenizer}"]


def resolve_configs(b: Build) -> None:
    """The two training configs, resolved and checked by the stages' own schemas (a bad key stops here)."""
    from stage1_tokenizer import Stage1Config
    from stage2_prior.config import Stage2Config

    b.tok_cfg = load_config(Stage1Config, PROJECT_ROOT / b.preset.tokenizer_config, tokenizer_overrides(b))
    b.prior_cfg = load_config(Stage2Config, PROJECT_ROOT / b.preset.prior_config, prior_overrides(b))


def _config_args(path: str, overrides: list[str], cfg) -> tuple[list[str], dict]:
    from edvae_common.config import to_dict

    settings = to_dict(cfg)
    settings.pop("resume", None)
    return ["--config", str(PROJECT_ROOT / path), *overrides, "resume=latest"], settings


def make_stages(b: Build, launcher: Launcher) -> list[Stage]:
    """Every stage: its command, how to tell it is complete, what it writes, and what defines it."""
    p, out, t1, t2 = b.preset, b.out, b.tok_cfg, b.prior_cfg
    data = t1.data
    stages = []

    # 1. Tokenizer: stage 1's training script on the source, the final evaluation on the whole held-out split.
    args, settings = _config_args(p.tokenizer_config, tokenizer_overrides(b), t1)
    metrics1 = out / "stage1" / "metrics.json"
    stages.append(Stage("tokenizer", "EdVAE tokenizer, stage1_tokenizer/train.py",
                        launcher.accelerate("stage1_tokenizer/train.py", args),
                        lambda: (out / "stage1/tokenizer/config.json").is_file() and metrics1.is_file()
                        and read_json(metrics1).get("step") == t1.train.max_steps,
                        [out / "stage1"], settings, f"{t1.train.max_steps:,} steps of batch {t1.train.batch_size}"))

    # 2. Decoder fine-tune on the tokenizer's argmax codes (encoder and codebook frozen: the tokens do not change).
    if p.decoder is not None:
        flags = [x for k, v in p.decoder for x in ([f"--{k}", v] if v else [f"--{k}"])]
        args = ["--tokenizer", str(out / "stage1"), "--out", str(out / "decoder"), *flags, "--resume", "latest"]
        steps = int(dict(p.decoder).get("steps", 1500))
        record = out / "decoder/tokenizer/decoder_finetune.json"
        stages.append(Stage("decoder", "decoder fine-tune on argmax codes, stage1_tokenizer/finetune_decoder.py",
                            launcher.accelerate_module("stage1_tokenizer.finetune_decoder", args),
                            lambda: record.is_file() and read_json(record).get("steps") == steps,
                            [out / "decoder"], _flags(flags), f"{steps:,} steps of batch {dict(p.decoder).get('batch-size', 64)}"))

    # 3. Tokens of both splits, once (the tokenizer's own training data, split and flips).
    args = ["--tokenizer", str(b.tokenizer), "--out", str(out / "tokens")]
    stages.append(Stage("tokens", "token extraction, stage2_prior/extract_tokens.py",
                        launcher.accelerate("stage2_prior/extract_tokens.py", args),
                        lambda: (out / "tokens/manifest.json").is_file(), [out / "tokens"], {},
                        "both splits, argmax codes"))

    # 4. The prior on those tokens.
    args, settings = _config_args(p.prior_config, prior_overrides(b), t2)
    training = out / "stage2/prior/training.json"
    stages.append(Stage("prior", f"{t2.model.arch} prior ({t2.model.size}), stage2_prior/train.py",
                        launcher.accelerate("stage2_prior/train.py", args),
                        lambda: training.is_file() and read_json(training).get("steps") == t2.train.max_steps,
                        [out / "stage2"], settings, f"{t2.train.max_steps:,} steps of batch {t2.train.batch_size}"))

    # 5. Sampling sweep by FID on the held-out split (also the tokenizer's rFID); writes the prior's sampling.json.
    real = ["--real", b.source.spec, "--real-split", "test", "--test-fraction", str(data.test_fraction),
            "--split-seed", str(data.split_seed)]
    weights = ["--weights", b.args.fid_weights] if b.args.fid_weights else []
    grid = ["--temperature", *map(str, p.sweep_temperature), "--top-k", *map(str, p.sweep_top_k),
            "--top-p", *map(str, p.sweep_top_p)]
    args = ["--tokenizer", str(b.tokenizer), "--prior", str(out / "stage2/prior"), *real, "--num", str(p.sweep_num),
            *grid, "--seed", "0", "--out", str(out / "sweep"), "--write-recommended", *weights]
    n_settings = len(p.sweep_temperature) * len(p.sweep_top_k) * len(p.sweep_top_p)
    stages.append(Stage("sweep", "sampling sweep by FID, stage2_prior.sweep", launcher.module("stage2_prior.sweep", args),
                        lambda: (out / "sweep/sweep.json").is_file() and (out / "stage2/prior/sampling.json").is_file(),
                        [out / "sweep", out / "stage2/prior/sampling.json"], _flags(args),
                        f"{n_settings} setting(s) x {p.sweep_num:,} samples"))

    # 6. Samples with the recommended settings; grid.png holds the first 64.
    n_samples = max(p.samples, p.fid_num)
    args = ["--prior", str(out / "stage2/prior"), "--tokenizer", str(b.tokenizer), "--num", str(n_samples),
            "--seed", "0", "--grid", "64", "--out", str(out / "samples")]
    stages.append(Stage("samples", "samples and their grid, stage2_prior.sample",
                        launcher.module("stage2_prior.sample", args), lambda: (out / "samples/samples.json").is_file(),
                        [out / "samples"], _flags(args), f"{n_samples:,} images"))

    # 7. The tokenizer's held-out metrics (PSNR, codes used, perplexity) with the tokenizer that is served.
    evaluation = out / "metrics/tokenizer_test.json"
    args = ["--checkpoint", str(b.tokenizer), "--data", b.source.spec, "--split", "test", "--out", str(evaluation)]
    stages.append(Stage("evaluate", "tokenizer metrics, stage1_tokenizer.evaluate",
                        launcher.module("stage1_tokenizer.evaluate", args), evaluation.is_file,
                        [out / "metrics"], _flags(args), "the held-out split"))

    # 8. The samples' FID (and KID where fid.py reports it) against the held-out split.
    fid_json = out / "metrics/fid.json"
    args = [*real, "--image-size", str(data.image_size), "--fake", str(out / "samples"), "--num-real",
            str(p.fid_num), "--num-fake", str(p.fid_num), "--out", str(fid_json), *weights]
    stages.append(Stage("fid", "samples' FID, stage2_prior.fid", launcher.module("stage2_prior.fid", args),
                        fid_json.is_file, [fid_json], _flags(args), f"{p.fid_num:,} samples vs held-out images"))
    for s in stages:
        s.settings = _portable(s.settings, out)
    return stages


def estimate(b: Build, stages: list[Stage], splits: build_data.Splits) -> None:
    """Each stage's wall time here, from measured tokenizer and prior steps (the rest derived from them, rough)."""
    if all(s.done() for s in stages):
        return
    t1, t2, p = b.tok_cfg, b.prior_cfg, b.preset
    tok_step = build_plan.tokenizer_step_seconds(t1)
    prior_step, prior_forward = build_plan.prior_step_seconds(t2, t1)
    per_image = tok_step / t1.train.batch_size
    inception = build_plan.INCEPTION_IMAGES_PER_S[build_plan.device()] * b.args.processes
    left1 = t1.train.max_steps - (list_checkpoints(b.out / "stage1") or [(0, None)])[-1][0]
    left2 = t2.train.max_steps - (list_checkpoints(b.out / "stage2") or [(0, None)])[-1][0]
    n_settings = len(p.sweep_temperature) * len(p.sweep_top_k) * len(p.sweep_top_p)
    sample = 2 * prior_forward                              # KV-cached generation: about two full forward passes
    n_images = splits.n_train * (2 if t1.data.hflip else 1) + splits.n_test
    times = {"tokenizer": left1 * tok_step,
             "decoder": 0.6 * per_image * int(dict(p.decoder or {}).get("batch-size", 64))
             * int(dict(p.decoder or {}).get("steps", 0)),
             "tokens": n_images * per_image / 3,
             "prior": left2 * prior_step,
             "sweep": n_settings * p.sweep_num * sample + (n_settings + 2) * p.sweep_num / inception,
             "samples": max(p.samples, p.fid_num) * sample,
             "evaluate": splits.n_test * per_image / 3,
             "fid": 2 * p.fid_num / inception}
    for s in stages:
        s.seconds = times[s.name] / b.args.processes + build_plan.START_SECONDS


def fit_to_hours(b: Build, hours: float) -> list[str]:
    """auto: step counts that fill ``hours`` here (55% tokenizer, 10% decoder, 35% prior), from measured steps;
    the tokenizer's schedules are compressed to match (schedule_scale), as the CPU configs do."""
    t1, t2 = b.tok_cfg, b.prior_cfg
    tok_step = build_plan.tokenizer_step_seconds(t1)
    prior_step, _ = build_plan.prior_step_seconds(t2, t1)
    budget = hours * 3600 / b.args.processes
    tok_steps = max(100, int(0.55 * budget / tok_step) // 100 * 100)
    dec_batch = int(dict(b.preset.decoder or {}).get("batch-size", 64))
    dec_steps = max(50, int(0.10 * budget / (0.6 * tok_step * dec_batch / t1.train.batch_size)) // 50 * 50)
    prior_steps = max(100, int(0.35 * budget / prior_step) // 100 * 100)
    scale = t1.train.schedule_scale * tok_steps / t1.train.max_steps
    return [f"tokenizer.train.max_steps={tok_steps}", f"tokenizer.train.schedule_scale={scale:.4g}",
            f"decoder.steps={dec_steps}", f"prior.train.max_steps={prior_steps}"]


def claim(b: Build, record: Record, settings: dict, stages: list[Stage]) -> None:
    """Refuse other settings for this folder (naming them), or, with --restart-from, delete what they made."""
    old = read_json(record.path).get("settings") if record.path.is_file() else None
    start = b.args.restart_from
    if start is not None:
        order = [s.name for s in stages]
        if start not in order:
            raise ConfigError(f"--restart-from {start}: this build has no {start} stage (its stages: {', '.join(order)})")
        for s in stages[order.index(start):]:
            for path in s.outputs:
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
        (b.out / "README.md").unlink(missing_ok=True)
        if old is not None:
            record.rewrite(settings)
            return
    elif old is not None:
        diff = differences(old, settings)
        if diff:
            changed = [s.name for s in stages if any(d.startswith(f"stages.{s.name}.") for d in diff)]
            first = changed[0] if changed and not any(d.split(":")[0] in ("source", "preset") for d in diff) \
                else "tokenizer"
            raise ConfigError(f"'{b.out}' holds a build made with other settings ({'; '.join(diff[:6])}"
                              f"{'; ...' if len(diff) > 6 else ''}). Pick another --name (or --out), or pass "
                              f"--restart-from {first} to rebuild it from the {first} stage on with these settings "
                              "(the outputs of that stage and the later ones are deleted).")
    record.claim(settings, "Pick another --name (or --out), or pass --restart-from STAGE.")


def run_stages(b: Build, stages: list[Stage], launcher: Launcher) -> bool:
    """Run the stages that are not complete, in order; True when any ran."""
    ran = False
    for s in stages:
        if s.done():
            print(f"[{s.name}] complete, skipped", flush=True)
            continue
        # every command, recorded before it starts (a killed or failed run too), goes into the model card
        commands = read_json(b.out / "commands.json") if (b.out / "commands.json").is_file() else []
        write_json(b.out / "commands.json", [*commands, {"stage": s.name, "command": shown(s.command)}])
        launcher.run(s.name, s.command, times=b.out / "times.json")   # its wall time, kept while it runs too
        if not s.done():
            raise StageFailed(f"stage '{s.name}' ended without its final outputs; its log is {b.out / 'logs' / s.name}.log")
        ran = True
    return ran


def link_exports(b: Build) -> None:
    """OUT/tokenizer and OUT/prior: relative links to the final exports (a model folder, like checkpoints/celeba64)."""
    for name, target in (("tokenizer", b.tokenizer), ("prior", b.out / "stage2" / "prior")):
        link = b.out / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target.relative_to(b.out))


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    from stage2_prior import build_card, build_registry

    # 1. The recipe: the preset with the user's key=value overrides, each routed to its stage.
    preset = presets.with_overrides(presets.get(args.preset), args.overrides)
    out = Path(args.out).expanduser().resolve() if args.out else PROJECT_ROOT / "runs" / "build" / args.name

    # 2. The data, looked at before anything trains: kind, files, resolution, what is skipped / converted / refused.
    given = build_data.parse_source(args.data)
    found = build_data.scan(given)
    preset = replace(preset, image_size=build_data.choose_size(given, found, preset.image_size))
    b = Build(args, preset, out, build_data.readable_view(given, found, out), args.data)

    # 3. The stage configs, resolved by the stages' own schemas; auto fits its steps to the time budget once.
    resolve_configs(b)
    record = Record(out, "build.json", "build")
    if preset.name == "auto":
        previous = read_json(record.path)["settings"].get("fitted") if record.path.is_file() else None
        fitted = previous if previous and not args.restart_from and args.hours is None else \
            fit_to_hours(b, args.hours or preset.hours)
        b.preset = presets.with_overrides(preset, fitted)
        resolve_configs(b)
    b.notes = build_data.notes_and_refusals(given, found, b.tok_cfg.data.image_size)

    # 4. One build per folder at a time; the folder's record must match these settings (or --restart-from).
    launcher = Launcher(num_processes=args.processes, threads=args.threads, log_dir=out / "logs", quiet=args.quiet)
    stages = make_stages(b, launcher)
    settings = {"source": given.spec, "preset": preset.name, "image_size": b.tok_cfg.data.image_size,
                **({"fitted": fitted} if preset.name == "auto" else {}),
                "stages": {s.name: s.settings for s in stages}}
    existed = out.exists()
    lock = FolderLock(out)
    if not lock.acquire():
        raise ConfigError(f"another build (process {lock.holder()}) is working on '{out}'; wait for it or stop it")
    with lock:
        try:
            claim(b, record, settings, stages)
            if b.source != given:
                build_data.link_readable(given, found, Path(b.source.path))

            # 5. Both splits through stage 1's loaders: missing / unreadable data and too-large batches stop here.
            prior_batch = -(-b.prior_cfg.train.batch_size // (2 if b.tok_cfg.data.hflip else 1))
            batches = {"tokenizer.train.batch_size": b.tok_cfg.train.batch_size, "prior.train.batch_size": prior_batch}
            if preset.decoder is not None:
                batches["decoder.batch_size"] = int(dict(preset.decoder).get("batch-size", 64))
            splits = build_data.check_splits(b.tok_cfg.data, batches)
        except ConfigError:
            if not existed:  # nothing started: leave no folder behind that a corrected rerun would be refused by
                shutil.rmtree(out, ignore_errors=True)
            raise
        print(f"Data: {given.spec} ({b.source.kind}): {splits.n_train:,} training and {splits.n_test:,} held-out "
              f"images ({splits.split_rule}); {splits.preprocessing}", flush=True)
        for note in b.notes:
            print(f"  {note}", flush=True)

        # 6. The plan, with wall times here estimated from measured steps; a complete build stops here.
        for s in stages:
            s.done_now = s.done()
        if all(s.done_now for s in stages) and (out / "README.md").is_file():
            build_registry.register(args.registry, args.name, out, given.spec, b.tok_cfg.data.image_size, command(argv))
            print(f"Nothing to do: '{out}' is complete (model card {out / 'README.md'}); python -m app lists it as "
                  f"'{args.name}'.")
            return out
        estimate(b, stages, splits)
        plan = [build_plan.StagePlan(s.name, s.what, s.steps, s.seconds, s.done_now) for s in stages]
        b.machine = build_plan.machine()
        text = build_plan.format_plan(plan, b.preset, b.machine)
        print(text, flush=True)
        if args.plan_only:
            if not existed:  # a plan claims nothing
                shutil.rmtree(out, ignore_errors=True)
            return out
        if not (out / "plan.txt").is_file() or args.restart_from:
            (out / "plan.txt").write_text(text + "\n")

        # 7. The stages, in order, each resumable; then the model folder, its card and the app's registry entry.
        run_stages(b, stages, launcher)
        link_exports(b)
        card = build_card.write_card(b, splits, stages, command(argv))
        build_registry.register(args.registry, args.name, out, given.spec, b.tok_cfg.data.image_size, command(argv))
        print(f"Done: {card}. The app lists it as '{args.name}' (python -m app), or serves it alone: "
              f"python -m app --model {out}")
    return out


def command(argv: list[str] | None) -> str:
    """This build's command line, as a user would type it again."""
    import shlex

    return shlex.join(["python", "-m", "stage2_prior.build", *(sys.argv[1:] if argv is None else argv)])


def _cli() -> None:
    try:
        main()
    except StageFailed as err:  # the stage's own output (and log) said why
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    from edvae_common.cli import run_cli

    run_cli(_cli)
