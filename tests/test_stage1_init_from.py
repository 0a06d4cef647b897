"""Stage 1's ``init_from``: a training run that starts from an exported tokenizer's weights (stage1_tokenizer/train.py).

The weights the optimizer sees before its first update are the export's, exactly (fp16 exports, as the GPU check
brings back, upcast to float32); the optimizer and the schedules start fresh; a resumed run does not read the
source; another architecture is refused in one line naming what differs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from edvae_common.hub import CheckpointError
from stage1_tokenizer import EdVAE
from stage1_tokenizer import train as stage1_train
from tests.conftest import ROOT, train_args

sys.path.insert(0, str(ROOT / "benchmarks"))
from gpu_parts.train_tokenizer import save_fp16  # noqa: E402  (the GPU check's own fp16 copy)

NARROW = ["model.channels=8", "train.batch_size=8", "train.log_every=1"]
LR = 1e-3


class FirstStep:
    """Replaces torch.optim.Adam (which train.py builds) to keep the parameters just before and after its first
    update: what the run starts from, and what one fresh Adam step did to it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.before: list[torch.Tensor] | None = None
        self.after: list[torch.Tensor] | None = None
        spy = self

        class Adam(torch.optim.Adam):
            def step(self, *args, **kwargs):
                first = spy.before is None
                if first:
                    spy.before = spy.params(self)
                result = super().step(*args, **kwargs)
                if first:
                    spy.after = spy.params(self)
                return result

        monkeypatch.setattr(torch.optim, "Adam", Adam)

    @staticmethod
    def params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
        return [p.detach().clone() for group in optimizer.param_groups for p in group["params"]]


def train_source(data: Path, out: Path) -> Path:
    """A real export of train.py: 2 steps of the tiny config at width 8, another seed than the runs below."""
    stage1_train.main(train_args(out, data, *NARROW, "train.max_steps=2", "train.seed=7"))
    return out / "tokenizer"


def train_records(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("split") == "train"]


def test_a_run_starts_from_the_exports_weights_with_a_fresh_optimizer_and_trains(synthetic_npz, tmp_path, monkeypatch):
    source = train_source(synthetic_npz, tmp_path / "source")
    spy = FirstStep(monkeypatch)
    run = tmp_path / "continued"
    # conv_bias_init only chooses an initial value that init_from replaces: it may differ from the source's
    stage1_train.main(train_args(run, synthetic_npz, *NARROW, "train.max_steps=2", f"train.lr={LR}",
                                 "model.conv_bias_init=default", "train.checkpoint_every=2", f"init_from={source}"))
    start = list(EdVAE.from_pretrained(source).parameters())
    assert spy.before is not None and len(spy.before) == len(start)
    for mine, theirs in zip(spy.before, start):
        assert mine.dtype == torch.float32 and torch.equal(mine, theirs)  # step 0: the export's weights, exactly
    # a fresh Adam moves each weight by about lr on its first step (m / sqrt(v) = +-1); a restored one would not
    moved = max(float((b - a).abs().max()) for a, b in zip(spy.before, spy.after))
    assert moved == pytest.approx(LR, rel=1e-2)
    records = train_records(run)
    assert [r["step"] for r in records] == [1, 2] and records[0]["lr"] == pytest.approx(LR)  # the schedule, fresh
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    trained = EdVAE.from_pretrained(run / "tokenizer")
    assert not all(torch.equal(a, b) for a, b in zip(trained.parameters(), start))  # it trained

    # resumed, the run keeps its own weights and does not read init_from (here: a folder that does not exist)
    stage1_train.main(train_args(run, synthetic_npz, *NARROW, "train.max_steps=3", "model.conv_bias_init=default",
                                 f"init_from={tmp_path / 'gone'}", "resume=latest"))
    assert [r["step"] for r in train_records(run)] == [1, 2, 3]


def test_fp16_weights_are_upcast_to_float32(synthetic_npz, tmp_path, monkeypatch):
    fp32 = train_source(synthetic_npz, tmp_path / "source")
    fp16 = tmp_path / "fp16"
    save_fp16(fp32, fp16)
    with safe_open(str(fp16 / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    spy = FirstStep(monkeypatch)
    stage1_train.main(train_args(tmp_path / "run", synthetic_npz, *NARROW, "train.max_steps=1", f"init_from={fp16}"))
    exact = list(EdVAE.from_pretrained(fp32).parameters())
    for mine, theirs in zip(spy.before, exact):
        assert mine.dtype == torch.float32
        assert torch.equal(mine, theirs.half().float())  # the fp16 values, in float32
        assert torch.allclose(mine, theirs, rtol=1e-3, atol=1e-4)
    assert any(not torch.equal(mine, theirs) for mine, theirs in zip(spy.before, exact))  # fp16 rounding was there


def test_another_architecture_is_refused_in_one_line_naming_what_differs(synthetic_npz, tmp_path):
    source = tmp_path / "source"
    EdVAE(channels=8, channel_mults=[1, 2, 4]).save_pretrained(str(source))
    run = tmp_path / "run"
    with pytest.raises(CheckpointError) as err:
        stage1_train.main(train_args(run, synthetic_npz, "model.channels=16", "model.quantizer=dvae",
                                     "train.max_steps=1", f"init_from={source}"))
    message = str(err.value)
    assert "\n" not in message
    assert "model.channels: 8 (source) vs 16 (this run)" in message
    assert "model.quantizer: edvae (source) vs dvae (this run)" in message
    assert "codebook_size" not in message and "conv_bias_init" not in message  # the same, or an init-only setting
    assert not (run / "config.yaml").exists()  # refused before the run folder was written
    with pytest.raises(CheckpointError, match=r"init_from='.*': .*missing config.json"):
        stage1_train.main(train_args(run, synthetic_npz, "train.max_steps=1", f"init_from={tmp_path}"))
