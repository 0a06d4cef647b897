"""The shipped face pair (checkpoints/celeba64): it loads, generates and reconstructs on the CPU,
and its model card lists exactly the files that are there, with their sizes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PAIR = ROOT / "checkpoints" / "celeba64"
CARD = PAIR / "README.md"


@pytest.fixture(scope="module")
def pipe():
    from stage2_prior.pipeline import Pipeline

    return Pipeline.from_pretrained(PAIR / "tokenizer", PAIR / "prior", device="cpu")


def test_the_pair_loads_in_float32_and_belongs_together(pipe):
    assert pipe.image_size == 64 and tuple(pipe.grid) == (16, 16)
    assert all(p.dtype == torch.float32 for p in pipe.tokenizer.parameters())
    assert all(p.dtype == torch.float32 for p in pipe.prior.parameters())
    assert not pipe.tokenizer.training and not pipe.prior.training
    assert pipe.preprocess == "celeba"                          # uploads get CelebA's crop, as training did
    assert pipe.sampling_defaults.get("note")                   # recommended settings from the FID sweep
    assert pipe.uncertainty_reference is not None               # percentiles + the measured AUROC statement


def test_generate_two_faces_with_the_recommended_settings(pipe):
    a = pipe.generate(2, seed=0)
    assert a.images.shape == (2, 3, 64, 64) and a.codes.shape == (2, 16, 16)
    assert 0.0 <= float(a.images.min()) and float(a.images.max()) <= 1.0
    assert torch.equal(a.images, pipe.generate(2, seed=0).images)
    assert a.settings["temperature"] == pipe.sampling_defaults["temperature"]


def test_reconstruct_a_held_out_face(pipe):
    from tests.conftest import CELEBA_NPZ

    if not CELEBA_NPZ.is_file():
        pytest.skip(f"the CelebA sample is not at {CELEBA_NPZ}")
    from stage1_tokenizer.data import held_out_split

    with np.load(CELEBA_NPZ) as archive:
        images = archive["images"]
    face = images[held_out_split(len(images), "test", 0.13333, 0)[0]]
    rec = pipe.reconstruct(face)
    assert rec.reconstruction.shape == (3, 64, 64) and rec.codes.shape == (16, 16)
    assert rec.psnr > 18.0                                      # a face, not noise (the card has the split's mean)
    assert rec.percentile is not None and 0.0 <= rec.percentile <= 100.0


def test_model_card_lists_the_files_and_their_sizes():
    text = CARD.read_text()
    listed = {m.group(1): int(m.group(2).replace(",", ""))
              for m in re.finditer(r"^\| `([^`]+)` \| ([\d,]+) \|", text, flags=re.M)}
    present = {str(p.relative_to(PAIR)): p.stat().st_size for p in sorted(PAIR.rglob("*"))
               if p.is_file() and p != CARD}
    assert listed == present
    assert sum(present.values()) <= 40 * 2**20                  # the repository budget for the pair
