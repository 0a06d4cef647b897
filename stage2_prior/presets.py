"""The recipes ``python -m stage2_prior.build --preset NAME`` knows: which configs and steps each stage gets.

A preset names the stage-1 and stage-2 YAML configs of ``configs/`` plus overrides on them, the decoder
fine-tune's flags (``None``: no fine-tune), the sampling sweep's grid and how many images the FID uses.
Nothing here is evaluated or instantiated from strings: a preset is plain data, and every key it sets is
checked by the stage's own config schema when the build resolves it.

Each dataset has a GPU-scale preset (the paper's settings) and a CPU-scale one (``-cpu``: the scale of the
shipped face pair's recipe, checkpoints/celeba64, which trained on 2 CPU cores in hours); ``auto`` fits a
CPU-scale recipe to the images (their resolution) and to a time budget (``--hours``); ``tiny`` runs a few
steps per stage, for smoke tests and for trying the command.

User overrides (``key=value`` on the build's command line) go to one stage each by their first word:
``tokenizer.KEY=V`` and ``data.KEY=V`` (stage-1 config keys), ``prior.KEY=V`` (stage-2 config keys),
``decoder.FLAG=V`` (``finetune_decoder`` flags, e.g. ``decoder.steps=200``; ``decoder=off`` skips it),
``sweep.temperature=1.0,0.95``, ``sweep.top_p=...``, ``sweep.top_k=...``, ``sweep.num=N``, ``fid.num=N``,
``samples.num=N``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from edvae_common.config import ConfigError

# The stage-2 recipe of the shipped face prior (GPT-2 'small', 900 steps of batch 32) and its decoder fine-tune.
SHIP_PRIOR = "configs/stage2/celeba64_ship.yaml"
SHIP_DECODER = (("steps", "800"), ("batch-size", "64"), ("lr", "3e-4"), ("eval-every", "200"))


@dataclass(frozen=True)
class Preset:
    name: str
    about: str                                   # one line for --help and the plan
    image_size: int | None                       # None: from the images (auto)
    tokenizer_config: str                        # configs/stage1/*.yaml
    tokenizer: tuple[str, ...] = ()              # key=value overrides on it
    decoder: tuple[tuple[str, str], ...] | None = None  # finetune_decoder flags (name, value; '' = bare flag)
    prior_config: str = SHIP_PRIOR               # configs/stage2/*.yaml
    prior: tuple[str, ...] = ()
    sweep_temperature: tuple[float, ...] = (1.0, 0.95)
    sweep_top_k: tuple[int, ...] = (0,)
    sweep_top_p: tuple[float, ...] = (1.0, 0.95)
    sweep_num: int = 1000                        # samples per sweep setting (and real images, at most)
    fid_num: int = 1000                          # samples (and real images, at most) of the final FID / KID
    samples: int = 64                            # images sampled with the recommended settings (grid: first 64)
    scale: str = "cpu"                           # gpu | cpu | test: what the preset is sized for
    cpu_variant: str | None = None               # the preset to suggest when this one is too slow here
    hours: float | None = None                   # auto: the default time budget of the trainings

    def describe_decoder(self) -> str:
        return "no" if self.decoder is None else " ".join(f"--{k} {v}".strip() for k, v in self.decoder)


# Quiet bookkeeping for the few-step preset: no tracker files, one evaluation at the end.
_TINY_STEPS = ("train.max_steps=30", "train.checkpoint_every=10", "train.log_every=5", "train.tracker=none")

PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("lsun_church128", "the paper's LSUN church_outdoor: 128x128, first kernel 7, beta 1e-7, width 128, "
           "150k steps; a Llama prior over 1,024 tokens (GPU)", 128, "configs/stage1/lsun_church.yaml",
           ("data.num_workers=4",), None, "configs/stage2/lsun_church.yaml",
           sweep_temperature=(1.0, 0.95, 0.9), sweep_top_p=(1.0, 0.95, 0.9), fid_num=10000, scale="gpu",
           cpu_variant="lsun_church128-cpu"),
    Preset("lsun_church128-cpu", "LSUN churches at the shipped face pair's CPU scale: 128x128, first kernel 7, "
           "width 32, 3,000 steps, decoder fine-tune, a small Llama prior (hours on 2 cores per stage)", 128,
           "configs/stage1/celeba64_ship.yaml", ("model.first_kernel=7",),
           SHIP_DECODER, SHIP_PRIOR, ("model.arch=llama", "train.batch_size=16"), scale="cpu"),
    Preset("celeba64", "the paper's CelebA: 64x64 (crop 140), width 128, beta 1e-7, 150k steps; GPT-2 base prior "
           "(GPU)", 64, "configs/stage1/celeba.yaml", (), None, "configs/stage2/celeba.yaml",
           sweep_temperature=(1.0, 0.95, 0.9), sweep_top_p=(1.0, 0.95, 0.9), fid_num=10000, scale="gpu",
           cpu_variant="celeba64-cpu"),
    Preset("celeba64-cpu", "faces at the shipped pair's CPU scale (checkpoints/celeba64, its first part): width 32, "
           "3,000 steps of batch 64, 800 decoder steps, GPT-2 small 900 steps (about 1.5 h on 2 cores)", 64,
           "configs/stage1/celeba64_ship.yaml", (), SHIP_DECODER, SHIP_PRIOR, scale="cpu"),
    Preset("cifar10", "the paper's CIFAR-10: 32x32, width 128, beta 5e-7, 150k steps; GPT-2 small prior (GPU)", 32,
           "configs/stage1/cifar10.yaml", (), None, "configs/stage2/cifar10_cond.yaml",
           ("model.class_conditional=false", "train.max_steps=20000"), sweep_temperature=(1.0, 0.95, 0.9),
           sweep_top_p=(1.0, 0.95, 0.9), fid_num=10000, scale="gpu", cpu_variant="cifar10-cpu"),
    Preset("cifar10-cpu", "CIFAR-10 at CPU scale (configs/stage1/cifar10_cpu.yaml: width 32, 3,000 steps, an hour), "
           "800 decoder steps, GPT-2 small 900 steps", 32, "configs/stage1/cifar10_cpu.yaml", (), SHIP_DECODER,
           SHIP_PRIOR, scale="cpu"),
    Preset("auto", "any image folder: the resolution from the images (32, 64, 128 or 256), the CPU-scale recipe, "
           "steps fitted to --hours (default 2) from measured step times", None, "configs/stage1/celeba64_ship.yaml",
           ("data.hflip=false",), SHIP_DECODER, SHIP_PRIOR, scale="cpu", hours=2.0),
    Preset("tiny", "a few steps per stage (width 16, 30 + 10 + 30 steps, one sampling setting, FID on 10 images): "
           "smoke tests and trying the command (minutes on 2 CPU cores, most of it the FID); its images are blurs", 32, "configs/stage1/tiny.yaml",
           (*_TINY_STEPS, "train.eval_every=30", "train.image_every=30", "train.eval_max_images=64"),
           (("steps", "10"), ("batch-size", "16"), ("warmup", "2"), ("eval-every", "10"), ("checkpoint-every", "5"),
            ("log-every", "5"), ("eval-max-images", "64")),
           "configs/stage2/tiny.yaml", (*_TINY_STEPS, "train.eval_every=30", "train.sample_every=30",
                                        "train.eval_max_batches=2", "train.sample_num=4"),
           sweep_temperature=(1.0,), sweep_top_p=(1.0,), sweep_num=10, fid_num=10, scale="test"),
)}


def get(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'; the presets are: {', '.join(PRESETS)} "
                          "(python -m stage2_prior.build --help describes them)")
    return PRESETS[name]


def _numbers(key: str, value: str, kind: type) -> tuple:
    try:
        return tuple(kind(v) for v in value.split(","))
    except ValueError:
        raise ConfigError(f"'{key}={value}' needs comma-separated {kind.__name__} values, e.g. {key}=1.0,0.95") from None


def _count(key: str, value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"'{key}={value}' needs a positive whole number")
    return int(value)


def with_overrides(preset: Preset, items: list[str]) -> Preset:
    """The preset with the build's ``key=value`` overrides applied, each routed to its stage by its first word."""
    out = preset
    for item in items:
        key, sep, value = item.partition("=")
        head, _, rest = key.partition(".")
        if not sep or not key:
            raise ConfigError(f"'{item}' is not key=value (e.g. tokenizer.train.max_steps=1000)")
        if head in ("tokenizer", "data") and rest:
            out = replace(out, tokenizer=(*out.tokenizer, f"{rest if head == 'tokenizer' else key}={value}"))
        elif head == "prior" and rest:
            out = replace(out, prior=(*out.prior, f"{rest}={value}"))
        elif key == "decoder" and value in ("off", "none", "false"):
            out = replace(out, decoder=None)
        elif head == "decoder" and rest:
            flag = rest.replace("_", "-")
            flags = dict(out.decoder or SHIP_DECODER)
            flags[flag] = value
            out = replace(out, decoder=tuple(flags.items()))
        elif key == "sweep.temperature":
            out = replace(out, sweep_temperature=_numbers(key, value, float))
        elif key == "sweep.top_p":
            out = replace(out, sweep_top_p=_numbers(key, value, float))
        elif key == "sweep.top_k":
            out = replace(out, sweep_top_k=_numbers(key, value, int))
        elif key == "sweep.num":
            out = replace(out, sweep_num=_count(key, value))
        elif key == "fid.num":
            out = replace(out, fid_num=_count(key, value))
        elif key == "samples.num":
            out = replace(out, samples=_count(key, value))
        else:
            raise ConfigError(f"unknown override '{item}': start it with tokenizer., data., decoder., prior. (config "
                              "keys of that stage) or use sweep.temperature, sweep.top_p, sweep.top_k, sweep.num, "
                              "fid.num, samples.num, decoder=off")
    return out
