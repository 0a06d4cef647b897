"""``python -m stage2_prior.build``: a folder of real images (and the LSUN-format LMDB fixture) to a generator in
the app, killed and rerun; its model card, its registry entry, the app serving it over HTTP; bad data refused
with a message before anything trains.

Two builds are shared by the module (the ``tiny`` preset, a few steps per stage). The FID stages use a small
TorchScript stand-in for the Inception (as tests/test_lsun_church.py does): the scipy square root of
Inception's 2048 x 2048 covariance alone takes about 40 s per FID on this 2-core machine; the stages and
their files are the same.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from edvae_common.config import ConfigError
from edvae_common.io import read_json
from edvae_common.runs import list_checkpoints
from tests.conftest import CIFAR_NPZ, ROOT

SECTIONS = ["What it is", "Data", "How it was trained (commands, configs, wall time)",
            "Metrics on the {n} held-out images", "What it is not", "Files"]


# ---------------------------------------------------------------------------------------------- helpers
def standin_features(path: Path) -> str:
    """A tiny TorchScript feature extractor in place of the Inception (75-d pooled pixels of the 299 x 299 input)."""
    class Features(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.avg_pool2d(x, 60).flatten(1)

    torch.jit.script(Features()).save(str(path))
    return str(path)


def write_images(folder: Path, images: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, array in enumerate(images):
        Image.fromarray(array).save(folder / f"{i:04d}.png")
    return folder


class Run:
    """One ``python -m stage2_prior.build`` in its own process group (so SIGKILL reaches its stages too)."""

    def __init__(self, args: list[str], log: Path, kill_when=None, timeout: float = 600):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT),
               "PYTHONUNBUFFERED": "1"}
        with open(log, "w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "stage2_prior.build", *args], cwd=ROOT, env=env,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            self.killed = False
            deadline = time.time() + timeout
            while proc.poll() is None and time.time() < deadline:
                if kill_when is not None and kill_when():
                    os.killpg(proc.pid, signal.SIGKILL)
                    self.killed = True
                    break
                time.sleep(0.05)
            if proc.poll() is None and not self.killed:
                os.killpg(proc.pid, signal.SIGKILL)
            self.returncode = proc.wait()
        self.output = log.read_text(errors="replace")


def build_args(data: str, name: str, out: Path, registry: Path, weights: str, *extra: str) -> list[str]:
    return ["--data", data, "--name", name, "--preset", "tiny", "--out", str(out), "--registry", str(registry),
            "--threads", "1", "--fid-weights", weights, *extra]


def plan_only(tmp_path: Path, data: str, *extra: str) -> None:
    from stage2_prior import build

    build.main(["--data", data, "--name", "x", "--preset", "tiny", "--out", str(tmp_path / "out"), "--registry", "",
                "--threads", "1", "--plan-only", *extra])


# ---------------------------------------------------------------------------------------------- the builds
@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A folder with the app registry the tests serve (no shipped models) and the user registry the builds write."""
    root = tmp_path_factory.mktemp("build")
    (root / "app.yaml").write_text(yaml.safe_dump({"default": "cifar", "examples": None, "models": {}}))
    standin_features(root / "features.pt")
    return root


@pytest.fixture(scope="module")
def cifar_build(home) -> dict:
    """A tiny build of a folder of real CIFAR-10 images, killed in the tokenizer stage, then in the prior stage,
    then run to its end; its folder holds a note and a damaged PNG, which are counted and skipped."""
    if not CIFAR_NPZ.is_file():
        pytest.skip(f"real CIFAR-10 images not present at {CIFAR_NPZ}")
    with np.load(CIFAR_NPZ) as f:
        folder = write_images(home / "cifar", f["images"][:120])
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = home / "out_cifar"
    args = build_args(f"folder:{folder}", "cifar", out, home / "models.local.yaml", str(home / "features.pt"),
                      "tokenizer.train.checkpoint_every=3", "prior.train.checkpoint_every=3")
    runs = [Run(args, home / "run1.log", kill_when=lambda: bool(list_checkpoints(out / "stage1"))),
            Run(args, home / "run2.log", kill_when=lambda: bool(list_checkpoints(out / "stage2")))]
    runs.append(Run(args, home / "run3.log"))
    assert runs[-1].returncode == 0, runs[-1].output[-3000:]
    return {"out": out, "args": args, "runs": runs, "folder": folder}


