"""The prior's EMA does what it must: the closed-form average, in training, in the export, across a resume.

Each test fails if the update copies the latest weights (``lerp_`` with weight ``decay`` instead of
``1 - decay``), or if the export or the resume lose the average.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from stage2_prior import train as prior_train
from stage2_prior.ema import EMA
from stage2_prior.model import load_prior
from stage2_prior.tokens import TokenizerFingerprint
from tests.stage2_helpers import STAGE2_QUIET, make_image_npz, make_token_set, make_tokenizer

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "stage2" / "tiny.yaml")
DECAY = 0.75


class Two(nn.Module):
    """One trained parameter, one frozen one and a buffer: only the first is averaged."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, -2.0, 4.0], dtype=torch.float64))
        self.frozen = nn.Parameter(torch.zeros(2), requires_grad=False)
        self.register_buffer("count", torch.zeros(()))


def set_weights(model: Two, values: list[float]) -> None:
    with torch.no_grad():
        model.w.copy_(torch.tensor(values, dtype=torch.float64))


def test_shadow_is_the_closed_form_average_of_the_weights_it_saw():
    model = Two()
    w0 = model.w.detach().clone()
    ema = EMA(model, DECAY)
    assert set(ema.shadow) == {"w"} and ema.shadow["w"].dtype == torch.float32    # trained parameters, float32
    seen = [[2.0, 0.0, 0.0], [0.0, 8.0, -4.0], [-1.0, 1.0, 3.0]]
    for values in seen:
        set_weights(model, values)
        ema.update(model)
    # s_n = d^n w_0 + (1 - d) sum_k d^(n - k) w_k
    n = len(seen)
    expected = DECAY ** n * w0 + sum((1 - DECAY) * DECAY ** (n - k) * torch.tensor(v, dtype=torch.float64)
                                     for k, v in enumerate(seen, start=1))
    torch.testing.assert_close(ema.shadow["w"].double(), expected, rtol=0, atol=1e-6)
    assert not torch.allclose(ema.shadow["w"].double(), model.w.detach(), atol=1e-3)   # not the latest weights

    # swapped(): the average inside, the trained weights back afterwards
    with ema.swapped(model):
        torch.testing.assert_close(model.w.detach(), expected, rtol=0, atol=1e-6)
    assert torch.equal(model.w.detach(), torch.tensor(seen[-1], dtype=torch.float64))


def test_state_dict_round_trip_restores_the_shadow_exactly_and_continues_the_average():
    model = Two()
    ema = EMA(model, DECAY)
    for values in ([3.0, 1.0, 0.5], [0.25, -7.0, 2.0]):
        set_weights(model, values)
        ema.update(model)
    state = pickle.loads(pickle.dumps(ema.state_dict()))       # as accelerate checkpoints it
    restored = EMA(Two(), 0.1)                                    # fresh: another decay, the initial weights
    restored.load_state_dict(state)
    assert restored.decay == DECAY and torch.equal(restored.shadow["w"], ema.shadow["w"])
    set_weights(model, [1.0, 1.0, 1.0])
    ema.update(model)
    restored.update(model)
    assert torch.equal(restored.shadow["w"], ema.shadow["w"])


# ---------------------------------------------------------------------------- through stage2_prior/train.py
def checkpoint(run: Path, step: int) -> tuple[dict, dict]:
    """(raw model weights, EMA shadow) saved in the run's checkpoint of ``step``."""
    folder = run / "checkpoints" / f"step_{step:08d}"
    raw = load_file(str(folder / "model.safetensors"))
    states = [torch.load(p, weights_only=False) for p in sorted(folder.glob("custom_checkpoint_*.pkl"))]
    shadow = next(s["shadow"] for s in states if isinstance(s, dict) and "shadow" in s)
    return raw, shadow


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ema")
    tok = make_tokenizer(root / "tok", make_image_npz(root / "images.npz"))
    return make_token_set(root / "tokens", TokenizerFingerprint.of(tok, 16, root / "tok"), n_train=128, n_val=32)


def test_training_averages_every_step_exports_the_average_and_resume_restores_it(tokens, tmp_path):
    common = ["--config", TINY, f"data.tokens={tokens}", f"train.ema_decay={DECAY}", "train.max_steps=3",
              "train.checkpoint_every=1", "train.checkpoints_total_limit=5", "train.eval_every=1000",
              "train.sample_every=1000", "train.log_every=1", "train.batch_size=8", *STAGE2_QUIET]
    run = tmp_path / "run"
    prior_train.main([*common, f"output_dir={run}"])
    raw, shadow = zip(*(checkpoint(run, step) for step in (1, 2, 3)))
    assert set(shadow[0]) == set(raw[0])
    for step in (1, 2):           # one update per optimizer step, with the weights after that step
        for name in shadow[step]:
            torch.testing.assert_close(shadow[step][name],
                                       DECAY * shadow[step - 1][name] + (1 - DECAY) * raw[step][name].float(),
                                       rtol=0, atol=1e-6, msg=lambda m: f"{name} at step {step + 1}: {m}")

    exported, _ = load_prior(run / "prior")
    weights = dict(exported.named_parameters())
    moved = 0
    for name, value in shadow[2].items():
        assert torch.equal(weights[name].detach().float(), value), f"{name}: the export is not the EMA"
        moved += not torch.allclose(value, raw[2][name].float(), atol=1e-6)
    assert moved > len(shadow[2]) // 2          # and the average is not the raw weights

    # killed after step 2: resume restores the shadow bit for bit, so step 3 and the export come out the same
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_00000003")
    shutil.rmtree(resumed / "prior")
    prior_train.main([*common, f"output_dir={resumed}", "resume=latest"])
    raw_again, shadow_again = checkpoint(resumed, 3)
    for name in shadow[2]:
        assert torch.equal(shadow_again[name], shadow[2][name]), name
        assert torch.equal(raw_again[name], raw[2][name]), name
    again, _ = load_prior(resumed / "prior")
    for (name, p), q in zip(exported.named_parameters(), again.parameters()):
        assert torch.equal(p, q), name
