"""The sampling sweep: one FID per setting with the same seed, the rFID floor, and the recommended settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from stage2_prior import sweep
from stage2_prior.pipeline import Pipeline
from tests.stage2_helpers import save_standin_extractor


def make_contrasty_pair(root: Path, image_size: int = 16) -> tuple[Path, Path]:
    """An untrained pair whose decoder maps different codes to visibly different images (large code vectors)."""
    from dataclasses import asdict

    from edvae_common.io import write_json
    from stage1_tokenizer import DataConfig, EdVAE
    from stage1_tokenizer.model import TRAINING_DATA_FILE
    from stage2_prior import PriorSpec, TokenizerFingerprint, build_prior
    from stage2_prior.config import PriorModelConfig

    torch.manual_seed(0)
    tok = EdVAE(channels=8, channel_mults=[1, 2, 4], blocks_per_group=1, codebook_size=32, codebook_dim=4).eval()
    with torch.no_grad():
        tok.quantizer.codebook.mul_(300.0)
    tok.save_pretrained(str(root / "tokenizer"))
    write_json(root / "tokenizer" / TRAINING_DATA_FILE,
               asdict(DataConfig(dataset="npz", path=str(root / "data.npz"), image_size=image_size)))
    spec = PriorSpec(TokenizerFingerprint.of(tok, image_size, root / "tokenizer"))
    build_prior(spec, PriorModelConfig(size="tiny")).eval().save_pretrained(str(root / "prior"))
    return root / "tokenizer", root / "prior"


def test_sweep_measures_each_setting_and_writes_the_best_as_sampling_json(tmp_path: Path):
    tok, prior = make_contrasty_pair(tmp_path / "pair")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "real.npz", images=rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8))
    weights = save_standin_extractor(tmp_path / "standin.pt", features=16)
    result = sweep.main(["--tokenizer", str(tok), "--prior", str(prior), "--real", str(tmp_path / "real.npz"),
                         "--real-split", "all", "--num", "6", "--temperature", "1.0", "0.5", "--top-k", "0", "4",
                         "--weights", str(weights), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu",
                         "--out", str(tmp_path / "sweep"), "--write-recommended"])
    rows = result["rows"]
    assert [(r["temperature"], r["top_k"]) for r in rows] == [(1.0, 0), (1.0, 4), (0.5, 0), (0.5, 4)]
    assert len({round(r["fid"], 9) for r in rows}) == 4          # each setting measured on its own samples
    assert result["best"]["fid"] == min(r["fid"] for r in rows) and result["rfid"] > 0
    assert all(abs(r["fid_over_rfid"] - r["fid"] / result["rfid"]) < 1e-12 for r in rows)
    assert json.loads((tmp_path / "sweep" / "sweep.json").read_text())["best"] == result["best"]
    assert "(chosen)" in (tmp_path / "sweep" / "sweep.md").read_text()
    # the pipeline now samples with the chosen setting by default
    pipe = Pipeline.from_pretrained(tok, prior, device="cpu")
    best = result["best"]
    assert pipe.sampling_defaults["temperature"] == best["temperature"]
    assert (pipe.sampling_defaults["top_k"] or 0) == best["top_k"]
    assert torch.equal(pipe.generate(2, seed=0).codes,
                       pipe.generate(2, seed=0, temperature=best["temperature"], top_k=best["top_k"]).codes)
