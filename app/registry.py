"""The models the app offers: ``configs/app.yaml`` read strictly, each pair loaded once, absent ones explained.

The user registry beside it, ``models.local.yaml`` (gitignored; ``python -m stage2_prior.build`` adds each
model it builds), is merged into its ``models``: an entry there wins over one of the same name. A model
whose tokenizer or prior is not there (or does not load) stays in the list with one line saying how to get
or train it; the app never fails to start because of one. ``model_folder`` reads a model folder (a build's
output or checkpoints/celeba64: ``tokenizer/`` + ``prior/``) for ``python -m app --model PATH``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional

from edvae_common.config import check, load_config

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "app.yaml"
LOCAL_REGISTRY = "models.local.yaml"  # beside the registry: the user's own models (stage2_prior.build writes it)
CUSTOM = "custom"  # the name of a pair given with --tokenizer / --prior
logger = logging.getLogger("app")


@dataclass
class ModelEntry:
    title: str = ""                      # shown in the model menu
    tokenizer: Optional[str] = None      # folder (relative to the repository root) or Hub id
    prior: Optional[str] = None
    preprocess: Optional[str] = None     # override the tokenizer's training_data.json (celeba, lsun_church, generic)
    missing: str = "not configured: set its tokenizer and prior in configs/app.yaml"  # how to get or train it


@dataclass
class Limits:
    max_images: int = 16              # images per generate / complete request
    sample_concurrency: int = 1       # sampling requests served at once (the rest wait in the queue)
    reconstruct_concurrency: int = 2  # reconstructions served at once, beside sampling
    queue_size: int = 64              # waiting requests beyond which new ones are turned away
    max_upload_mb: int = 50

    def __post_init__(self) -> None:
        for key in ("max_images", "sample_concurrency", "reconstruct_concurrency", "queue_size", "max_upload_mb"):
            check(getattr(self, key) >= 1, f"limits.{key}", f"must be at least 1, got {getattr(self, key)}")


@dataclass
class AppConfig:
    default: str = "faces"
    examples: Optional[str] = "app/examples"   # images offered beside the upload boxes
    models: Dict[str, ModelEntry] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)


@dataclass
class AppModel:
    name: str
    entry: ModelEntry
    pipeline: object = None         # a stage2_prior.pipeline.Pipeline once loaded
    problem: Optional[str] = None   # why it is not available (one line)

    @property
    def available(self) -> bool:
        return self.pipeline is not None

    @property
    def title(self) -> str:
        return self.entry.title or self.name


def resolve(path: Optional[str]) -> Optional[str]:
    """A configured location: absolute, relative to the repository root, or a Hub id ('user/name')."""
    if path is None:
        return None
    p = Path(path).expanduser()
    if p.is_absolute():
        return str(p)
    if (ROOT / p).exists() or path.startswith(".") or path.count("/") != 1:
        return str(ROOT / p)
    return path  # 'user/name' that is not a local folder: a Hub id


@dataclass
class LocalRegistry:
    models: Dict[str, ModelEntry] = field(default_factory=dict)


def load_app_config(path: str | Path | None = None) -> AppConfig:
    """The registry (default configs/app.yaml) with the models of ``models.local.yaml`` beside it merged in."""
    config = load_config(AppConfig, path or DEFAULT_CONFIG)
    local = Path(path or DEFAULT_CONFIG).with_name(LOCAL_REGISTRY)
    if local.is_file():
        config.models.update(load_config(LocalRegistry, local).models)
    return config


def model_folder(path: str | Path) -> tuple[str, str]:
    """(tokenizer, prior) of a model folder: a build's output folder or any folder with tokenizer/ and prior/."""
    folder = Path(path).expanduser().resolve()
    missing = [name for name in ("tokenizer", "prior") if not (folder / name).is_dir()]
    if missing:
        raise ValueError(f"--model {path}: no {' or '.join(m + '/' for m in missing)} in it; pass a model folder "
                         "(a python -m stage2_prior.build output, e.g. runs/build/NAME, or checkpoints/celeba64)")
    return str(folder / "tokenizer"), str(folder / "prior")


def load_model(name: str, entry: ModelEntry, device: Optional[str]) -> AppModel:
    """Load one pair; any failure becomes the model's one-line ``problem`` instead of an exception."""
    from stage2_prior.pipeline import Pipeline

    model = AppModel(name, entry)
    tokenizer, prior = resolve(entry.tokenizer), resolve(entry.prior)
    absent = [p for p in (tokenizer, prior) if p is not None and Path(p).is_absolute() and not Path(p).exists()]
    if tokenizer is None or prior is None:
        model.problem = entry.missing
    elif absent:
        model.problem = f"{entry.missing} (not found: {', '.join(absent)})"
    else:
        try:
            model.pipeline = Pipeline.from_pretrained(tokenizer, prior, device=device, preprocess=entry.preprocess)
        except Exception as err:  # CheckpointError, TokenizerMismatchError, bad JSON, ...: never stop the app
            model.problem = f"could not be loaded: {(str(err).splitlines() or [type(err).__name__])[0]}"
            if not isinstance(err, (OSError, ValueError)):
                logger.exception("unexpected error while loading model '%s'", name)
    if model.problem:
        logger.warning("model '%s' is not available: %s", name, model.problem)
    else:
        logger.info("model '%s' loaded: %s", name, model.pipeline.describe())
    return model


def load_models(config: AppConfig, device: Optional[str] = None, tokenizer: Optional[str] = None,
                prior: Optional[str] = None, preprocess: Optional[str] = None) -> tuple[dict[str, AppModel], str]:
    """Every configured model (plus ``custom`` from --tokenizer / --prior) and the default's name."""
    entries = dict(config.models)
    default = config.default
    if tokenizer or prior:
        if not (tokenizer and prior):
            raise ValueError("--tokenizer and --prior go together: pass both folders (or Hub ids)")
        short = "/".join(Path(prior).parts[-2:])
        entries = {CUSTOM: ModelEntry(title=f"custom pair ({short})", tokenizer=tokenizer,
                                      prior=prior, preprocess=preprocess, missing="the given folders"), **entries}
        default = CUSTOM
    models = {name: load_model(name, entry, device) for name, entry in entries.items()}
    if default not in models or not models[default].available:
        default = next((n for n, m in models.items() if m.available), default)
    return models, default
