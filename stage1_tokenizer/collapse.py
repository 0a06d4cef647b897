"""A codebook-collapse alarm for stage-1 training.

Codebook collapse (few codes carry all positions) is what EdVAE is meant to prevent, and a run
that collapses is wasted time. At every evaluation after the KL warm-up, ``CollapseAlarm.check``
looks at two numbers on hard codes:

- ``test_codes_used``: codes used on the periodic evaluation images (argmax codes);
- ``train_perplexity``: perplexity of the hard training codes over the last logging window.

Each is compared with a floor (``train.collapse_min_codes`` / ``train.collapse_min_perplexity``,
off by default) and with its own best value since the warm-up (an alarm when it falls by more
than ``train.collapse_max_drop``, 0.5 by default). The training script logs an alarm to
``metrics.jsonl`` (``"split": "alarm"``) and TensorBoard, warns, marks the progress bar, and with
``train.stop_on_collapse=true`` saves a checkpoint and ends the run without exporting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional

LABELS = {"test_codes_used": "test codes used", "train_perplexity": "hard-code training perplexity"}


@dataclass
class CollapseAlarm:
    start_step: int                        # checks begin here (the end of the beta warm-up)
    min_codes: Optional[int] = None        # floor for test_codes_used
    min_perplexity: Optional[float] = None  # floor for train_perplexity
    max_drop: Optional[float] = 0.5        # alarm when a metric falls below (1 - max_drop) x its best
    best: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_drop is not None and not 0.0 < self.max_drop < 1.0:
            raise ValueError(f"max_drop must be in (0, 1) or None, got {self.max_drop}")

    def floor(self, name: str) -> Optional[float]:
        return {"test_codes_used": self.min_codes, "train_perplexity": self.min_perplexity}[name]

    def check(self, step: int, metrics: dict[str, Optional[float]]) -> list[dict]:
        """Update the best values with ``metrics`` and return one record per metric that signals collapse."""
        if step < self.start_step:
            return []
        alarms = []
        for name, value in metrics.items():
            if name not in LABELS:
                raise KeyError(f"unknown collapse metric '{name}'; known: {', '.join(LABELS)}")
            if value is None or value != value:  # not measured (NaN) this time
                continue
            best = self.best[name] = max(self.best.get(name, value), value)
            floor = self.floor(name)
            if floor is not None and value < floor:
                reason = f"{LABELS[name]} {value:.4g} is below the floor {floor:.4g}"
            elif self.max_drop is not None and value < (1.0 - self.max_drop) * best:
                reason = (f"{LABELS[name]} {value:.4g} fell {1 - value / best:.0%} from its best {best:.4g} "
                          f"(limit {self.max_drop:.0%})")
            else:
                continue
            alarms.append({"split": "alarm", "step": step, "alarm": "codebook_collapse", "metric": name,
                           "value": value, "best": best, "floor": floor, "message": reason})
        return alarms

    def replay(self, records: Iterable[dict], up_to_step: int) -> None:
        """Rebuild the best values from a resumed run's ``metrics.jsonl`` records (no checkpoint format change)."""
        last_perplexity = None
        for r in records:
            if r.get("step", 0) > up_to_step:
                continue
            if r.get("split") == "train":
                last_perplexity = r.get("perplexity_window")
            elif r.get("split") == "test" and r["step"] >= self.start_step:
                self.check(r["step"], {"test_codes_used": r.get("codes_used"), "train_perplexity": last_perplexity})
