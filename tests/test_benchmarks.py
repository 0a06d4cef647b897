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
