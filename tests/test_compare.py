"""The one-command comparison: every run trained once with the same budget, results tabulated."""

import json

import pytest

from conftest import QUIET, TINY_CONFIG
from edvae_common import ConfigError
from stage1_tokenizer import compare


def args(root, data, *extra):
    return ["--config", str(TINY_CONFIG), "--quantizers", "edvae", "vqvae_ema", "--seeds", "1", "2", *extra,
            f"output_dir={root}", f"data.path={data}", *QUIET, "train.max_steps=3", "train.batch_size=16",
            "train.checkpoint_every=3"]


def test_compare_trains_each_run_once_and_writes_results(synthetic_npz, tmp_path):
    root = tmp_path / "cmp"
    rows = compare.main(args(root, synthetic_npz, "--beta", "vqvae_ema=0"))
    assert [(r["quantizer"], r["seed"]) for r in rows] == [("edvae", 1), ("edvae", 2), ("vqvae_ema", 1), ("vqvae_ema", 2)]
    assert all(r["steps"] == 3 and r["n_images"] == 10 for r in rows)
    assert rows[0]["beta_max"] == 5e-7 and rows[2]["beta_max"] == 0.0
    saved = json.loads((root / "results.json").read_text())
    assert [r["mse"] for r in saved] == [r["mse"] for r in rows]
    table = (root / "results.md").read_text()
    assert "| edvae | 5e-07 | 1 2 |" in table and "| vqvae_ema | 0 | 1 2 |" in table and "±" in table
    assert "schedules compressed" in table
    assert (root / "curves.png").stat().st_size > 10_000
    # a second call finds every run finished and trains nothing
    logs = {p: p.read_text() for p in root.glob("*/metrics.jsonl")}
    compare.main(args(root, synthetic_npz))
    assert {p: p.read_text() for p in root.glob("*/metrics.jsonl")} == logs


def test_compare_rejects_unknown_quantizers_and_bad_betas(tmp_path):
    with pytest.raises(ConfigError, match="unknown quantizer.*vq"):
        compare.main(["--config", str(TINY_CONFIG), "--quantizers", "vq"])
    with pytest.raises(ConfigError, match="--beta expects NAME=VALUE"):
        compare.main(["--config", str(TINY_CONFIG), "--quantizers", "dvae", "--beta", "dvae:1"])


def test_compare_cli_reports_missing_data_without_a_traceback(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    result = subprocess.run([sys.executable, "-m", "stage1_tokenizer.compare", "--config", str(TINY_CONFIG),
                             "--quantizers", "dvae", f"output_dir={tmp_path}/c", f"data.path={tmp_path}/none.npz",
                             *QUIET], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "error: no .npz file" in result.stderr
    assert "Traceback" not in result.stderr
