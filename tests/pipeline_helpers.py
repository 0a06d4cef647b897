"""Builders for the pipeline and app tests: a tiny untrained tokenizer + prior pair saved like real exports."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from app.process import AppProcess
from edvae_common.io import write_json
from stage1_tokenizer.config import DataConfig
from stage1_tokenizer.model import TRAINING_DATA_FILE, EdVAE
from stage2_prior.config import PriorModelConfig
from stage2_prior.model import PriorSpec, build_prior
from stage2_prior.tokens import TokenizerFingerprint

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_TOKENIZER = ROOT / "checkpoints" / "celeba64" / "tokenizer"
SHIPPED_PRIOR = ROOT / "checkpoints" / "celeba64" / "prior"


def shipped_pair_present() -> bool:
    return (SHIPPED_TOKENIZER / "model.safetensors").is_file() and (SHIPPED_PRIOR / "config.json").is_file()


def make_pair(root: Path, *, image_size: int = 32, num_classes: int = 0, dataset: str = "npz",
              seed: int = 0) -> tuple[Path, Path]:
    """An untrained tokenizer (image_size -> image_size/4 tokens of 32 codes) and a tiny GPT-2 prior on it.

    Returns (tokenizer folder, prior folder), written as stage-1 / stage-2 training export them.
    """
    torch.manual_seed(seed)
    tok = EdVAE(channels=8, channel_mults=[1, 2, 4], blocks_per_group=1, codebook_size=32, codebook_dim=4).eval()
    tok_dir, prior_dir = root / "tokenizer", root / "prior"
    tok.save_pretrained(str(tok_dir))
    write_json(tok_dir / TRAINING_DATA_FILE,
               asdict(DataConfig(dataset=dataset, path=str(root / "data.npz"), image_size=image_size)))
    spec = PriorSpec(TokenizerFingerprint.of(tok, image_size, tok_dir), num_classes=num_classes)
    build_prior(spec, PriorModelConfig(size="tiny")).eval().save_pretrained(str(prior_dir))
    return tok_dir, prior_dir


def write_png(path: Path, array: np.ndarray, **save_args) -> Path:
    from PIL import Image

    Image.fromarray(array).save(path, **save_args)
    return path


def face_like(size: int = 48, seed: int = 0) -> np.ndarray:
    """A smooth random uint8 RGB image (size x size)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(size // 8, size // 8, 3)).astype(np.uint8)
    return coarse.repeat(8, axis=0).repeat(8, axis=1)


# ---------------------------------------------------------------------------- a launched app
def write_registry(path: Path, models: dict[str, dict], default: str, **limits) -> Path:
    """An app registry (configs/app.yaml layout) for tests."""
    import yaml

    path.write_text(yaml.safe_dump({"default": default, "models": models, "limits": limits}))
    return path


class AppServer(AppProcess):
    """``python -m app --device cpu ...`` at one torch thread (app.process.AppProcess), as the tests run it."""

    def __init__(self, args: list[str], log: Path, timeout: float = 300.0):
        super().__init__(["--device", "cpu", *args], log, env={"OMP_NUM_THREADS": "1"}, timeout=timeout)