@pytest.fixture(scope="module")
def lsun_build(home, cifar_build) -> dict:
    """The tiny preset on an lsun_church: source: the LSUN-format LMDB fixture of tests/test_lsun_church.py."""
    pytest.importorskip("lmdb")
    from tests.test_lsun_church import write_lsun_fixture

    root = write_lsun_fixture(home / "lsun", n_train=36, n_val=8)
    out = home / "out_churches"
    args = build_args(f"lsun_church:{root}", "churches", out, home / "models.local.yaml", str(home / "features.pt"),
                      "decoder=off", "fid.num=8", "sweep.num=8")
    run = Run(args, home / "lsun.log")
    assert run.returncode == 0, run.output[-3000:]
    return {"out": out, "run": run}


# ---------------------------------------------------------------------------------------------- kill and rerun
def test_killed_in_the_tokenizer_and_the_prior_the_build_resumes_and_never_retrains(cifar_build):
    out, (first, second, third) = cifar_build["out"], cifar_build["runs"]
    assert first.killed and second.killed and third.returncode == 0
    assert "Plan (tiny" in first.output and re.search(r"tokenizer +30 steps of batch 32; about [\d.]+ (s|min) here", first.output)
    for stage in ("tokenizer", "decoder", "tokens"):
        assert f"[{stage}] complete, skipped" in third.output
    tokenizer_log = (out / "logs" / "tokenizer.log").read_text()
    prior_log = (out / "logs" / "prior.log").read_text()
    assert re.search(r"resumed from .*step_\d+ at step [1-9]", tokenizer_log)
    assert re.search(r"resumed from .*step_\d+ at step [1-9]", prior_log)
    ran = [c["stage"] for c in read_json(out / "commands.json")]
    assert ran.count("tokenizer") == 2 and ran.count("prior") == 2 and ran.count("decoder") == 1
    # the resumed runs ended where an uninterrupted one ends, with one line per step in their logs
    assert read_json(out / "stage1" / "metrics.json")["step"] == 30
    assert read_json(out / "stage2" / "prior" / "training.json")["steps"] == 30
    steps = [json.loads(line)["step"] for line in (out / "stage1" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line).get("split") == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 30


def test_a_finished_build_rerun_does_nothing_and_other_settings_are_refused(cifar_build, home, capsys):
    out = cifar_build["out"]
    times = read_json(out / "times.json")
    again = Run(cifar_build["args"], home / "again.log")
    assert again.returncode == 0 and "Nothing to do" in again.output and "[tokenizer]" not in again.output
    assert read_json(out / "times.json") == times
    from stage2_prior import build

    changed = [*cifar_build["args"], "prior.train.max_steps=90"]
    with pytest.raises(ConfigError, match=r"other settings \(stages\.prior\.train\.max_steps: 30 -> 90\).*"
                                          r"--restart-from prior"):
        build.main(changed)
    elsewhere = write_images(home / "other", np.asarray(Image.open(cifar_build["folder"] / "0000.png"))[None].repeat(40, 0))
    other = [a if not a.startswith("folder:") else f"folder:{elsewhere}" for a in cifar_build["args"]]
    with pytest.raises(ConfigError, match=r"source: 'folder:.*' -> .*--restart-from tokenizer"):
        build.main(other)                                                     # the name is taken by other data


# ---------------------------------------------------------------------------------------------- the model card
def card_sections(text: str) -> list[str]:
    return re.findall(r"^## (.+)$", text, flags=re.M)


def test_model_card_has_the_shipped_cards_sections_and_the_metrics_files_numbers(cifar_build):
    out = cifar_build["out"]
    text = (out / "README.md").read_text()
    ev = read_json(out / "metrics" / "tokenizer_test.json")
    fid, sweep = read_json(out / "metrics" / "fid.json"), read_json(out / "sweep" / "sweep.json")
    nll = read_json(out / "stage2" / "metrics.json")
    assert card_sections(text) == [s.format(n=ev["n_images"]) for s in SECTIONS]
    shipped = card_sections((ROOT / "checkpoints" / "celeba64" / "README.md").read_text())
    assert {s.split(" on the")[0] for s in card_sections(text)} <= {s.split(" on the")[0] for s in shipped}
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["license"] and meta["datasets"] == ["cifar"] and {"psnr", "fid"} <= set(meta["metrics"])
    assert meta["pipeline_tag"] == "unconditional-image-generation" and "edvae" in meta["tags"]
    row = re.search(r"^\| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| (\d+) \| ([\d.]+) \|$", text, flags=re.M)
    assert row.groups() == (f"{ev['mse']:.5f}", f"{ev['psnr']:.2f}", f"{ev['perplexity_split']:.1f}",
                            f"{ev['perplexity_batch']:.1f}", str(ev["codes_used"]), f"{ev['mean_uncertainty']:.4f}")
    assert f"FID **{fid['fid']:.2f}**" in text and f"rFID on them: {sweep['rfid']:.2f}" in text
    assert f"{nll['nll_bits_per_token']:.3f} bits per token" in text
    if "kid" in fid:
        assert f"KID {fid['kid']:.4f}" in text
    assert "![samples](samples/grid.png)" in text and (out / "samples" / "grid.png").is_file()
    assert (out / "metrics" / "tokenizer_test_recon.png").is_file()
    # every command that ran is in the card, the data notes too (the note and the damaged file were skipped)
    for c in read_json(out / "commands.json"):
        assert c["command"] in text
    assert "1 of 122 files are not images and are skipped (notes.txt)" in text
    assert "1 image file(s) could not be read and are skipped (broken.png)" in text
    listed = {m.group(1): int(m.group(2).replace(",", "")) for m in re.finditer(r"^\| `([^`]+)` \| ([\d,]+) \|$", text,
                                                                                   flags=re.M)}
    present = {f"{part}/{p.relative_to((out / part).resolve())}": p.stat().st_size
               for part in ("tokenizer", "prior") for p in (out / part).resolve().rglob("*") if p.is_file()}
    assert listed == present


# ---------------------------------------------------------------------------------------------- the app
def test_the_app_lists_both_builds_and_generates_with_them_over_http(cifar_build, lsun_build, home):
    gradio_client = pytest.importorskip("gradio_client")
    from app.registry import load_app_config, model_folder
    from tests.pipeline_helpers import AppServer

    registry = yaml.safe_load((home / "models.local.yaml").read_text())["models"]
    assert registry["cifar"]["tokenizer"] == str(cifar_build["out"] / "tokenizer")
    assert registry["churches"]["prior"] == str(lsun_build["out"] / "prior")
    assert set(load_app_config(home / "app.yaml").models) == {"cifar", "churches"}
    assert model_folder(lsun_build["out"]) == (str(lsun_build["out"] / "tokenizer"), str(lsun_build["out"] / "prior"))
    card = (lsun_build["out"] / "README.md").read_text()
    assert "church_outdoor_val_lmdb" in card and "LSUN church_outdoor" in card
    app = AppServer(["--config", str(home / "app.yaml")], home / "app.log")
    try:
        client = gradio_client.Client(app.url, verbose=False)
        for name, size in (("cifar", 32), ("churches", 32)):
            gallery, seed, _ = client.predict(name, 2, seed=0, api_name="/generate")
            shapes = [np.asarray(Image.open(item["image"])).shape for item in gallery]
            assert seed == 0 and shapes == [(size, size, 3)] * 2
    finally:
        app.stop()


# ---------------------------------------------------------------------------------------------- bad data
def test_an_empty_folder_and_a_folder_of_non_images_are_refused_with_their_names(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="the image folder .*empty' is empty: put the training images in it"):
        plan_only(tmp_path, f"folder:{tmp_path / 'empty'}")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.txt").write_text("x")
    (junk / "b.jpg").write_text("not a jpeg")
    with pytest.raises(ConfigError, match=r"no readable image in .*2 file\(s\), none an image PIL can open "
                                          r"\(a.txt, b.jpg\)"):
        plan_only(tmp_path, f"folder:{junk}")
    with pytest.raises(ConfigError, match="the image folder .*nowhere' does not exist"):
        plan_only(tmp_path, f"folder:{tmp_path / 'nowhere'}")


def test_tiny_images_are_refused_small_ones_upscaled_and_odd_modes_converted(tmp_path, capsys):
    rng = np.random.default_rng(0)
    tiny = write_images(tmp_path / "tiny", rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8))
    Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(tiny / "speck.png")
    with pytest.raises(ConfigError, match=r"1 image\(s\) are under 8 pixels on their shorter side \(speck.png\)"):
        plan_only(tmp_path, f"folder:{tiny}")
    mixed = write_images(tmp_path / "mixed", rng.integers(0, 256, (40, 40, 48, 3), dtype=np.uint8))
    Image.fromarray(rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)).save(mixed / "small.png")
    Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(mixed / "gray.png")
    Image.fromarray(rng.integers(0, 256, (40, 40, 4), dtype=np.uint8)).save(mixed / "alpha.png")
    Image.fromarray(np.full((40, 40), 40000, dtype=np.uint16)).save(mixed / "deep.png")
    plan_only(tmp_path, f"folder:{mixed}")
    printed = capsys.readouterr().out
    assert "1 image(s) are smaller than 32 pixels on their shorter side and are upscaled" in printed
    assert re.search(r"converted to RGB: .*16-bit \(I;16\).*grayscale \(L\).*with alpha \(over white\) \(RGBA\)",
                     printed)
    assert "mixed sizes" in printed and "Plan (tiny" in printed
    # 16-bit pixels reach the tokenizer scaled, not clipped to white (the folder loader converts as the app does)
    from stage1_tokenizer.config import DataConfig
    from stage1_tokenizer.data import build_dataset

    files = build_dataset(DataConfig(dataset="folder", path=str(mixed), image_size=32), "all")
    deep = files[[f.name for f in files.files].index("deep.png")]
    assert torch.allclose(deep, torch.full_like(deep, round(40000 / 65535 * 255) / 255), atol=1 / 255)


