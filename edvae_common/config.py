"""Strict, typed configuration: a YAML file plus ``key=value`` overrides.

Every stage describes its settings as nested dataclasses. ``load_config``
merges, in order, the dataclass defaults, a YAML file and command-line
overrides, and returns a real dataclass instance. OmegaConf's structured mode
does the checking: a key that is not in the schema, or a value of the wrong
type, is an error that names the key (with a "did you mean" hint for typos).
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file or override is wrong; the message says which key and why."""


def _all_keys(schema: Any, prefix: str = "") -> list[str]:
    """Dotted names of every leaf field of a (nested) dataclass schema."""
    keys = []
    for field in dataclasses.fields(schema):
        name = f"{prefix}{field.name}"
        value = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        if dataclasses.is_dataclass(value):
            keys.extend(_all_keys(value, name + "."))
        else:
            keys.append(name)
    return keys


def _explain(err: OmegaConfBaseException, schema_cls: type, source: str) -> ConfigError:
    key = getattr(err, "full_key", None) or "?"
    if isinstance(err, ConfigKeyError):
        valid = _all_keys(schema_cls)
        hint = difflib.get_close_matches(key, valid, n=1)
        msg = f"unknown config key '{key}' in {source}."
        if hint:
            msg += f" Did you mean '{hint[0]}'?"
        else:
            section = key.rsplit(".", 1)[0] + "." if "." in key else ""
            near = [k for k in valid if k.startswith(section)] or valid
            msg += f" Valid keys here: {', '.join(near)}."
        return ConfigError(msg)
    if isinstance(err, ValidationError):
        first = str(err).splitlines()[0]
        return ConfigError(f"wrong type for config key '{key}' in {source}: {first}")
    return ConfigError(f"invalid configuration in {source} (key '{key}'): {str(err).splitlines()[0]}")


def parse_overrides(overrides: Sequence[str]) -> list[str]:
    """Check that every override looks like ``key=value`` and return them."""
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(
                f"override '{item}' is not of the form key=value (for example train.max_steps=1000)"
            )
    return list(overrides)


def load_config(
    schema_cls: type[T],
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    mapping: Mapping[str, Any] | None = None,
) -> T:
    """Build a validated ``schema_cls`` instance from defaults, a YAML file, a mapping and overrides.

    Raises ``ConfigError`` naming the offending key for unknown keys, wrong
    types and values rejected by the dataclass' own ``__post_init__`` checks.
    """
    cfg = OmegaConf.structured(schema_cls)
    layers: list[tuple[str, Any]] = []
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file '{path}' does not exist (look in configs/ for the shipped ones)")
        try:
            layers.append((str(path), OmegaConf.load(path)))
        except Exception as err:  # YAML syntax errors
            raise ConfigError(f"config file '{path}' is not valid YAML: {err}") from err
    if mapping is not None:
        layers.append(("the given mapping", OmegaConf.create(dict(mapping))))
    if overrides:
        layers.append(("command-line overrides", OmegaConf.from_dotlist(parse_overrides(overrides))))
    for source, layer in layers:
        try:
            cfg = OmegaConf.merge(cfg, layer)
        except OmegaConfBaseException as err:
            raise _explain(err, schema_cls, source) from None
    try:
        return OmegaConf.to_object(cfg)  # runs each dataclass' __post_init__
    except OmegaConfBaseException as err:
        raise _explain(err, schema_cls, "the configuration") from None


def to_dict(cfg: Any) -> dict:
    """A plain, JSON/YAML-friendly dict of a config dataclass."""
    return dataclasses.asdict(cfg)


def save_yaml(cfg: Any, path: str | Path) -> None:
    """Write a resolved config as YAML (atomically)."""
    from .io import atomic_write_text

    atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.structured(cfg)))


def flat_hparams(cfg: Any) -> dict[str, Any]:
    """Flatten a config to ``{'train.lr': 0.001, ...}`` with only scalar values (for trackers)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}{k}.", v)
        elif isinstance(value, (int, float, str, bool)):
            out[prefix[:-1]] = value
        else:
            out[prefix[:-1]] = str(value)

    walk("", to_dict(cfg))
    return out


def check(condition: bool, key: str, message: str) -> None:
    """Raise a ConfigError naming ``key`` unless ``condition`` holds (for ``__post_init__``)."""
    if not condition:
        raise ConfigError(f"invalid value for config key '{key}': {message}")


MIXED_PRECISION = ("no", "fp16", "bf16")


def mixed_precision_setting(value: object, key: str = "train.mixed_precision") -> str:
    """A checked ``mixed_precision`` value; YAML 1.1 reads a bare ``no`` as false, which means ``no`` here."""
    value = "no" if str(value).lower() in ("false", "no", "none") else str(value)
    check(value in MIXED_PRECISION, key, f"must be one of {MIXED_PRECISION}, got '{value}'")
    return value
