"""The paper's training schedules as pure functions of the step (Appendix D; NOTES.md).

Being pure functions of the global step, they need no state of their own: a
resumed run recomputes exactly the values an uninterrupted run would use.
``scale`` (``train.schedule_scale``) stretches or shrinks every horizon at
once, so a short run can still pass through the whole schedule.
"""

from __future__ import annotations

import math

from .config import TrainConfig


def cosine_ramp(step: float, start_step: float, end_step: float, start_value: float, end_value: float) -> float:
    """The release's quarter-cosine ramp from ``start_value`` (at start_step) to ``end_value`` (at end_step).

    a = clip((t - t0) / (t1 - t0), 0, 1);  a = 1 - cos(a * pi / 2);  value = a * v1 + (1 - a) * v0
    """
    if end_step <= start_step:
        return end_value if step >= end_step else start_value
    a = min(max((step - start_step) / (end_step - start_step), 0.0), 1.0)
    a = 1.0 - math.cos(a * math.pi / 2.0)
    return a * end_value + (1.0 - a) * start_value


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """lr ramped from ``lr`` to ``lr_min`` over ``lr_decay_steps`` (x scale), then held."""
    return cosine_ramp(step, 0, cfg.lr_decay_steps * cfg.schedule_scale, cfg.lr, cfg.lr_min)


def kl_weight(step: int, cfg: TrainConfig) -> float:
    """beta ramped from 0 to ``beta_max`` over ``beta_warmup_steps`` (x scale)."""
    return cosine_ramp(step, 0, cfg.beta_warmup_steps * cfg.schedule_scale, 0.0, cfg.beta_max)


def temperature(step: int, cfg: TrainConfig) -> float:
    """Gumbel-softmax temperature tau = tau_init * exp(-tau_decay * step / scale), floored at ``tau_min``.

    ``tau_init`` is the starting temperature (the paper's tau^[0] = 1, Algorithm 1; 2 and 5 in the dVAE
    ablation E.1).
    """
    return max(cfg.tau_init * math.exp(-cfg.tau_decay * step / cfg.schedule_scale), cfg.tau_min)