def test_a_missing_or_unreadable_lmdb_and_too_few_images_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="LSUN church_outdoor was not found: looked for .*church_outdoor_train_lmdb"):
        plan_only(tmp_path, f"lsun_church:{tmp_path / 'nolsun'}")
    bad = tmp_path / "badlsun"
    for split in ("train", "val"):
        (bad / f"church_outdoor_{split}_lmdb").mkdir(parents=True)
        (bad / f"church_outdoor_{split}_lmdb" / "data.mdb").write_bytes(b"this is not an lmdb" * 100)
    with pytest.raises(ConfigError, match=r"cannot read the images of lsun_church:.*badlsun: \w*Error"):
        plan_only(tmp_path, f"lsun_church:{bad}", "tokenizer.train.batch_size=2")
    few = write_images(tmp_path / "few", np.random.default_rng(0).integers(0, 256, (30, 32, 32, 3), dtype=np.uint8))
    with pytest.raises(ConfigError, match=r"the training split has 27 images, fewer than the tokenizer.train.batch_size "
                                          r"batch of 32: add images, or pass a smaller one"):
        plan_only(tmp_path, f"folder:{few}")
    with pytest.raises(ConfigError, match="unknown override 'sweeps.num=3'"):
        plan_only(tmp_path, f"folder:{few}", "sweeps.num=3")


def test_a_full_disk_during_an_export_leaves_the_previous_export_loadable(tmp_path):
    from accelerate import Accelerator

    from edvae_common.runs import export_atomically
    from stage1_tokenizer.model import EdVAE

    accelerator = Accelerator(cpu=True)
    first = EdVAE(channels=8, blocks_per_group=1, codebook_size=32, codebook_dim=4).eval()
    export_atomically(accelerator, tmp_path, "tokenizer", lambda folder: first.save_pretrained(str(folder)))

    def disk_full(folder: Path) -> None:
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"\0" * 100)          # half written, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        export_atomically(accelerator, tmp_path, "tokenizer", disk_full)
    again = EdVAE.from_pretrained(tmp_path / "tokenizer")
    images = torch.rand(2, 3, 32, 32)
    assert torch.equal(again.encode(images), first.encode(images))
