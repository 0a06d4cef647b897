"""Shared fixtures: paths, small synthetic data, a helper to run short trainings."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
CIFAR_NPZ = SHARED_DATA / "cifar10_dev.npz"
CELEBA_NPZ = SHARED_DATA / "celeba64_dev.npz"
TINY_CONFIG = ROOT / "configs" / "stage1" / "tiny.yaml"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Quiet settings for test runs: no tracker files, no progress bar, no periodic work unless asked.
QUIET = ["train.tracker=none", "train.progress_bar=false", "train.final_eval=false",
         "train.image_every=100000", "train.eval_every=100000", "train.eval_max_images=64"]


@pytest.fixture
def cifar_npz() -> Path:
    if not CIFAR_NPZ.is_file():
        pytest.skip(f"real CIFAR-10 sample not present at {CIFAR_NPZ} (developer data beside the project)")
    return CIFAR_NPZ


@pytest.fixture
def synthetic_npz(tmp_path: Path) -> Path:
    """96 smooth random 32x32 images (blurred noise) saved like ../shared/data/*.npz."""
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, size=(96, 8, 8, 3)).astype(np.float32)
    images = coarse.repeat(4, axis=1).repeat(4, axis=2).astype(np.uint8)
    path = tmp_path / "synthetic.npz"
    np.savez(path, images=images, names=np.array([f"img{i}.png" for i in range(96)]))
    return path


def write_celeba_folder(folder: Path, n_train: int, n_valid: int, n_test: int, step: int) -> Path:
    """A CelebA layout in ``folder``: ``img_align_celeba/`` with flat 218 x 178 images (image i has value
    i * step) and ``list_eval_partition.txt`` giving ids in order to train (0), valid (1) and test (2)."""
    from PIL import Image

    (folder / "img_align_celeba").mkdir(parents=True)
    lines = []
    for i in range(1, n_train + n_valid + n_test + 1):
        name = f"{i:06d}.jpg"
        Image.fromarray(np.full((218, 178, 3), i * step, np.uint8)).save(folder / "img_align_celeba" / name)
        lines.append(f"{name} {0 if i <= n_train else (1 if i <= n_train + n_valid else 2)}")
    (folder / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return folder


def train_args(output_dir: Path, data_path: Path, *overrides: str) -> list[str]:
    """Arguments for stage1_tokenizer.train.main: the tiny config, quiet, on ``data_path``."""
    return ["--config", str(TINY_CONFIG), f"output_dir={output_dir}", f"data.path={data_path}", *QUIET, *overrides]
