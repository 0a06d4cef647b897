"""Find a pretrained folder locally or on the Hugging Face Hub, with clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .io import read_json


class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete, or of the wrong kind."""


def resolve_pretrained(name_or_path: str | Path, required: Sequence[str], revision: str | None = None) -> Path:
    """Return a local folder holding ``required`` files, downloading a Hub repo if needed.

    A local path is used as is; anything else is taken as a Hub repo id
    (``user/name``). Offline (``HF_HUB_OFFLINE=1``) only the local cache is
    searched, and a miss says so.
    """
    path = Path(name_or_path)
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"'{path}' is a file; expected a folder written by save_pretrained()")
        missing = [f for f in required if not (path / f).is_file()]
        if missing:
            raise CheckpointError(
                f"'{path}' is not a complete pretrained folder: missing {', '.join(missing)}. "
                "Expected a folder written by save_pretrained() (for a training run, its export folder)."
            )
        return path
    if str(name_or_path).count("/") != 1 or str(name_or_path).startswith((".", "/")):
        raise CheckpointError(f"'{name_or_path}' does not exist locally and is not a Hub repo id of the form 'user/name'")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        local = snapshot_download(repo_id=str(name_or_path), revision=revision, allow_patterns=list(required) + ["*.md"])
    except LocalEntryNotFoundError as err:
        raise CheckpointError(
            f"'{name_or_path}' is not a local folder and could not be fetched from the Hugging Face Hub "
            f"(offline, or not in the local cache): {err}. Download it once with network access, or pass a local folder."
        ) from err
    except HfHubHTTPError as err:
        raise CheckpointError(f"could not fetch '{name_or_path}' from the Hugging Face Hub: {err}") from err
    return resolve_pretrained(local, required)


def read_typed_config(folder: Path, expected_type: str, what: str) -> dict:
    """Read ``config.json`` and check its ``model_type`` marker is ``expected_type``."""
    config = read_json(folder / "config.json")
    found = config.get("model_type")
    if found != expected_type:
        raise CheckpointError(
            f"'{folder}' holds a checkpoint of kind '{found}', not a {what} ('{expected_type}'). "
            "Check that you passed the right folder."
        )
    return config
