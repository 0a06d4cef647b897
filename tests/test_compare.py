"""The one-command comparison: every run trained once with the same budget, results tabulated."""

import json
import math
from pathlib import Path

import pytest

from tests.conftest import QUIET, TINY_CONFIG
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

    from tests.conftest import ROOT

    result = subprocess.run([sys.executable, "-m", "stage1_tokenizer.compare", "--config", str(TINY_CONFIG),
                             "--quantizers", "dvae", f"output_dir={tmp_path}/c", f"data.path={tmp_path}/none.npz",
                             *QUIET], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "error: no .npz file" in result.stderr
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------------------ ablation sweeps (Appendix E)


def sweep_args(root, data, quantizers, seeds, sweep, *extra):
    return ["--config", str(TINY_CONFIG), "--quantizers", *quantizers, "--seeds", *seeds, "--sweep", sweep, *extra,
            f"output_dir={root}", f"data.path={data}", *QUIET, "train.max_steps=2", "train.batch_size=16",
            "train.checkpoint_every=2", "model.channels=8"]


def test_sweep_trains_each_quantizer_value_and_seed_once_and_groups_them(synthetic_npz, tmp_path):
    root = tmp_path / "clamp"
    rows = compare.main(sweep_args(root, synthetic_npz, ["edvae"], ["1", "2"], "model.clamp_max=10,15"))
    assert [(r["quantizer"], r["model.clamp_max"], r["seed"]) for r in rows] == [
        ("edvae", 10.0, 1), ("edvae", 10.0, 2), ("edvae", 15.0, 1), ("edvae", 15.0, 2)]
    assert all(r["sweep_key"] == "model.clamp_max" and r["steps"] == 2 for r in rows)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [
        "edvae_model.clamp_max_10_seed1", "edvae_model.clamp_max_10_seed2",
        "edvae_model.clamp_max_15_seed1", "edvae_model.clamp_max_15_seed2"]
    import yaml

    saved_cfg = yaml.safe_load((root / "edvae_model.clamp_max_15_seed2" / "config.yaml").read_text())
    assert saved_cfg["model"]["clamp_max"] == 15.0 and saved_cfg["train"]["seed"] == 2
    saved = json.loads((root / "results.json").read_text())
    assert [r["model.clamp_max"] for r in saved] == [10.0, 10.0, 15.0, 15.0]
    table = (root / "results.md").read_text()
    assert "# Ablation: `model.clamp_max`" in table and "swept `model.clamp_max` over 10, 15" in table
    assert "| quantizer | model.clamp_max | beta_max | seeds |" in table
    assert "| edvae | 10 | 5e-07 | 1 2 |" in table and "| edvae | 15 | 5e-07 | 1 2 |" in table and "±" in table
    assert (root / "curves.png").stat().st_size > 10_000
    assert (root / "uncertainty_perplexity.png").stat().st_size > 10_000  # Figure 6 for the EdVAE runs
    assert "uncertainty_perplexity.png" in table
    # resumable: a second call trains nothing
    logs = {p: p.read_text() for p in root.glob("*/metrics.jsonl")}
    compare.main(sweep_args(root, synthetic_npz, ["edvae"], ["1", "2"], "model.clamp_max=10,15"))
    assert {p: p.read_text() for p in root.glob("*/metrics.jsonl")} == logs


def test_beta_sweep_replaces_every_quantizers_paper_beta(synthetic_npz, tmp_path):
    root = tmp_path / "beta"
    rows = compare.main(sweep_args(root, synthetic_npz, ["edvae", "dvae"], ["1"], "train.beta_max=1e-7,1e-4"))
    assert [(r["quantizer"], r["beta_max"]) for r in rows] == [
        ("edvae", 1e-7), ("edvae", 1e-4), ("dvae", 1e-7), ("dvae", 1e-4)]
    assert all(r["train.beta_max"] == r["beta_max"] for r in rows)
    import yaml

    saved_cfg = yaml.safe_load((root / "dvae_train.beta_max_0.0001_seed1" / "config.yaml").read_text())
    assert saved_cfg["train"]["beta_max"] == 1e-4  # the swept weight, not dVAE's 5e-5
    table = (root / "results.md").read_text()
    assert "| dvae | 0.0001 | 0.0001 | 1 |" in table and "| edvae | 1e-07 | 1e-07 | 1 |" in table
    assert (root / "uncertainty_perplexity.png").is_file()


def test_sweep_rejects_bad_specifications(tmp_path):
    base = ["--config", str(TINY_CONFIG), "--quantizers", "edvae", f"output_dir={tmp_path}/s"]
    cases = [("model.clamp_max", "--sweep expects KEY=V1,V2"), ("model.clamp_max=", "--sweep expects"),
             ("model.clamp_max=10,,20", "--sweep expects"), ("model.clamp=10,20", "Did you mean 'model.clamp_max'"),
             ("model.clamp_max=ten", "model.clamp_max"), ("model.clamp_max=10,-1", "must be positive"),
             ("model.clamp_max=10,10.0", "not distinct"), ("train.seed=1,2", "cannot vary 'train.seed'"),
             ("model.quantizer=edvae,dvae", "cannot vary"), ("model.channel_mults=[1]", "single value")]
    for spec, message in cases:
        with pytest.raises(ConfigError, match=message):
            compare.main([*base, "--sweep", spec])
    with pytest.raises(ConfigError, match="drop --beta"):
        compare.main([*base, "--beta", "edvae=1e-6", "--sweep", "train.beta_max=1e-7,1e-6"])
    with pytest.raises(ConfigError, match="both swept and set"):
        compare.main([*base, "--sweep", "model.clamp_max=10,15", "model.clamp_max=20"])
    assert not (tmp_path / "s").exists()  # nothing was trained


def test_temperature_ablation_scales_the_schedule(synthetic_npz, tmp_path):
    # E.1 trains dVAE at temperature 1, 2 and 5: the starting temperature tau^[0] of tau = tau0 * exp(-1e-5 t).
    from stage1_tokenizer.config import TrainConfig
    from stage1_tokenizer.schedules import temperature

    cfg = TrainConfig(tau_init=2.0)
    assert temperature(0, cfg) == 2.0 and temperature(50_000, cfg) == pytest.approx(2 * math.exp(-0.5))
    assert temperature(0, TrainConfig()) == 1.0
    root = tmp_path / "tau"
    rows = compare.main(sweep_args(root, synthetic_npz, ["dvae"], ["1"], "train.tau_init=1,2", "train.log_every=1"))
    taus = {r["train.tau_init"]: [json.loads(line)["tau"] for line in (Path(r["run_dir"]) / "metrics.jsonl")
                                  .read_text().splitlines() if json.loads(line)["split"] == "train"] for r in rows}
    assert taus[1.0][0] == 1.0 and taus[2.0][0] == 2.0  # the first step's temperature
    assert taus[2.0][1] == pytest.approx(2 * taus[1.0][1]) and taus[1.0][1] < 1.0
    assert "| dvae | 2 | 5e-05 | 1 |" in (root / "results.md").read_text()


# ------------------------------------------------------------------------------ Figure 6 plot


def fake_run(folder, uncertainty=True, steps=range(10, 110, 10)):
    folder.mkdir(parents=True)
    lines = []
    for i, step in enumerate(steps):
        u = 0.2 + 0.05 * i if uncertainty else None
        lines.append(json.dumps({"split": "train", "step": step, "mse": 0.05, "perplexity": 20.0 + 30 * i,
                                 "perplexity_window": 25.0 + 30 * i, "uncertainty": u}))
    lines.append(json.dumps({"split": "test", "step": steps[-1], "mse": 0.05, "perplexity_split": 100.0}))
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_uncertainty_perplexity_plot_for_several_runs(tmp_path):
    from stage1_tokenizer import plots

    a, b = fake_run(tmp_path / "a"), fake_run(tmp_path / "b", steps=range(5, 55, 5))
    series = plots.uncertainty_series(a)
    assert series["step"][:2] == [10, 20] and series["uncertainty"][1] == pytest.approx(0.25)
    assert plots.pearson(series["uncertainty"], series["perplexity"]) == pytest.approx(1.0)
    assert plots.pearson([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    out = plots.plot_uncertainty_perplexity([a, b], tmp_path / "fig6.png", labels=["seed 1", "seed 2"])
    assert out.stat().st_size > 10_000
    plots.main(["--kind", "uncertainty", "--run", str(a), str(b), "--perplexity-key", "perplexity_window"])
    assert (a / "uncertainty_perplexity.png").stat().st_size > 10_000
    with pytest.raises(ValueError, match="only EdVAE runs log"):
        plots.plot_uncertainty_perplexity([fake_run(tmp_path / "dvae", uncertainty=False)], tmp_path / "x.png")
    with pytest.raises(ValueError, match="2 labels for 1 runs"):
        plots.plot_uncertainty_perplexity([a], tmp_path / "x.png", labels=["p", "q"])
    with pytest.raises(FileNotFoundError, match="no metrics"):
        plots.uncertainty_series(tmp_path / "empty")
    with pytest.raises(SystemExit):
        plots.main(["--run", str(a), str(b)])  # --kind curves takes one run
