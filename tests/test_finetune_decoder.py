"""Decoder fine-tuning on argmax codes: only the decoder changes, the tokens stay exactly the same."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys

import pytest
import torch

from edvae_common.config import ConfigError
from stage1_tokenizer import EdVAE
from stage1_tokenizer import finetune_decoder
from stage1_tokenizer import train as train_script
from stage1_tokenizer.config import DataConfig
from stage1_tokenizer.data import build_dataset
from tests.conftest import ROOT, train_args


@pytest.fixture
def trained(synthetic_npz, tmp_path):
    run = tmp_path / "run"
    train_script.main(train_args(run, synthetic_npz, "train.max_steps=3", "train.batch_size=16", "data.hflip=true"))
    return run


def test_only_the_decoder_changes_and_argmax_reconstructions_improve(trained, synthetic_npz, tmp_path):
    out = tmp_path / "ft"
    export = finetune_decoder.main(["--tokenizer", str(trained), "--out", str(out), "--steps", "30",
                                    "--batch-size", "16", "--lr", "2e-3", "--warmup", "2", "--eval-every", "30",
                                    "--checkpoint-every", "10"])
    before, after = EdVAE.from_pretrained(trained / "tokenizer"), EdVAE.from_pretrained(export)
    b, a = before.state_dict(), after.state_dict()
    assert b.keys() == a.keys()
    for name in b:
        if name.startswith("decoder."):
            continue
        assert torch.equal(b[name], a[name]), f"{name} changed: only the decoder may be trained"
    assert any(not torch.equal(b[n], a[n]) for n in b if n.startswith("decoder.")), "the decoder did not change"

    # the tokens of every image are the same; their reconstructions are closer to the images
    images = torch.stack(list(build_dataset(DataConfig(dataset="auto", path=str(synthetic_npz)), "test")))
    before.eval(), after.eval()
    assert torch.equal(before.encode(images), after.encode(images))
    mse_before = (before.reconstruct(images) - images).pow(2).mean()
    mse_after = (after.reconstruct(images) - images).pow(2).mean()
    assert mse_after < 0.95 * mse_before, (mse_before, mse_after)

    # the log has the starting point and the end, measured the same way; the export says how it was made
    tests = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["split"] == "test"]
    assert [r["step"] for r in tests] == [0, 30] and tests[1]["mse"] < tests[0]["mse"]
    assert tests[0]["codes_used"] == tests[1]["codes_used"]
    record = json.loads((export / finetune_decoder.RECORD_FILE).read_text())
    assert record["steps"] == 30 and "decoder only" in record["trained"]
    assert json.loads((export / "training_data.json").read_text())["hflip"] is True


def test_a_killed_run_resumes_where_it_stopped(trained, tmp_path, caplog):
    out = tmp_path / "ft"
    args = ["--tokenizer", str(trained), "--out", str(out), "--steps", "8", "--batch-size", "16", "--warmup", "2",
            "--eval-every", "100", "--checkpoint-every", "4"]
    straight = {k: v.clone() for k, v in EdVAE.from_pretrained(finetune_decoder.main(args)).state_dict().items()}
    # as if killed between steps 4 and 8: only the step-4 checkpoint survives
    shutil.rmtree(out / "checkpoints" / "step_00000008")
    shutil.rmtree(out / "tokenizer")
    with caplog.at_level(logging.INFO, logger="stage1.finetune_decoder"):
        resumed = EdVAE.from_pretrained(finetune_decoder.main(args + ["--resume", "latest"])).state_dict()
    assert "step_00000004 at step 4" in caplog.text  # it continued, not started over
    for name in straight:
        assert torch.allclose(straight[name], resumed[name], atol=1e-6), name


def test_a_run_folder_of_either_script_names_its_tokenizer_export(tmp_path):
    export = tmp_path / "run_decoder" / "tokenizer"          # finetune_decoder's run folder has no config.yaml
    export.mkdir(parents=True)
    (export / "training_data.json").write_text("{}")
    assert finetune_decoder.tokenizer_folder(tmp_path / "run_decoder") == export
    assert finetune_decoder.tokenizer_folder(export) == export
    with pytest.raises(ConfigError, match="nor has"):
        finetune_decoder.tokenizer_folder(tmp_path)


def test_bad_input_says_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="training_data.json"):
        finetune_decoder.main(["--tokenizer", str(tmp_path), "--out", str(tmp_path / "o")])
    with pytest.raises(ConfigError, match="--steps must be positive"):
        finetune_decoder.main(["--tokenizer", str(tmp_path), "--out", str(tmp_path / "o"), "--steps", "0"])


def test_a_wider_decoder_is_trained_fresh_behind_the_same_tokens(trained, synthetic_npz, tmp_path):
    out = tmp_path / "wide"
    export = finetune_decoder.main(["--tokenizer", str(trained), "--out", str(out), "--steps", "4",
                                    "--batch-size", "16", "--decoder-channels", "24", "--eval-every", "4"])
    before, after = EdVAE.from_pretrained(trained / "tokenizer"), EdVAE.from_pretrained(export)
    assert before.config.decoder_width == 16 and before.config.decoder_channels is None
    assert after.config.decoder_channels == 24 and after.config.channels == 16  # only the decoder widened
    b, a = before.state_dict(), after.state_dict()
    for name in b:
        if not name.startswith("decoder."):
            assert torch.equal(b[name], a[name]), name
    assert a["decoder.blocks.output.conv.weight"].shape == (3, 24, 1, 1)
    images = torch.stack(list(build_dataset(DataConfig(dataset="auto", path=str(synthetic_npz)), "test")))
    assert torch.equal(before.eval().encode(images), after.eval().encode(images))
    assert after.reconstruct(images).shape == images.shape
    assert json.loads((export / finetune_decoder.RECORD_FILE).read_text())["decoder_channels"] == 24


def test_adversarial_fine_tuning_trains_a_discriminator_and_resumes_exactly(trained, synthetic_npz, tmp_path):
    out = tmp_path / "gan"
    args = ["--tokenizer", str(trained), "--out", str(out), "--steps", "6", "--batch-size", "16", "--warmup", "1",
            "--adversarial-weight", "0.5", "--adversarial-start", "2", "--eval-every", "100", "--checkpoint-every", "3",
            "--log-every", "1"]
    straight = {k: v.clone() for k, v in EdVAE.from_pretrained(finetune_decoder.main(args)).state_dict().items()}
    train = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["split"] == "train"]
    # the adversarial terms are logged from --adversarial-start on, not before
    assert ["g_loss" in r for r in train] == [False, False, True, True, True, True]
    assert all(r["adaptive_weight"] > 0 and r["d_loss"] >= 0 for r in train[2:])
    record = json.loads((out / "tokenizer" / finetune_decoder.RECORD_FILE).read_text())
    assert record["adversarial_weight"] == 0.5 and "adversarial" in record["trained"]
    # the discriminator and its optimizer are part of the checkpoint: a resumed run ends where a straight one does
    shutil.rmtree(out / "checkpoints" / "step_00000006")
    shutil.rmtree(out / "tokenizer")
    resumed = EdVAE.from_pretrained(finetune_decoder.main(args + ["--resume", "latest"])).state_dict()
    for name in straight:
        assert torch.allclose(straight[name], resumed[name], atol=1e-6), name
    # resuming with other networks is refused with what changed, before anything is loaded or written
    with pytest.raises(ConfigError, match="cannot resume.*adversarial: True -> False"):
        finetune_decoder.main([a for a in args if a not in ("--adversarial-weight", "0.5")] + ["--resume", "latest"])
    # the frozen parts did not move
    before = EdVAE.from_pretrained(trained / "tokenizer").state_dict()
    assert all(torch.equal(before[n], resumed[n]) for n in before if not n.startswith("decoder."))


def test_adversarial_fine_tuning_differs_from_mse_only(trained, tmp_path):
    common = ["--tokenizer", str(trained), "--steps", "4", "--batch-size", "16", "--warmup", "1", "--eval-every", "100"]
    plain = EdVAE.from_pretrained(finetune_decoder.main(common + ["--out", str(tmp_path / "a")])).state_dict()
    gan = EdVAE.from_pretrained(finetune_decoder.main(common + ["--out", str(tmp_path / "b"),
                                                                "--adversarial-weight", "1.0"])).state_dict()
    assert any(not torch.allclose(plain[n], gan[n]) for n in plain if n.startswith("decoder."))


@pytest.mark.slow
def test_two_process_adversarial_fine_tuning_through_accelerate(trained, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
           "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "stage1_tokenizer.finetune_decoder",
           "--tokenizer", str(trained), "--out", str(out), "--steps", "3", "--batch-size", "16", "--warmup", "1",
           "--adversarial-weight", "0.5", "--decoder-channels", "24", "--eval-every", "100", "--log-every", "1"]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    train = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3] and all("d_loss" in r for r in train)
    assert EdVAE.from_pretrained(out / "tokenizer").config.decoder_channels == 24


def test_bad_options_say_what_is_wrong(tmp_path):
    base = ["--tokenizer", str(tmp_path), "--out", str(tmp_path / "o")]
    with pytest.raises(ConfigError, match="--decoder-channels must be a positive multiple of 4"):
        finetune_decoder.main(base + ["--decoder-channels", "6"])
    with pytest.raises(ConfigError, match="--adversarial-weight"):
        finetune_decoder.main(base + ["--adversarial-weight", "-1"])


def test_the_decoders_adversarial_term_leaves_the_discriminator_without_gradients():
    from stage1_tokenizer.discriminator import PatchDiscriminator, frozen_logits, generator_loss

    torch.manual_seed(0)
    disc = PatchDiscriminator(3, 8).eval()  # eval: spectral norm's power iteration holds still between the calls
    fake = (torch.rand(2, 3, 32, 32) - 0.5).requires_grad_(True)
    plain = fake.detach().clone().requires_grad_(True)
    # the reference: a plain forward; its backward fills the discriminator's gradients too
    generator_loss(disc(plain)).backward()
    assert all(p.grad is not None for p in disc.parameters())
    disc.zero_grad(set_to_none=True)
    # the frozen forward: the same gradient for the images, none for the discriminator, flags restored
    generator_loss(frozen_logits(disc, fake)).backward()
    assert torch.allclose(fake.grad, plain.grad, rtol=1e-5, atol=1e-9)
    assert all(p.grad is None and p.requires_grad for p in disc.parameters())
