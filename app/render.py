"""Pictures and files the app shows or offers: token maps, uncertainty heatmaps, PNG + codes downloads."""

from __future__ import annotations

import io
import logging
import math
import os
import shutil
import tempfile
import threading
import time
import uuid
import zipfile
from pathlib import Path

import numpy as np
import torch

from edvae_common.io import to_uint8

logger = logging.getLogger("app")


def image(tensor: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H, W, 3) uint8."""
    return to_uint8(tensor[None])[0]


def _upscale(array: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour upscaling of an (h, w, 3) map to (size, size, 3): one block per token."""
    f = max(1, size // array.shape[0])
    return array.repeat(f, axis=0).repeat(f, axis=1)


def code_palette(codebook_size: int) -> np.ndarray:
    """A fixed colour per code (codebook_size, 3) uint8: hues spread so that nearby indices differ."""
    import colorsys

    order = np.random.default_rng(0).permutation(codebook_size)  # neighbours in index get unrelated hues
    golden = (math.sqrt(5) - 1) / 2
    colours = [colorsys.hsv_to_rgb((i * golden) % 1.0, 0.55 + 0.45 * ((i * 7) % 3) / 2, 0.65 + 0.35 * ((i * 5) % 2))
               for i in order]
    return (np.array(colours) * 255 + 0.5).astype(np.uint8)


def token_map(codes: torch.Tensor, codebook_size: int, size: int) -> np.ndarray:
    """(h, w) codes -> an RGB picture (size x size) with one colour per code index."""
    return _upscale(code_palette(codebook_size)[codes.numpy()], size)


def uncertainty_scale(codebook_size: int, clamp_max: float) -> tuple[float, float]:
    """The fixed log10 range of u = K/S: from full evidence (logit at the clamp) to none (u = 1)."""
    smallest = codebook_size / (codebook_size - 1 + math.exp(clamp_max))
    return math.log10(smallest), 0.0


def uncertainty_heatmap(u: torch.Tensor, codebook_size: int, clamp_max: float, size: int) -> np.ndarray:
    """(h, w) uncertainty -> an 'inferno' heatmap (size x size) on a fixed log scale, the same for every image."""
    from matplotlib import colormaps

    lo, hi = uncertainty_scale(codebook_size, clamp_max)
    scaled = ((u.double().clamp_min(1e-30).log10() - lo) / (hi - lo)).clamp(0, 1).numpy()
    rgb = colormaps["inferno"](scaled)[..., :3]
    return _upscale((rgb * 255 + 0.5).astype(np.uint8), size)


class Downloads:
    """Files offered for download, in a private temporary folder; folders older than ``keep_s`` are removed."""

    def __init__(self, keep_s: float = 3600.0):
        self.root = Path(tempfile.mkdtemp(prefix="edvae_app_"))
        self.keep_s = keep_s

    def folder(self) -> Path:
        """A new folder for one request's files (older ones are removed here)."""
        now = time.time()
        for old in self.root.iterdir():
            if now - old.stat().st_mtime > self.keep_s:
                shutil.rmtree(old, ignore_errors=True)
        folder = self.root / uuid.uuid4().hex[:12]
        folder.mkdir()
        return folder

    @staticmethod
    def samples(folder: Path, images: np.ndarray, codes: torch.Tensor, stem: str, settings: dict) -> list[str]:
        """``<stem>.zip`` (one PNG per image) and ``<stem>_codes.npz`` (``codes``, ``images``, the settings)."""
        import json

        from PIL import Image

        archive = folder / f"{stem}.zip"
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as z:
            for i, array in enumerate(images):
                buf = io.BytesIO()
                Image.fromarray(array).save(buf, format="PNG")
                z.writestr(f"{stem}_{i:03d}.png", buf.getvalue())
        npz = folder / f"{stem}_codes.npz"
        np.savez_compressed(npz, codes=codes.numpy().astype(np.int64), images=images,
                            settings=np.array(json.dumps(settings)))
        return [str(archive), str(npz)]

    @staticmethod
    def pngs(folder: Path, images: dict[str, np.ndarray | None]) -> dict[str, str | None]:
        """Write each (H, W, 3) uint8 image as ``folder/<name>.png``; returns the paths (None stays None).

        The app returns paths rather than arrays: Gradio copies a file into its cache atomically,
        while an array is re-encoded into a fixed cache path that a concurrent request for the same
        picture (same seed) rewrites in place, so another client could download it half-written.
        """
        from PIL import Image

        paths = {}
        for name, array in images.items():
            if array is None:
                paths[name] = None
                continue
            path = folder / f"{name}.png"
            Image.fromarray(array).save(path, format="PNG")
            paths[name] = str(path)
        return paths

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def sweep_cache(demo, age_s: float) -> int:
    """Delete this app's files in Gradio's cache (its outputs and uploads) older than ``age_s``; returns how many.

    What ``gr.Blocks(delete_cache=...)`` does, made safe under traffic: Gradio's own sweep (6.x) iterates
    its live file sets in a worker thread while uploads are added to them, so with steady uploads it
    stops on "Set changed size during iteration" and never runs again; from then on the cache only grows
    (measured with benchmarks/bench_app.py). This one iterates a snapshot of each set.
    """
    keep = set().union(*(getattr(block, "keep_in_cache", set()) for block in list(demo.blocks.values())))
    now, removed = time.time(), 0
    for files in list(demo.temp_file_sets):
        for path in list(files):  # a snapshot (taken without releasing the GIL)
            if path in keep:
                continue
            try:
                if now - os.lstat(path).st_ctime <= age_s:
                    continue
                os.remove(path)
                removed += 1
            except FileNotFoundError:
                pass
            files.discard(path)
    return removed


def start_cache_sweeper(demo) -> threading.Thread:
    """Run ``sweep_cache`` with the Blocks' ``delete_cache`` (frequency, age) in a daemon thread that never stops."""
    frequency, age = demo.delete_cache

    def loop() -> None:
        while True:
            time.sleep(frequency)
            try:
                removed = sweep_cache(demo, age)
                if removed:
                    logger.info("deleted %d cached files older than %d s", removed, age)
            except Exception:  # one bad sweep must not end the sweeping
                logger.exception("sweeping Gradio's cache failed; trying again in %d s", frequency)

    thread = threading.Thread(target=loop, name="cache-sweeper", daemon=True)
    thread.start()
    return thread
