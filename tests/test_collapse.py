"""The codebook-collapse alarm: its rules, and the training script driven by a quantizer that collapses."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from stage1_tokenizer import train as train_script
from stage1_tokenizer.collapse import CollapseAlarm
from stage1_tokenizer.quantizers import QUANTIZERS, EdVAEQuantizer
from tests.conftest import train_args


def test_drop_from_best_and_floors():
    alarm = CollapseAlarm(start_step=10, min_codes=20, max_drop=0.5)
    assert alarm.check(5, {"test_codes_used": 1}) == []                   # before the warm-up ends: never
    assert alarm.check(10, {"test_codes_used": 100, "train_perplexity": 40.0}) == []
    assert alarm.check(20, {"test_codes_used": 60, "train_perplexity": 30.0}) == []   # fell 40%: tolerated
    [record] = alarm.check(30, {"test_codes_used": 45, "train_perplexity": 35.0})     # fell 55% from 100
    assert record["metric"] == "test_codes_used" and record["best"] == 100 and "fell 55%" in record["message"]
    [record] = alarm.check(40, {"test_codes_used": 19, "train_perplexity": None})      # below the floor
    assert "below the floor 20" in record["message"]
    with pytest.raises(KeyError):
        alarm.check(50, {"codes": 3})
    with pytest.raises(ValueError):
        CollapseAlarm(start_step=0, max_drop=1.5)


def test_replay_restores_the_best_values_of_a_resumed_run():
    records = [{"split": "train", "step": 10, "perplexity_window": 50.0},
               {"split": "test", "step": 10, "codes_used": 120},
               {"split": "train", "step": 20, "perplexity_window": 20.0},
               {"split": "test", "step": 20, "codes_used": 90},
               {"split": "test", "step": 30, "codes_used": 300}]   # after the checkpoint: ignored
    alarm = CollapseAlarm(start_step=5)
    alarm.replay(records, up_to_step=20)
    assert alarm.best == {"test_codes_used": 120, "train_perplexity": 50.0}


class CollapsingQuantizer(EdVAEQuantizer):
    """EdVAE's quantizer that sends every position to code 0 after its first ``healthy`` training calls."""

    name = "collapsing_for_test"
    healthy = 6
    calls = 0

    def forward(self, z_e, tau=1.0, codes="argmax"):
        out = super().forward(z_e, tau=tau, codes=codes)
        if self.training:
            type(self).calls += 1
        if type(self).calls <= self.healthy:
            return out
        z_q = out.z_q * 0 + self.codebook[0].view(1, -1, 1, 1)
        return dataclasses.replace(out, z_q=z_q, indices=torch.zeros_like(out.indices))

    def hard_codes(self, z_e, codes="argmax", with_uncertainty=False):  # the tokenizer's inference path
        indices, uncertainty = super().hard_codes(z_e, codes=codes, with_uncertainty=with_uncertainty)
        return (indices if type(self).calls <= self.healthy else torch.zeros_like(indices)), uncertainty


@pytest.fixture
def collapsing(monkeypatch):
    CollapsingQuantizer.calls = 0
    monkeypatch.setitem(QUANTIZERS, CollapsingQuantizer.name, CollapsingQuantizer)
    return CollapsingQuantizer.name


def records(run: Path, split: str) -> list[dict]:
    return [r for line in (run / "metrics.jsonl").read_text().splitlines() if (r := json.loads(line))["split"] == split]


COMMON = ["train.max_steps=12", "train.batch_size=16", "train.log_every=2", "train.eval_every=4",
          "train.eval_max_images=32", "train.checkpoint_every=100", "train.beta_warmup_steps=2", "train.schedule_scale=1"]


def test_a_collapsing_run_raises_the_alarm_and_goes_on_by_default(synthetic_npz, tmp_path, collapsing):
    run = tmp_path / "run"
    export = train_script.main(train_args(run, synthetic_npz, f"model.quantizer={collapsing}", *COMMON))
    alarms = records(run, "alarm")
    assert {a["step"] for a in alarms} == {8, 12}               # at every evaluation after the collapse
    assert {"train_perplexity"} <= {a["metric"] for a in alarms}
    assert all(a["value"] == 1 for a in alarms)                # one code left: perplexity 1 (and 1 code in test)
    assert [a for a in alarms if a["metric"] == "train_perplexity"][0]["best"] > 10  # healthy before step 7
    assert export is not None and (run / "tokenizer" / "model.safetensors").is_file()


def test_stop_on_collapse_ends_the_run_with_a_checkpoint_and_no_export(synthetic_npz, tmp_path, collapsing, caplog):
    run = tmp_path / "run"
    export = train_script.main(train_args(run, synthetic_npz, f"model.quantizer={collapsing}", *COMMON,
                                          "train.stop_on_collapse=true"))
    assert export is None and not (run / "tokenizer").exists()
    assert (run / "checkpoints" / "step_00000008").is_dir()    # the state at the alarm, kept
    assert max(r["step"] for r in records(run, "train")) == 8
    assert "codebook is collapsing" in caplog.text


def test_a_floor_that_no_run_reaches_fires_at_the_first_check(synthetic_npz, tmp_path):
    run = tmp_path / "run"
    train_script.main(train_args(run, synthetic_npz, *COMMON, "train.max_steps=4", "train.collapse_min_codes=100000"))
    [alarm] = [a for a in records(run, "alarm") if a["metric"] == "test_codes_used"]
    assert alarm["step"] == 4 and "below the floor 1e+05" in alarm["message"]
