"""The benchmark script runs end to end at a tiny size and writes its table (timings are not asserted)."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_stage1_benchmark_writes_a_table(tmp_path):
    out = tmp_path / "bench.md"
    out.write_text("# Stage-1 training-step benchmarks\n\n## CUDA: some GPU\n\nkept\n")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_stage1.py"), "--configs", "small", "--variants", "fp32",
           "bf16", "--batch-size", "2", "--steps", "2", "--warmup", "1", "--threads", "1", "--device", "cpu",
           "--encode-batch", "2", "--encode-repeats", "1", "--encode-before", str(ROOT), "--out", str(out)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    text = out.read_text()
    assert "## CPU" in text and "## CUDA: some GPU" in text and "kept" in text  # other device's section kept
    rows = [line for line in text.splitlines() if line.startswith("| small |")]
    assert len(rows) == 2 and "fp32 eager" in rows[0] and "bf16 autocast" in rows[1]
    assert "1.00x" in rows[0]
    for row in rows:  # the plain reference step ran beside each variant: images/s and the ratio
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[7].replace(",", "")) > 0 and cells[8].endswith("x") and float(cells[8][:-1]) > 0
    encode = [line for line in text.splitlines() if line.startswith("| encode, small |")]
    assert len(encode) == 1 and encode[0].rstrip(" |").endswith("x") and "FAILED" not in text


@pytest.mark.slow
def test_sampling_benchmark_writes_a_table(tmp_path):
    out = tmp_path / "bench.md"
    out.write_text("# Stage-2 sampling benchmarks\n\n## CUDA: some GPU\n\nkept\n")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_sampling.py"), "--device", "cpu", "--threads", "1",
           "--size", "tiny", "--seq-lens", "16", "--repeats", "1", "--out", str(out)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    text = out.read_text()
    assert "## CPU" in text and "## CUDA: some GPU" in text and "kept" in text
    rows = [line for line in text.splitlines() if line.startswith("| sample")]
    assert [r.split("|")[1].strip() for r in rows] == ["sample, KV cache", "sample, no cache", "sample + decode 16 faces"]
    assert "FAILED" not in text and rows[1].rstrip(" |").endswith("x")   # the cached/uncached ratio is reported


def _flops_module():
    import importlib.util

    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("flops_bench", ROOT / "benchmarks" / "flops.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flops_counts_what_the_models_do_and_writes_its_section(tmp_path):
    flops = _flops_module()
    from edvae_common.config import load_config
    from stage1_tokenizer import Stage1Config
    from stage2_prior.config import Stage2Config

    s1 = load_config(Stage1Config, ROOT / "configs/stage1/tiny.yaml", [])
    small = load_config(Stage1Config, ROOT / "configs/stage1/tiny.yaml", ["data.image_size=16"])
    # a convolutional tokenizer's work grows with the pixels: 4x the pixels, 4x the FLOPs
    assert flops.tokenizer_flops_per_image(s1, "edvae") == pytest.approx(
        4 * flops.tokenizer_flops_per_image(small, "edvae"), rel=0.01)
    # a transformer's training step: at least 6 FLOPs per weight (outside the input embedding) per token
    s2 = load_config(Stage2Config, ROOT / "configs/stage2/tiny.yaml", [])
    per_sequence, params, tokens = flops.prior_flops_per_sequence(s1, s2)
    assert tokens == 64
    embedding = 513 * 64   # the input embedding: a lookup, no multiply
    assert 6 * (params - embedding) * (tokens + 1) <= per_sequence <= 1.5 * 6 * params * (tokens + 1)

    out = tmp_path / "bench.md"
    out.write_text("# Benchmarks\n\n## CPU\n\nkept\n\n## App under load: `bench_app.py`\n\nalso kept\n")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "flops.py"), "--pairs",
           "configs/stage1/tiny.yaml:configs/stage2/tiny.yaml", "--quantizers", "edvae", "vqvae_ema", "--out", str(out)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    text = out.read_text()
    assert "kept" in text and "also kept" in text and text.count(flops.HEADING) == 1
    assert "edvae " in text and "vqvae_ema " in text and "| **tokenizer + prior** | `tiny` |" in text
    # written again: the section is replaced, not repeated
    assert subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=300).returncode == 0
    assert out.read_text().count(flops.HEADING) == 1 and "also kept" in out.read_text()
