"""`python -m stage2_prior.sample` at scale: shards streamed to disk, resume after a kill, the same images from one
process and from two (`accelerate launch`), a manifest, bad input, and the FID reading the folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edvae_common.cli import run_cli
from stage2_prior import fid
from stage2_prior import sample as sample_cli
from stage2_prior.pipeline import Pipeline
from tests.pipeline_helpers import make_pair

ROOT = Path(__file__).resolve().parents[1]
# 7 images in shards of 3 (3 + 3 + 1), batch 2: uneven shards and batches
SMALL = ["--num", "7", "--shard-size", "3", "--batch-size", "2", "--seed", "5", "--device", "cpu"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    return make_pair(tmp_path_factory.mktemp("pair"))


@pytest.fixture(scope="module")
def reference(pair, tmp_path_factory) -> Path:
    """One uninterrupted single-process run of SMALL."""
    out = tmp_path_factory.mktemp("ref") / "samples"
    sample_cli.main(["--tokenizer", str(pair[0]), "--prior", str(pair[1]), *SMALL, "--out", str(out)])
    return out


def args_for(pair: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    return ["--tokenizer", str(pair[0]), "--prior", str(pair[1]), *SMALL, "--out", str(out), *extra]


def load_npz(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(folder / "samples.npz") as archive:
        return archive["images"], archive["codes"]


def png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def mtimes(folder: Path, names: list[str]) -> dict[str, int]:
    return {n: (folder / n).stat().st_mtime_ns for n in names}


def test_stream_writes_shards_pngs_npz_and_a_manifest(pair, reference: Path) -> None:
    meta = json.loads((reference / "samples.json").read_text())
    assert meta["format"] == "edvae-samples" and meta["num"] == 7 and meta["shard_size"] == 3
    assert [s["count"] for s in meta["shards"]] == [3, 3, 1] and meta["processes"] == 1
    assert meta["seed"] == 5 and [s["seed"] for s in meta["shards"]] == [sample_cli.shard_seed(5, i) for i in range(3)]
    assert meta["shards"][0]["seed"] == 5 and len({s["seed"] for s in meta["shards"]}) == 3
    assert meta["temperature"] == 1.0 and meta["top_k"] is None and meta["use_cache"] is True
    images, codes = load_npz(reference)
    assert images.shape == (7, 32, 32, 3) and images.dtype == np.uint8 and codes.shape == (7, 8, 8)
    shards = [np.load(reference / s["images"]) for s in meta["shards"]]
    code_shards = [np.load(reference / s["codes"]) for s in meta["shards"]]
    assert all(s.dtype == np.uint8 for s in shards) and code_shards[0].dtype == np.uint16
    assert np.array_equal(np.concatenate(shards), images) and np.array_equal(np.concatenate(code_shards), codes)
    pngs = sorted((reference / "images").glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:05d}.png" for i in range(7)]
    assert all(np.array_equal(png(p), images[i]) for i, p in enumerate(pngs))
    assert (reference / "grid.png").is_file() and (reference / "sampling_run.json").is_file()
    # each shard is what the pipeline gives for the shard's seed: shard 0 is the plain seed's images
    pipe = Pipeline.from_pretrained(*pair, device="cpu")
    for s in meta["shards"]:
        alone = pipe.generate(s["count"], seed=s["seed"], batch_size=2)
        assert np.array_equal(alone.uint8(), images[s["first"]:s["first"] + s["count"]])
        assert torch.equal(alone.codes, torch.from_numpy(codes[s["first"]:s["first"] + s["count"]]))


def test_fid_reads_the_streamed_folder_and_its_npz(reference: Path, tmp_path: Path) -> None:
    from tests.stage2_helpers import save_standin_extractor

    weights = save_standin_extractor(tmp_path / "standin.pt", features=16)
    images, _ = load_npz(reference)
    np.savez(tmp_path / "real.npz", images=np.flip(images, axis=1).copy())
    common = ["--real", str(tmp_path / "real.npz"), "--weights", str(weights), "--cache-dir", ""]
    folder = fid.main([*common, "--fake", str(reference)])
    npz = fid.main([*common, "--fake", str(reference / "samples.npz")])
    assert folder["n_fake"] == npz["n_fake"] == 7 and folder["fid"] == pytest.approx(npz["fid"], rel=1e-9)
    assert folder["fake"]["sampling"]["seed"] == 5 and folder["fake"]["sampling"]["format"] == "edvae-samples"
    assert folder["fake"]["path"].endswith("images")                  # the PNGs, not grid.png or the shards
    result = subprocess.run([sys.executable, "-m", "stage2_prior.fid", *common, "--fake", str(reference)], cwd=ROOT,
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert result.returncode == 0 and f"FID {folder['fid']:.3f}" in result.stdout, result.stderr[-2000:]


def test_resume_after_a_kill_keeps_finished_shards_and_gives_the_same_images(pair, reference: Path, tmp_path: Path,
                                                                              monkeypatch) -> None:
    out = tmp_path / "killed"
    real_shard = sample_cli.sample_shard
    calls = []

    def dies_on_the_third_shard(pipe, count, seed, record, progress=None):
        calls.append(seed)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real_shard(pipe, count, seed, record, progress)

    monkeypatch.setattr(sample_cli, "sample_shard", dies_on_the_third_shard)
    with pytest.raises(KeyboardInterrupt):
        sample_cli.main(args_for(pair, out))
    monkeypatch.setattr(sample_cli, "sample_shard", real_shard)
    assert not (out / "samples.json").exists() and not (out / "samples.npz").exists()   # unfinished
    kept = [f"shards/{k}_0000{i}.npy" for k in ("images", "codes") for i in (0, 1)] + \
           [f"images/{i:05d}.png" for i in range(6)]
    before = mtimes(out, kept)

    sample_cli.main(args_for(pair, out))                              # the rerun resumes
    meta = json.loads((out / "samples.json").read_text())
    assert meta["shards_kept"] == 2 and meta["shards_made"] == 1
    assert mtimes(out, kept) == before                                 # finished shards untouched
    for a, b in zip(load_npz(out), load_npz(reference)):
        assert np.array_equal(a, b)

    # a truncated last shard and a lost PNG of the second: both are made again, the first stays as it is
    first = ["shards/images_00000.npy", "shards/codes_00000.npy", "images/00000.png"]
    before = mtimes(out, first)
    with open(out / "shards" / "images_00002.npy", "r+b") as f:
        f.truncate(100)
    (out / "images" / "00004.png").unlink()
    (out / "samples.json").unlink()
    sample_cli.main(args_for(pair, out))
    meta = json.loads((out / "samples.json").read_text())
    assert meta["shards_kept"] == 1 and meta["shards_made"] == 2 and mtimes(out, first) == before
    for a, b in zip(load_npz(out), load_npz(reference)):
        assert np.array_equal(a, b)
    assert not [p for p in out.rglob("*.tmp")]                         # no temporary files left behind


def test_a_rerun_must_match_the_settings_and_seed_minus_one_resumes_the_recorded_seed(pair, tmp_path: Path) -> None:
    out = tmp_path / "run"
    fast = ["--num", "2", "--shard-size", "1", "--batch-size", "1", "--device", "cpu"]
    base = ["--tokenizer", str(pair[0]), "--prior", str(pair[1]), *fast, "--out", str(out)]
    sample_cli.main([*base, "--seed", "-1", "--temperature", "0.9"])
    seed = json.loads((out / "samples.json").read_text())["seed"]
    with pytest.raises(ValueError, match=r"other settings \(temperature: 0.9 -> 0.5\).*--overwrite"):
        sample_cli.main([*base, "--seed", str(seed), "--temperature", "0.5"])
    with pytest.raises(ValueError, match=f"seed: {seed} -> {seed + 1}"):
        sample_cli.main([*base, "--seed", str(seed + 1), "--temperature", "0.9"])
    images, _ = load_npz(out)
    sample_cli.main([*base, "--seed", "-1", "--temperature", "0.9"])         # -1 resumes with the recorded seed
    meta = json.loads((out / "samples.json").read_text())
    assert meta["seed"] == seed and meta["shards_kept"] == 2 and np.array_equal(load_npz(out)[0], images)
    sample_cli.main([*base, "--seed", "3", "--temperature", "0.5", "--overwrite", "--no-npz", "--grid", "0"])
    meta = json.loads((out / "samples.json").read_text())
    assert meta["seed"] == 3 and meta["temperature"] == 0.5 and meta["shards_made"] == 2
    assert not (out / "samples.npz").exists() and not (out / "grid.png").exists()
    assert meta["files"]["npz"] is None and len(list((out / "images").glob("*.png"))) == 2
    # the FID still reads the folder (its images/)
    assert fid.load_images(out).shape == (2, 32, 32, 3)


@pytest.mark.parametrize("extra,message", [
    (["--num", "0"], "--num must be a positive integer"),
    (["--shard-size", "0"], "--shard-size must be positive"),
    (["--batch-size", "0"], "num and batch_size must be positive"),
    (["--top-p", "0"], "0 < top_p <= 1"),
    (["--class", "1"], "unconditional: drop the class"),
    (["--cfg-scale", "2"], "guidance needs a class label"),
])
def test_bad_input_is_refused_with_a_message_before_anything_is_written(pair, tmp_path: Path, extra, message) -> None:
    out = tmp_path / "bad"
    with pytest.raises(SystemExit) as err:
        run_cli(lambda: sample_cli.main(args_for(pair, out, *extra)))
    assert message in str(err.value) and str(err.value).startswith("error: ")
    assert not out.exists()


def test_out_that_is_a_file_is_refused(pair, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit, match="is a file"):
        run_cli(lambda: sample_cli.main(args_for(pair, tmp_path / "file")))


def test_npz_written_in_chunks_reads_back_like_savez_compressed(tmp_path: Path) -> None:
    a = np.arange(5 * 4 * 3, dtype=np.uint8).reshape(5, 4, 3)
    b = np.arange(5, dtype=np.int64) * 7
    sample_cli.write_npz_streaming(tmp_path / "x.npz", {"a": (a.shape, a.dtype, [a[:2], a[2:]]),
                                                        "b": (b.shape, b.dtype, [b[:4], b[4:]])})
    with np.load(tmp_path / "x.npz") as archive:
        assert np.array_equal(archive["a"], a) and np.array_equal(archive["b"], b)
    with pytest.raises(ValueError, match="4 rows written, 5 announced"):
        sample_cli.write_npz_streaming(tmp_path / "y.npz", {"a": (a.shape, a.dtype, [a[:4]])})
    assert not (tmp_path / "y.npz").exists() and not list(tmp_path.glob("*.tmp"))


@pytest.mark.slow
def test_two_processes_make_the_same_images_as_one(pair, reference: Path, tmp_path: Path) -> None:
    """`accelerate launch --num_processes 2` on CPU (gloo): shards 0, 2 on process 0, shard 1 on process 1."""
    out = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "stage2_prior.sample",
           *args_for(pair, out)]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    meta = json.loads((out / "samples.json").read_text())
    assert meta["processes"] == 2 and meta["shards_made"] == 2     # the main process's two shards (0 and 2)
    for a, b in zip(load_npz(out), load_npz(reference)):
        assert np.array_equal(a, b)
    for i in range(7):
        assert np.array_equal(png(out / "images" / f"{i:05d}.png"), png(reference / "images" / f"{i:05d}.png"))
