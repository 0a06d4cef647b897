"""File and image I/O shared by both stages: atomic writes, JSON, image grids, weight hashes."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) floats in [0, 1] -> (B, H, W, 3) uint8, rounding to nearest."""
    arr = images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return arr.permute(0, 2, 3, 1).cpu().numpy()


def save_image_grid(images: torch.Tensor, path: str | Path, nrow: int = 8, padding: int = 2) -> Path:
    """Save (B, 3, H, W) images in [0, 1] as one PNG grid (atomically) and return the path."""
    import io as _io

    from PIL import Image
    from torchvision.utils import make_grid

    grid = make_grid(images.detach().float().clamp(0, 1).cpu(), nrow=nrow, padding=padding, pad_value=1.0)
    buf = _io.BytesIO()
    Image.fromarray(to_uint8(grid[None])[0]).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def side_by_side(originals: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Interleave rows of originals and reconstructions: row 2i = originals, row 2i+1 = reconstructions."""
    n = originals.shape[0]
    per_row = 8 if n >= 8 else n
    rows = []
    for start in range(0, n, per_row):
        rows.append(originals[start : start + per_row])
        rows.append(reconstructions[start : start + per_row])
    return torch.cat(rows, dim=0)


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    import io as _io

    import matplotlib.pyplot as plt

    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def to_rgb_array(img: Any) -> np.ndarray:
    """Any PIL image mode -> uint8 RGB (H, W, 3): high bit depths (16-bit, 32-bit, float) scaled, not clipped;
    transparency composited over white; grayscale and palette images expanded. Used by the stage-1 folder
    loader and the app's uploads, so training and serving see the same pixels."""
    from PIL import Image

    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(img, dtype=np.float64)
        peak = values.max(initial=0)
        top = 1.0 if mode == "F" and peak <= 1.0 else (255.0 if peak <= 255 else 65535.0)
        gray = np.clip(np.nan_to_num(values) / top, 0, 1)
        return np.repeat((gray * 255 + 0.5).astype(np.uint8)[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info) \
            or (mode in ("L", "RGB") and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.uint8).copy()
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def load_image(path: str | Path) -> torch.Tensor:
    """Load an image file as a float (3, H, W) tensor in [0, 1] (RGB)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read '{path}' as an image ({err}); expected a PNG/JPEG/... file") from err
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div(255)


def weights_sha256(module: torch.nn.Module, skip: tuple[str, ...] = ()) -> str:
    """SHA-256 of a module's weights (names, shapes, float32 values, in name order): the same weights give
    the same hash whatever their dtype or device. Ties a prior to its tokenizer and a sampling run to its prior.
    Weights whose names start with one of ``skip`` are left out."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        if name.startswith(skip):
            continue
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
