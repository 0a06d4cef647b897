"""stage2_prior.pipeline: one object for generate / reconstruct / complete, its defaults, its input handling."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edvae_common.hub import CheckpointError
from stage1_tokenizer.data.preprocess import Preprocess
from stage1_tokenizer import write_uncertainty_reference
from stage2_prior import inputs
from stage2_prior import sample as sample_cli
from stage2_prior.inputs import ImageInputError, prepare_image, read_image
from stage2_prior.pipeline import DEFAULT_SAMPLING, Pipeline, read_sampling_defaults
from stage2_prior.generation import generate_codes
from tests.pipeline_helpers import (SHIPPED_PRIOR, SHIPPED_TOKENIZER, face_like, make_pair, shipped_pair_present,
                                    write_png)


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    return make_pair(tmp_path_factory.mktemp("pair"))


@pytest.fixture(scope="module")
def pipe(pair) -> Pipeline:
    return Pipeline.from_pretrained(*pair, device="cpu")


# ---------------------------------------------------------------------------- generate
def test_generate_shapes_seeds_and_progress(pipe: Pipeline):
    a = pipe.generate(3, seed=5, batch_size=2)
    assert a.images.shape == (3, 3, 32, 32) and a.codes.shape == (3, 8, 8) and a.seed == 5
    assert a.uint8().shape == (3, 32, 32, 3) and a.uint8().dtype == np.uint8
    assert torch.equal(a.images, pipe.generate(3, seed=5, batch_size=2).images)       # same seed, same images
    assert not torch.equal(a.codes, pipe.generate(3, seed=6, batch_size=2).codes)
    fresh = pipe.generate(2, seed=None)                                                 # a seed is drawn and told
    assert 0 <= fresh.seed < 2**31 and torch.equal(fresh.codes, pipe.generate(2, seed=fresh.seed).codes)
    assert pipe.generate(2, seed=-1).seed >= 0
    reports = []
    pipe.generate(3, seed=0, batch_size=2, progress=lambda done, total: reports.append((done, total)))
    assert reports[-1] == (192, 192) and all(t == 192 for _, t in reports)
    assert [d for d, _ in reports] == sorted(d for d, _ in reports)
    with pytest.raises(ValueError, match="positive integer"):
        pipe.generate(0)
    with pytest.raises(ValueError, match="guidance needs a class label"):
        pipe.generate(1, guidance=2.0)


def test_seeded_sampling_is_reproducible_while_other_threads_sample(pipe: Pipeline):
    expected = pipe.generate(2, seed=3).codes
    results, errors = [], []

    def worker(seed: int) -> None:
        try:
            results.append((seed, pipe.generate(2, seed=seed).codes))
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(3 if i % 2 else 100 + i,)) for i in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    assert all(torch.equal(codes, expected) for seed, codes in results if seed == 3)


def test_sampling_json_gives_the_defaults_and_flags_override_it(pair, tmp_path):
    tok_dir, prior_dir = pair
    assert read_sampling_defaults(prior_dir) == DEFAULT_SAMPLING                       # no file: today's defaults
    folder = tmp_path / "prior"
    folder.mkdir()
    for f in prior_dir.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "sampling.json").write_text(json.dumps({"temperature": 0.0, "top_k": 5, "note": "chosen by a sweep"}))
    pipe = Pipeline.from_pretrained(tok_dir, folder, device="cpu")
    assert pipe.sampling_defaults == {"temperature": 0.0, "top_k": 5, "top_p": 1.0, "guidance": 1.0,
                                      "note": "chosen by a sweep"}
    s = pipe.generate(2, seed=1)
    assert s.settings["temperature"] == 0.0 and s.settings["top_k"] == 5
    assert torch.equal(s.codes, generate_codes(pipe.prior, pipe.spec, 2, temperature=0, seed=1))   # greedy
    override = pipe.generate(2, seed=1, temperature=1.0, top_k=0)
    assert override.settings["temperature"] == 1.0 and override.settings["top_k"] is None
    assert torch.equal(override.codes, generate_codes(pipe.prior, pipe.spec, 2, temperature=1.0, seed=1))
    # the CLI takes the same defaults, and its flags win
    sample_cli.main(["--prior", str(folder), "--tokenizer", str(tok_dir), "--num", "2", "--out", str(tmp_path / "a")])
    meta = json.loads((tmp_path / "a" / "samples.json").read_text())
    assert meta["temperature"] == 0.0 and meta["top_k"] == 5 and meta["sampling_note"] == "chosen by a sweep"
    sample_cli.main(["--prior", str(folder), "--tokenizer", str(tok_dir), "--num", "2", "--top-k", "7",
                     "--temperature", "0.5", "--out", str(tmp_path / "b")])
    meta = json.loads((tmp_path / "b" / "samples.json").read_text())
    assert meta["temperature"] == 0.5 and meta["top_k"] == 7
    for bad, match in (({"temprature": 1.0}, "unknown keys temprature"), ({"top_p": 0}, "invalid top_p"),
                       ({"top_k": 2.5}, "invalid top_k"), ([1, 2], "JSON object")):
        (folder / "sampling.json").write_text(json.dumps(bad))
        with pytest.raises(CheckpointError, match=match):
            read_sampling_defaults(folder)


def test_class_conditional_pair_takes_labels_and_guidance(tmp_path):
    pipe = Pipeline.from_pretrained(*make_pair(tmp_path, num_classes=3), device="cpu")
    s = pipe.generate(2, seed=0, class_label=1, guidance=2.0)
    assert s.settings["class_label"] == 1 and s.settings["cfg_scale"] == 2.0
    assert torch.equal(s.codes, generate_codes(pipe.prior, pipe.spec, 2, seed=0, class_label=1, cfg_scale=2.0))
    assert pipe.generate(1, seed=0, class_label=-1).settings["class_label"] is None     # -1: unconditional
    with pytest.raises(ValueError, match="out of range"):
        pipe.generate(1, class_label=3)


# ---------------------------------------------------------------------------- reconstruct, complete
def test_reconstruct_reports_what_the_tokenizer_does(pipe: Pipeline, tmp_path):
    face = face_like(48)
    rec = pipe.reconstruct(face)
    x = pipe.prepare(face)
    out = pipe.tokenizer.analyze(x[None])
    assert rec.input.shape == rec.reconstruction.shape == (3, 32, 32)
    assert torch.equal(rec.reconstruction, out.reconstruction[0]) and torch.equal(rec.codes, out.codes[0])
    assert rec.uncertainty.shape == (8, 8) and rec.mean_uncertainty == pytest.approx(float(out.uncertainty.mean()))
    assert rec.mse == pytest.approx(float(out.mse[0])) and rec.psnr == pytest.approx(-10 * np.log10(rec.mse))
    assert rec.distinct_codes == len(torch.unique(out.codes))
    assert rec.percentile is None and rec.reference_statement is None                   # no reference file
    # a path, bytes or a PIL image of the same picture: the same result
    path = write_png(tmp_path / "face.png", face)
    for source in (path, str(path), path.read_bytes(), Image.open(path)):
        assert torch.equal(pipe.reconstruct(source).reconstruction, rec.reconstruction)


def test_reconstruct_places_the_uncertainty_among_the_training_images(pair, tmp_path):
    tok_dir, prior_dir = pair
    folder = tmp_path / "tok"
    folder.mkdir()
    for f in tok_dir.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    plain = Pipeline.from_pretrained(folder, prior_dir, device="cpu").reconstruct(face_like(32))
    u = plain.mean_uncertainty
    quantiles = list(np.linspace(u - 0.5, u + 0.5, 101))   # u sits at the 50th percentile
    write_uncertainty_reference(folder, quantiles, "Measured on 1,000 held-out faces: AUROC 0.90 against CIFAR-10.")
    rec = Pipeline.from_pretrained(folder, prior_dir, device="cpu").reconstruct(face_like(32))
    assert rec.percentile == pytest.approx(50.0, abs=1e-6) and rec.reference_statement.startswith("Measured on")
    # without a statement there is nothing honest to show beside the percentile
    (folder / "uncertainty_reference.json").write_text(json.dumps({"mean_uncertainty_quantiles": quantiles}))
    rec = Pipeline.from_pretrained(folder, prior_dir, device="cpu").reconstruct(face_like(32))
    assert rec.percentile is None and rec.mean_uncertainty == pytest.approx(u)


def test_complete_keeps_the_top_rows(pipe: Pipeline):
    face = face_like(32)
    done = pipe.complete(face, keep_rows=3, num=4, seed=2)
    codes = pipe.tokenizer.encode(pipe.prepare(face)[None])[0]
    assert done.completions.shape == (4, 3, 32, 32) and done.codes.shape == (4, 8, 8)
    assert torch.equal(done.codes[:, :3], codes[:3].expand(4, -1, -1))
    assert (done.kept[:, 12:] == 0.5).all() and done.seed == 2 and done.keep_rows == 3
    assert torch.equal(pipe.complete(face, keep_rows=3, num=4, seed=2).codes, done.codes)
    assert pipe.complete(face, num=1, seed=0).keep_rows == 4                            # default: half the rows
    with pytest.raises(ValueError, match=r"keep_rows must be an integer in \[0, 7\]"):
        pipe.complete(face, keep_rows=8)


# ---------------------------------------------------------------------------- preprocessing of uploads
def test_celeba_uploads_get_the_training_crop():
    rng = np.random.default_rng(0)
    full = rng.integers(0, 256, size=(218, 178, 3), dtype=np.uint8)                    # an aligned CelebA file
    assert torch.equal(prepare_image(full, "celeba", 64), Preprocess("celeba", 64)(Image.fromarray(full)))
    # half resolution (the developer sample's source): the same crop at that scale (70 of 89), then the resize
    half = np.asarray(Image.fromarray(full).resize((89, 109), Image.BILINEAR))
    top, left = round((109 - 70) / 2), round((89 - 70) / 2)
    expected = Preprocess("generic", 64)(Image.fromarray(half[top:top + 70, left:left + 70]))
    assert torch.equal(prepare_image(half, "celeba", 64), expected)
    ready = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)                     # already 64 x 64: as it is
    assert torch.equal(prepare_image(ready, "celeba", 64), torch.from_numpy(ready).permute(2, 0, 1).float() / 255)
    wide = rng.integers(0, 256, size=(60, 200, 3), dtype=np.uint8)
    assert prepare_image(wide, "lsun_church", 32).shape == (3, 32, 32)                 # squeezed, as the release
    assert torch.equal(prepare_image(wide, "generic", 32), Preprocess("generic", 32)(Image.fromarray(wide)))


def _png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


def test_odd_image_files_are_converted_sensibly():
    gray = Image.fromarray(np.full((20, 30), 100, np.uint8), "L")
    assert (read_image(_png_bytes(gray)) == 100).all()
    rgba = Image.new("RGBA", (20, 20), (255, 0, 0, 0))                                   # fully transparent red
    assert (read_image(_png_bytes(rgba)) == 255).all()                                    # -> white
    half = Image.new("RGBA", (20, 20), (0, 0, 0, 128))
    assert abs(int(read_image(_png_bytes(half))[0, 0, 0]) - 127) <= 1
    palette = Image.new("P", (20, 20), 3)
    palette.putpalette([0, 0, 0, 10, 20, 30, 40, 50, 60, 200, 100, 50] + [0] * 756)
    assert read_image(_png_bytes(palette))[0, 0].tolist() == [200, 100, 50]
    sixteen = Image.fromarray(np.full((20, 20), 65535 // 2, np.uint16))                  # 16-bit grayscale PNG
    data = _png_bytes(sixteen)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    assert abs(int(read_image(data)[0, 0, 0]) - 128) <= 1                                # scaled, not clipped to 255
    arr16 = np.full((20, 20, 3), 65535, np.uint16)
    assert (read_image(arr16) == 255).all()
    assert (read_image(np.zeros((20, 20, 4), np.uint8)) == 255).all()                 # transparent -> white
    gif = [Image.new("RGB", (20, 20), c) for c in ((10, 20, 30), (200, 200, 200))]
    buf = io.BytesIO()
    gif[0].save(buf, format="GIF", save_all=True, append_images=gif[1:])
    assert read_image(buf.getvalue()).shape == (20, 20, 3)                               # first frame


def test_unusable_images_are_refused_with_a_reason(tmp_path, monkeypatch):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty.png").write_bytes(b"")
    good = _png_bytes(Image.new("RGB", (64, 64), (1, 2, 3)))
    (tmp_path / "cut.png").write_bytes(good[: len(good) // 2])
    cases = [(tmp_path / "notes.txt", "not an image"), (tmp_path / "empty.png", "empty"),
             (tmp_path / "cut.png", "damaged or truncated|not an image"), (tmp_path / "missing.png", "no image file"),
             (_png_bytes(Image.new("RGB", (1, 1))), r"only 1 x 1 pixels"), (None, "no image given"),
             (np.zeros((5, 5, 2)), "shape"), (np.full((20, 20, 3), 2.0), r"\[0, 1\]")]
    for source, match in cases:
        with pytest.raises(ImageInputError, match=match):
            read_image(source)
    monkeypatch.setattr(inputs, "MAX_PIXELS", 100 * 100)
    with pytest.raises(ImageInputError, match="megapixels"):
        read_image(_png_bytes(Image.new("1", (101, 100))))


def test_a_10000_pixel_wide_image_is_scaled_down(pipe: Pipeline):
    big = Image.new("L", (10_000, 10_000), 90)
    data = _png_bytes(big, format="JPEG", quality=90)                                    # read at 1/8 size (draft)
    x = pipe.prepare(data)
    assert x.shape == (3, 32, 32) and (x - 90 / 255).abs().max() < 0.02


# ---------------------------------------------------------------------------- the shipped pair
@pytest.mark.skipif(not shipped_pair_present(), reason="the shipped face pair is not in checkpoints/celeba64 yet")
def test_shipped_face_pair_generates_and_reconstructs_faces():
    pipe = Pipeline.from_pretrained(SHIPPED_TOKENIZER, SHIPPED_PRIOR, device="cpu", preprocess="celeba")
    assert pipe.image_size == 64 and pipe.grid == (16, 16)
    assert pipe.generate(2, seed=0).images.shape == (2, 3, 64, 64)
    face = Path(__file__).resolve().parents[1] / "app" / "examples" / "face_1_000954.png"
    rec = pipe.reconstruct(face)
    assert rec.reconstruction.shape == (3, 64, 64) and rec.psnr > 15                     # a trained tokenizer
