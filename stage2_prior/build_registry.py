"""The app's user registry (``configs/models.local.yaml``): the build adds each model it finishes.

The app (``app/registry.py``) merges this file's ``models`` into ``configs/app.yaml``'s, so ``python -m app``
lists a built model without anyone editing the shipped registry; the file is the user's (gitignored). The
build writes it and the app reads it; neither imports the other.
"""

from __future__ import annotations

from pathlib import Path

from edvae_common.io import atomic_write_text
from stage2_prior.driver import PROJECT_ROOT

HEADER = ("# Models built on this machine by python -m stage2_prior.build (it adds one entry per build; edit or delete\n"
          "# freely). python -m app merges these into configs/app.yaml's models; an entry here wins over one there.\n")


def _location(path: Path) -> str:
    """Relative to the project when inside it (as configs/app.yaml writes paths), else absolute."""
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)


def register(registry: str | Path | None, name: str, out: Path, source: str, image_size: int, rerun: str) -> Path | None:
    """Add (or update) the model ``name`` built in ``out`` from ``source`` to ``registry`` (``rerun``: the build's
    command, for the app's line about an absent model); returns the file (None: no registry)."""
    import yaml

    if not registry:
        return None
    path = Path(registry)
    current = yaml.safe_load(path.read_text()) if path.is_file() else None
    current = current if isinstance(current, dict) else {}
    models = current.get("models") or {}
    models[name] = {
        "title": f"{name} (built from {Path(source.split(':', 1)[-1]).name or source}, {image_size} x {image_size})",
        "tokenizer": _location(out / "tokenizer"),
        "prior": _location(out / "prior"),
        "missing": f"the build folder {_location(out)} is gone or unfinished: rerun {rerun}",
    }
    current["models"] = models
    atomic_write_text(path, HEADER + yaml.safe_dump(current, sort_keys=False, width=120))
    return path
