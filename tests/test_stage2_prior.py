"""The prior: training lowers NLL, exact resume, export ties to the tokenizer, sampling and completion."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from edvae_common.config import ConfigError
from edvae_common.hub import CheckpointError
from stage2_prior import sample as sample_cli
from stage2_prior import train as prior_train
from stage2_prior.model import load_prior
from stage2_prior.generation import complete_codes, complete_image, generate_codes
from stage2_prior.tokens import Manifest, TokenizerFingerprint, TokenizerMismatchError
from tests.stage2_helpers import STAGE2_QUIET, make_image_npz, make_token_set, make_tokenizer

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "stage2" / "tiny.yaml")


def read_metrics(run: Path, split: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == split]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """A tokenizer, a learnable token set tied to it, and a tiny class-conditional prior trained on it."""
    root = tmp_path_factory.mktemp("stage2")
    data = make_image_npz(root / "images.npz")
    tok = make_tokenizer(root / "tok", data)
    fingerprint = TokenizerFingerprint.of(tok, 16, root / "tok")
    tokens = make_token_set(root / "tokens", fingerprint)
    run = root / "run"
    prior_train.main(["--config", TINY, f"output_dir={run}", f"data.tokens={tokens}", "model.class_conditional=true",
                      "train.max_steps=150", "train.eval_every=50", "train.sample_every=150", "train.log_every=10",
                      *STAGE2_QUIET])
    return {"root": root, "tok": tok, "tok_dir": root / "tok", "tokens": tokens, "run": run, "data": data}


def test_training_lowers_validation_nll_and_exports(world: dict) -> None:
    val = read_metrics(world["run"], "val")
    assert [r["step"] for r in val] == [50, 100, 150]
    log2_vocab = np.log2(32)
    # the held-out NLL falls well below chance (5 bits) and keeps falling
    assert val[-1]["nll_bits_per_token"] < 0.5 * log2_vocab
    assert val[-1]["nll_bits_per_token"] < val[0]["nll_bits_per_token"]
    train = read_metrics(world["run"], "train")
    assert train[-1]["bits_per_token"] < train[0]["bits_per_token"]
    assert (world["run"] / "images" / "samples_00000150.png").is_file()       # grid decoded by the tokenizer
    prior, spec = load_prior(world["run"] / "prior", tokenizer=world["tok"])
    assert spec.num_classes == 3 and spec.grid == (8, 8) and spec.vocab_size == 32 + 1 + 3
    assert prior.config.n_positions == 65


def test_resume_latest_equals_an_uninterrupted_run(world: dict, tmp_path: Path) -> None:
    common = ["--config", TINY, f"data.tokens={world['tokens']}", "train.eval_every=1000", "train.sample_every=1000",
              "train.checkpoint_every=10", "train.ema_decay=0.9", "model.dropout=0.1", *STAGE2_QUIET]
    straight, resumed = tmp_path / "a", tmp_path / "b"
    prior_train.main([*common, f"output_dir={straight}", "train.max_steps=20"])
    # the same run, "killed" after its step-10 checkpoint: later checkpoints and the export are gone
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_00000020")
    shutil.rmtree(resumed / "prior")
    prior_train.main([*common, f"output_dir={resumed}", "train.max_steps=20", "resume=latest"])
    steps = [r["step"] for r in read_metrics(resumed, "train")]
    assert steps == sorted(set(steps)) and steps[-1] == 20              # the log was cut back, not duplicated
    a, _ = load_prior(straight / "prior")
    b, _ = load_prior(resumed / "prior")
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name


def test_run_folder_and_config_errors(world: dict, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        prior_train.main(["--config", TINY, f"output_dir={world['run']}", f"data.tokens={world['tokens']}", *STAGE2_QUIET])
    with pytest.raises(ConfigError, match="model.size"):
        prior_train.main(["--config", TINY, f"output_dir={tmp_path}", f"data.tokens={world['tokens']}",
                          "model.size=huge", *STAGE2_QUIET])
    with pytest.raises(FileNotFoundError, match="extract_tokens"):
        prior_train.main(["--config", TINY, f"output_dir={tmp_path}", f"data.tokens={tmp_path / 'none'}", *STAGE2_QUIET])


def test_prior_refuses_another_tokenizer_and_wrong_folders(world: dict) -> None:
    other = make_tokenizer(world["root"] / "tok_other", world["data"], seed=5)
    with pytest.raises(TokenizerMismatchError, match="tokens_hash"):
        load_prior(world["run"] / "prior", tokenizer=other)
    with pytest.raises(CheckpointError, match="not an EdVAE prior"):
        load_prior(world["tok_dir"])
    with pytest.raises(SystemExit, match="another tokenizer"):
        from edvae_common.cli import run_cli

        run_cli(lambda: sample_cli.main(["--prior", str(world["run"] / "prior"), "--tokenizer",
                                         str(world["root"] / "tok_other"), "--out", str(world["root"] / "x")]))


def test_sampling_contracts(world: dict) -> None:
    prior, spec = load_prior(world["run"] / "prior")
    greedy = generate_codes(prior, spec, 4, temperature=0, class_label=1)
    assert greedy.shape == (4, 8, 8) and int(greedy.max()) < 32          # only image codes, never BOS / classes
    assert torch.equal(generate_codes(prior, spec, 4, top_k=1, seed=7, class_label=1), greedy)  # top-k 1 = greedy
    a = generate_codes(prior, spec, 6, seed=3, batch_size=4)
    assert torch.equal(a, generate_codes(prior, spec, 6, seed=3, batch_size=4))                   # same seed
    assert not torch.equal(a, generate_codes(prior, spec, 6, seed=4, batch_size=4))               # other seed
    # the KV cache changes speed, not results
    assert torch.equal(generate_codes(prior, spec, 3, temperature=0, use_cache=False, class_label=2),
                       generate_codes(prior, spec, 3, temperature=0, class_label=2))
    with pytest.raises(ValueError, match="out of range"):
        generate_codes(prior, spec, 1, class_label=3)
    with pytest.raises(ValueError, match="needs a class_label"):
        generate_codes(prior, spec, 1, cfg_scale=2.0)


def test_class_conditioning_and_guidance_follow_the_class(world: dict) -> None:
    """Token rows of class c are (90%) the code table[c, row]; guided samples should show it."""
    prior, spec = load_prior(world["run"] / "prior")
    table = np.random.default_rng(123).integers(0, 32, size=(3, 8))  # as in pattern_sequences
    for label in range(3):
        codes = generate_codes(prior, spec, 8, seed=0, class_label=label, cfg_scale=3.0).numpy()
        first_col = codes[:, :, 0]                                    # (8 samples, 8 rows)
        assert (first_col == table[label][None]).mean() > 0.6, label


def test_guidance_matches_its_formula(world: dict) -> None:
    """One guided step by hand: log p_u + s (log p_c - log p_u), argmax."""
    prior, spec = load_prior(world["run"] / "prior")
    s = 2.5
    out = generate_codes(prior, spec, 2, temperature=0, class_label=0, cfg_scale=s)
    cond_prompt = torch.tensor([[spec.class_token(0)]] * 2)
    uncond_prompt = torch.tensor([[spec.bos_id]] * 2)
    with torch.no_grad():
        lc = torch.log_softmax(prior(input_ids=cond_prompt).logits[:, -1].float(), -1)[:, :32]
        lu = torch.log_softmax(prior(input_ids=uncond_prompt).logits[:, -1].float(), -1)[:, :32]
    assert torch.equal(out[:, 0, 0], (lu + s * (lc - lu)).argmax(-1))


def test_completion_keeps_the_given_rows(world: dict) -> None:
    prior, spec = load_prior(world["run"] / "prior")
    grid = generate_codes(prior, spec, 1, seed=1, class_label=0)[0]
    out = complete_codes(prior, spec, grid, keep_rows=3, variations=5, seed=2, class_label=0)
    assert out.shape == (5, 8, 8)
    assert torch.equal(out[:, :3], grid[:3].expand(5, -1, -1))
    image = torch.rand(3, 16, 16)
    result = complete_image(prior, spec, world["tok"], image, keep_rows=4, variations=3, seed=0, class_label=0)
    codes = world["tok"].encode(image[None])[0]
    assert torch.equal(result["codes"][:, :4], codes[:4].expand(3, -1, -1))
    assert result["completions"].shape == (3, 3, 16, 16)
    with pytest.raises(ValueError, match="keep_rows"):
        complete_codes(prior, spec, grid, keep_rows=8)
    with pytest.raises(ValueError, match="expected one image"):
        complete_image(prior, spec, world["tok"], torch.rand(3, 32, 32), keep_rows=2)


def test_sample_cli_writes_images_npz_and_settings(world: dict, tmp_path: Path) -> None:
    args = ["--prior", str(world["run"] / "prior"), "--tokenizer", str(world["tok_dir"]), "--num", "5",
            "--batch-size", "2", "--seed", "11", "--class", "1", "--top-k", "10"]
    sample_cli.main([*args, "--out", str(tmp_path / "a")])
    sample_cli.main([*args, "--out", str(tmp_path / "b")])
    with np.load(tmp_path / "a" / "samples.npz") as a, np.load(tmp_path / "b" / "samples.npz") as b:
        assert a["images"].shape == (5, 16, 16, 3) and a["images"].dtype == np.uint8
        assert a["codes"].shape == (5, 8, 8)
        assert np.array_equal(a["images"], b["images"])             # same seed, same images
    assert len(list((tmp_path / "a" / "images").glob("*.png"))) == 5 and (tmp_path / "a" / "grid.png").is_file()
    meta = json.loads((tmp_path / "a" / "samples.json").read_text())
    assert meta["seed"] == 11 and meta["top_k"] == 10 and meta["class_label"] == 1
    from PIL import Image

    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(tmp_path / "face.png")
    sample_cli.main(["--prior", str(world["run"] / "prior"), "--tokenizer", str(world["tok_dir"]), "--num", "2",
                     "--class", "0", "--complete", str(tmp_path / "face.png"), "--keep-rows", "2",
                     "--out", str(tmp_path / "c")])
    assert json.loads((tmp_path / "c" / "samples.json").read_text())["keep_rows"] == 2
    assert (tmp_path / "c" / "input.png").is_file()


def test_unconditional_config_on_labelled_tokens_and_conditional_without_labels(world: dict, tmp_path: Path) -> None:
    manifest = Manifest.load(world["tokens"])
    manifest.num_classes = 0
    for info in manifest.splits.values():
        info.label_shards = []
    unlabelled = tmp_path / "tokens"
    shutil.copytree(world["tokens"], unlabelled)
    manifest.save(unlabelled)
    with pytest.raises(ConfigError, match="needs labels"):
        prior_train.main(["--config", TINY, f"output_dir={tmp_path / 'r'}", f"data.tokens={unlabelled}",
                          "model.class_conditional=true", *STAGE2_QUIET])


@pytest.mark.slow
def test_two_process_training_runs_and_exports(world: dict, tmp_path: Path) -> None:
    """DDP over two CPU processes (gloo): the global batch is split, metrics are reduced, one export is written."""
    import os
    import subprocess
    import sys

    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           str(ROOT / "stage2_prior" / "train.py"), "--config", TINY, f"output_dir={run}",
                           f"data.tokens={world['tokens']}", "train.max_steps=30", "train.eval_every=30",
                           "train.sample_every=30", "train.gradient_accumulation_steps=2", *STAGE2_QUIET],
                          env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 processes; micro-batch 8" in done.stderr
    val = read_metrics(run, "val")
    assert len(val) == 1 and val[0]["step"] == 30 and val[0]["nll_bits_per_token"] < np.log2(32)
    prior, spec = load_prior(run / "prior", tokenizer=world["tok"])
    assert generate_codes(prior, spec, 2, seed=0).shape == (2, 8, 8)


def test_saved_generation_settings_do_not_leak_into_sampling(world: dict) -> None:
    prior, spec = load_prior(world["run"] / "prior")
    plain = generate_codes(prior, spec, 3, temperature=0, class_label=0)
    prior.generation_config.repetition_penalty = 50.0   # as if saved with the model
    prior.generation_config.no_repeat_ngram_size = 1
    assert torch.equal(generate_codes(prior, spec, 3, temperature=0, class_label=0), plain)
    assert prior.generation_config.repetition_penalty == 50.0   # restored after the call


@pytest.mark.parametrize("use_cache", [True, False])
def test_guided_sequences_match_a_step_by_step_reference(world: dict, use_cache: bool) -> None:
    """Whole greedy guided sequences with a prefix, against a plain loop over full forward passes."""
    prior, spec = load_prior(world["run"] / "prior")
    s, label = 2.0, 2
    prefix = torch.tensor([[3, 3, 3, 3, 3]])
    out = generate_codes(prior, spec, 2, temperature=0, class_label=label, cfg_scale=s, prefix=prefix,
                         use_cache=use_cache).reshape(2, -1)
    cond = torch.cat([torch.tensor([[spec.class_token(label)]]), prefix], dim=1)
    uncond = torch.cat([torch.tensor([[spec.bos_id]]), prefix], dim=1)
    with torch.no_grad():
        while cond.shape[1] < spec.seq_len + 1:
            lc = torch.log_softmax(prior(input_ids=cond).logits[:, -1].float(), -1)[:, :32]
            lu = torch.log_softmax(prior(input_ids=uncond).logits[:, -1].float(), -1)[:, :32]
            nxt = (lu + s * (lc - lu)).argmax(-1, keepdim=True)
            cond, uncond = torch.cat([cond, nxt], 1), torch.cat([uncond, nxt], 1)
    assert torch.equal(out, cond[:, 1:].expand(2, -1))


def test_a_one_dimensional_prefix_is_one_prefix(world: dict) -> None:
    prior, spec = load_prior(world["run"] / "prior")
    prefix = torch.arange(8) % 32
    out = generate_codes(prior, spec, 3, prefix=prefix, seed=0).reshape(3, -1)
    assert torch.equal(out[:, :8], prefix.expand(3, -1))


def test_resume_refuses_another_token_set_or_ema_setting(world: dict, tmp_path: Path) -> None:
    run = tmp_path / "r"
    common = ["--config", TINY, f"output_dir={run}", "train.max_steps=4", "train.checkpoint_every=2",
              "train.eval_every=1000", "train.sample_every=1000", *STAGE2_QUIET]
    prior_train.main([*common, f"data.tokens={world['tokens']}"])
    other = make_token_set(tmp_path / "other", TokenizerFingerprint.of(world["tok"], 16, "x"), n_train=256)
    with pytest.raises(ConfigError, match="another token set"):
        prior_train.main([*common, f"data.tokens={other}", "train.max_steps=6", "resume=latest"])
    with pytest.raises(ConfigError, match="train.ema_decay"):
        prior_train.main([*common, f"data.tokens={world['tokens']}", "train.ema_decay=0.9", "resume=latest"])


def test_init_from_fine_tunes_an_exported_prior_and_refuses_another_layout(world: dict, tmp_path: Path) -> None:
    common = ["--config", TINY, f"data.tokens={world['tokens']}", "model.class_conditional=true",
              "train.eval_every=1000", "train.sample_every=1000", "train.log_every=1", *STAGE2_QUIET]
    source = world["run"] / "prior"
    # with a vanishing learning rate the fine-tuned export is the source prior, and its first loss is already low
    tuned, fresh = tmp_path / "tuned", tmp_path / "fresh"
    prior_train.main([*common, f"output_dir={tuned}", f"init_from={source}", "train.max_steps=2", "train.lr=1e-9"])
    prior_train.main([*common, f"output_dir={fresh}", "train.max_steps=2", "train.lr=1e-9"])
    a, _ = load_prior(source)
    b, spec = load_prior(tuned / "prior", tokenizer=world["tok"])
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name
    first = {run: read_metrics(run, "train")[0]["bits_per_token"] for run in (tuned, fresh)}
    assert first[tuned] < 0.6 * first[fresh]
    # another vocabulary (unconditional: no class tokens) or another width is refused, naming what differs
    with pytest.raises(CheckpointError, match="vocab_size: 36 .source. vs 33"):
        prior_train.main(["--config", TINY, f"data.tokens={world['tokens']}", f"output_dir={tmp_path / 'u'}",
                          f"init_from={source}", "train.max_steps=1", *STAGE2_QUIET])
    with pytest.raises(CheckpointError, match="n_embd"):
        prior_train.main([*common, f"output_dir={tmp_path / 's'}", f"init_from={source}", "model.size=small",
                          "train.max_steps=1"])
    with pytest.raises(CheckpointError, match="not an EdVAE prior"):
        prior_train.main([*common, f"output_dir={tmp_path / 't'}", f"init_from={world['tok_dir']}",
                          "train.max_steps=1"])
