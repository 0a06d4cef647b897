"""EdVAE.analyze (reconstruction, codes, uncertainty in one pass), evaluation on it, the uncertainty reference."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, Dataset

from stage1_tokenizer import EdVAE
from stage1_tokenizer import (UNCERTAINTY_REFERENCE_FILE, evaluate_tokenizer, mean_uncertainty_quantiles,
                              per_image_mean_uncertainty, per_image_scores, percentile_of, read_uncertainty_reference,
                              write_uncertainty_reference)


class Images(Dataset):
    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


def small(quantizer: str = "edvae", seed: int = 0) -> EdVAE:
    torch.manual_seed(seed)
    return EdVAE(quantizer=quantizer, channels=8, channel_mults=[1, 2], blocks_per_group=1, codebook_size=16,
                 codebook_dim=4).eval()


def test_analyze_is_encode_decode_and_the_quantizers_uncertainty():
    model = small()
    images = torch.rand(3, 3, 16, 16)
    out = model.analyze(images)
    assert torch.equal(out.codes, model.encode(images))
    assert torch.equal(out.reconstruction, model.reconstruct(images))            # bit for bit
    assert out.reconstruction.min() >= 0 and out.reconstruction.max() <= 1
    # u = K / S with S = sum_k (exp(min(logit, clamp)) + 1), by hand from the encoder's logits
    with torch.no_grad():
        logits = model.encoder(images - 0.5).float()
    strength = (torch.exp(logits.clamp(max=model.config.clamp_max)) + 1).sum(1)
    assert out.uncertainty.shape == (3, 8, 8)
    assert torch.allclose(out.uncertainty, 16 / strength, rtol=1e-6)
    assert ((out.uncertainty > 0) & (out.uncertainty <= 1)).all()
    # the per-image MSE is the training forward's (unclamped decoder output), image by image
    with torch.no_grad():
        forward = [model(images[i:i + 1]).mse for i in range(3)]
    assert torch.allclose(out.mse, torch.stack(forward), rtol=1e-5)


def test_analyze_keeps_the_mode_checks_inputs_and_has_no_uncertainty_without_evidence():
    model = small().train()
    model.analyze(torch.rand(1, 3, 16, 16))
    assert model.training                                                         # mode restored
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        model.analyze(torch.rand(1, 3, 16, 16) * 255)
    with pytest.raises(ValueError, match="multiple of the downsampling"):
        model.analyze(torch.rand(1, 3, 15, 16))
    dvae = small("dvae")
    out = dvae.analyze(torch.rand(2, 3, 16, 16))
    assert out.uncertainty is None and out.codes.shape == (2, 8, 8)
    with pytest.raises(ValueError, match="only the EdVAE quantizer"):
        per_image_mean_uncertainty(dvae, [torch.rand(2, 3, 16, 16)])


def test_evaluation_numbers_come_from_analyze():
    model = small()
    images = torch.rand(10, 3, 16, 16)
    result = evaluate_tokenizer(model, DataLoader(images, batch_size=4), Accelerator(cpu=True))
    out = model.analyze(images)
    assert result.metrics["mse"] == pytest.approx(float(out.mse.mean()), rel=1e-6)
    clipped = (out.reconstruction - images).pow(2).flatten(1).mean(1)      # the reconstruction is already clipped
    assert result.metrics["mse_clipped"] == pytest.approx(float(clipped.mean()), rel=1e-6)
    assert result.metrics["psnr"] == pytest.approx(float((-10 * clipped.log10()).mean()), rel=1e-5)
    assert result.metrics["psnr_of_mean_mse"] == pytest.approx(-10 * np.log10(float(clipped.mean())), rel=1e-6)
    assert result.metrics["mean_uncertainty"] == pytest.approx(float(out.uncertainty.mean()), rel=1e-5)
    assert result.metrics["codes_used"] == len(torch.unique(out.codes))
    assert torch.allclose(result.reconstructions, out.reconstruction[:4], atol=1e-6)  # the first batch (grid images)


def test_mean_uncertainty_quantiles_and_percentiles(tmp_path):
    model = small()
    images = torch.rand(40, 3, 16, 16)
    means = model.analyze(images).uncertainty.flatten(1).double().mean(1).numpy()
    q = mean_uncertainty_quantiles(model, Images(images), batch_size=7)  # a dataset of single images
    assert len(q) == 101 and all(b >= a for a, b in zip(q, q[1:]))
    assert np.allclose(q, np.percentile(means, np.arange(101)), rtol=1e-6)
    assert q[0] == pytest.approx(means.min()) and q[100] == pytest.approx(means.max())
    assert np.allclose(mean_uncertainty_quantiles(model, [images[:15], images[15:]]), q)  # or batches: the same
    assert percentile_of(q[50], q) == pytest.approx(50, abs=1)
    assert percentile_of(q[0] - 1, q) == 0 and percentile_of(q[100] + 1, q) == 100
    # the file the app reads, written and read back; bad ones are refused with the reason
    path = write_uncertainty_reference(tmp_path, q, "Measured: AUROC 0.9 faces vs CIFAR-10.", measured_in="x.json")
    assert path.name == UNCERTAINTY_REFERENCE_FILE
    ref = read_uncertainty_reference(tmp_path)
    assert ref["mean_uncertainty_quantiles"] == q and ref["measured_in"] == "x.json"
    assert read_uncertainty_reference(tmp_path / "none") is None
    for bad, match in (({"mean_uncertainty_quantiles": q[:50], "statement": "s"}, "101 numbers"),
                       ({"mean_uncertainty_quantiles": q[::-1], "statement": "s"}, "non-decreasing"),
                       ({"mean_uncertainty_quantiles": q, "statement": ""}, "non-empty")):
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=match):
            read_uncertainty_reference(tmp_path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_uncertainty_reference(tmp_path)


def test_psnr_is_on_the_clipped_reconstruction():
    """A decoder that overshoots [0, 1]: mse counts the overshoot (the release's number), mse_clipped and psnr not."""
    model = small()
    with torch.no_grad():  # push the decoder's output well outside [0, 1]
        model.decoder.blocks.output.conv.bias.fill_(2.0)
    images = torch.rand(6, 3, 16, 16)
    m = evaluate_tokenizer(model, DataLoader(images, batch_size=4), Accelerator(cpu=True)).metrics
    out = model.analyze(images)
    assert out.reconstruction.max() <= 1.0 and out.mse.mean() > 1.0
    assert m["mse"] == pytest.approx(float(out.mse.mean()), rel=1e-6)
    assert m["mse_clipped"] == pytest.approx(float((1.0 - images).pow(2).mean()), rel=1e-5)  # every value at 1
    assert m["mse_clipped"] < m["mse"] and m["psnr"] > 0


def test_per_image_scores_and_the_mean_uncertainty_are_one_computation():
    model = small()
    images = torch.rand(9, 3, 16, 16)
    scores = per_image_scores(model, [images[:5], images[5:]])
    out = model.analyze(images)
    assert np.allclose(scores["mean_uncertainty"], out.uncertainty.flatten(1).double().mean(1).numpy())
    assert np.allclose(scores["mse"], out.mse.double().numpy())
    assert np.allclose(scores["mse_clipped"], (out.reconstruction - images).pow(2).flatten(1).mean(1).numpy())
    assert np.array_equal(per_image_mean_uncertainty(model, Images(images), batch_size=4).numpy(),
                          per_image_scores(model, Images(images), batch_size=4)["mean_uncertainty"])
