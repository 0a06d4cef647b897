"""Schedules at chosen steps equal the paper's formulas (Appendix D, NOTES.md)."""

import math

import pytest

from stage1_tokenizer.config import TrainConfig
from stage1_tokenizer.schedules import cosine_ramp, kl_weight, learning_rate, temperature


def ramp(t, t0, t1, v0, v1):
    a = min(max((t - t0) / (t1 - t0), 0), 1)
    a = 1 - math.cos(a * math.pi / 2)
    return a * v1 + (1 - a) * v0


@pytest.mark.parametrize("step", [0, 1, 1000, 2500, 4999, 5000, 20000, 49999, 50000, 100000, 150000])
def test_paper_schedules(step):
    cfg = TrainConfig()  # paper defaults: lr 1e-3 -> 1.25e-6 over 50K, beta 0 -> 5e-7 over 5K, tau exp(-1e-5 t)
    assert learning_rate(step, cfg) == pytest.approx(ramp(step, 0, 50_000, 1e-3, 1.25e-6), rel=1e-12)
    assert kl_weight(step, cfg) == pytest.approx(ramp(step, 0, 5_000, 0.0, 5e-7), rel=1e-12, abs=1e-20)
    assert temperature(step, cfg) == pytest.approx(math.exp(-1e-5 * step), rel=1e-12)


def test_schedule_landmarks():
    cfg = TrainConfig()
    assert learning_rate(0, cfg) == 1e-3 and learning_rate(50_000, cfg) == pytest.approx(1.25e-6)
    assert learning_rate(120_000, cfg) == pytest.approx(1.25e-6)  # held after the decay
    assert kl_weight(0, cfg) == 0.0 and kl_weight(5_000, cfg) == pytest.approx(5e-7)
    assert kl_weight(2_500, cfg) == pytest.approx(5e-7 * (1 - math.cos(math.pi / 4)))
    assert temperature(150_000, cfg) == pytest.approx(math.exp(-1.5))


def test_schedule_scale_compresses_every_horizon():
    cfg = TrainConfig(schedule_scale=0.1)
    assert kl_weight(500, cfg) == pytest.approx(5e-7)
    assert learning_rate(5_000, cfg) == pytest.approx(1.25e-6)
    assert temperature(15_000, cfg) == pytest.approx(math.exp(-1.5))
    assert temperature(10**6, TrainConfig(tau_min=0.0625)) == 0.0625


def test_cosine_ramp_degenerate_horizon():
    assert cosine_ramp(0, 0, 0, 1.0, 2.0) == 2.0
