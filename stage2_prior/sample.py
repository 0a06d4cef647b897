"""Sample images from a trained prior, or complete an image, and save them.

    python -m stage2_prior.sample --prior runs/stage2/celeba/prior --tokenizer runs/stage1/celeba/tokenizer \\
        --num 64 --out runs/samples/celeba [--temperature 0.7 --top-k 0 --top-p 1.0 --seed 0 --batch-size 16]
    python -m stage2_prior.sample ... --num 50000 --batch-size 250 --out runs/samples/celeba_50k   # streams to disk
    accelerate launch -m stage2_prior.sample ... --num 50000 --out runs/samples/celeba_50k       # over N processes
    python -m stage2_prior.sample ... --complete face.png --keep-rows 8 --num 8      # completions of one image
    python -m stage2_prior.sample ... --class 3 --cfg-scale 3.0                      # class-conditional priors

Sampling streams to disk shard by shard (``--shard-size`` images each), so memory does not grow with
``--num``::

    OUT/
      sampling_run.json          the settings the run was started with (a resume must match them)
      shards/images_00000.npy    uint8 (n, H, W, 3), written when the shard is complete
      shards/codes_00000.npy     uint16 (n, h, w) token grids
      images/00000.png ...       one PNG per image, numbered over the whole run
      grid.png                   the first --grid images
      samples.npz                images (N, H, W, 3) uint8 + codes (N, h, w), assembled shard by shard (--no-npz: off)
      samples.json               the manifest: settings, seeds, shards; written last (a folder without it is unfinished)

Every file is written to a temporary name and renamed. A rerun with the same settings resumes: shards
whose files are complete are kept (not rewritten), the others are made again. Shard i has its own seed,
``shard_seed(seed, i)`` (shard 0: the seed itself, so a run of one shard gives the images of
``Pipeline.generate(num, seed=seed, batch_size=...)``), so the images do not depend on how many
processes made them: under ``accelerate launch`` process r makes shards r, r + N, ... The same seed,
batch size and shard size give the same images.

Sampling settings not given take the prior's recommended ones (its ``sampling.json``, else temperature
1, no top-k / top-p): flags > ``sampling.json`` > built-in. ``--complete`` images get the tokenizer's
own preprocessing (its ``training_data.json``: the CelebA crop for CelebA, ...); completions are few and
are written in one go (grid.png, images/, samples.npz, samples.json, input.png).
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from edvae_common.io import atomic_write_bytes, read_json, save_image_grid, to_uint8, weights_sha256, write_json
from stage2_prior.inputs import KINDS

logger = logging.getLogger("stage2.sample")

FORMAT = "edvae-samples"
VERSION = 1
RUN_RECORD = "sampling_run.json"
MANIFEST = "samples.json"
SHARD_DIR = "shards"
DECODE_BATCH = 64          # decode_codes' batch: the same chunks as Pipeline.generate, so the same pixels
# settings that define the images: a resume must match them all (the seed unless --seed -1 reuses the recorded one)
DEFINING = ("prior_weights_sha256", "tokenizer_weights_hash", "num", "shard_size", "batch_size", "temperature",
            "top_k", "top_p", "class_label", "cfg_scale", "seed", "use_cache")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prior", required=True, help="exported prior folder (output_dir/prior) or Hub id")
    p.add_argument("--tokenizer", required=True, help="the stage-1 tokenizer the prior was trained on")
    p.add_argument("--num", type=int, default=16, help="images to sample (completions: variations)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--temperature", type=float, default=None,
                   help="softmax temperature; 0 = greedy (default: the prior's sampling.json, else 1)")
    p.add_argument("--top-k", type=int, default=None,
                   help="keep the k most likely codes, 0 = all (default: sampling.json, else all)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass, 1 = off (default: sampling.json, else 1)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed; -1 draws a fresh one (or resumes with the recorded one; in samples.json)")
    p.add_argument("--batch-size", type=int, default=16,
                   help="sequences sampled at once (part of what fixes the images)")
    p.add_argument("--shard-size", type=int, default=1000,
                   help="images per shard: the unit written to disk, resumed and split over processes")
    p.add_argument("--grid", type=int, default=64, help="images in grid.png (the first ones; 0 = no grid)")
    p.add_argument("--no-npz", action="store_true",
                   help="skip samples.npz (the shards and images/ hold the same images; for very large runs)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in a folder that holds a sampling run made with other settings")
    p.add_argument("--class", dest="class_label", type=int, default=None, help="class id (conditional priors)")
    p.add_argument("--cfg-scale", type=float, default=None,
                   help="classifier-free guidance scale, needs --class (default: sampling.json's guidance, else 1)")
    p.add_argument("--complete", default=None, help="an image to complete (preprocessed like the tokenizer's data)")
    p.add_argument("--keep-rows", type=int, default=None, help="token rows of --complete to keep (default: half)")
    p.add_argument("--preprocess", default=None, choices=KINDS,
                   help="override the preprocessing of --complete read from the tokenizer's training_data.json")
    p.add_argument("--no-cache", action="store_true", help="disable the KV cache (slow; for comparison)")
    p.add_argument("--device", default=None,
                   help="cpu, cuda, ... (default: the process's accelerate device: cuda when available)")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------- the format
def shard_seed(seed: int, index: int) -> int:
    """The seed of shard ``index`` of a run with ``seed``: the seed itself for shard 0, else a 31-bit number
    drawn from numpy's ``SeedSequence([seed, index])`` (independent streams, any number of processes)."""
    if index == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0] & 0x7FFFFFFF)


def shard_files(index: int) -> tuple[str, str]:
    return f"{SHARD_DIR}/images_{index:05d}.npy", f"{SHARD_DIR}/codes_{index:05d}.npy"


def png_name(i: int, num: int) -> str:
    """images/NNNNN.png, zero-padded to (at least 5) digits enough for ``num``, so names sort in order."""
    return f"images/{i:0{max(5, len(str(num - 1)))}d}.png"


def code_dtype(codebook_size: int) -> np.dtype:
    return np.dtype(np.uint16 if codebook_size <= 2**16 else np.int32)


def shard_complete(out: Path, index: int, lo: int, count: int, num: int, image_shape: tuple[int, ...],
                   grid: tuple[int, int]) -> bool:
    """Both arrays readable with the right shape, and every PNG of the shard present."""
    images, codes = shard_files(index)
    for name, shape in ((images, (count, *image_shape)), (codes, (count, *grid))):
        try:
            if np.load(out / name, mmap_mode="r").shape != shape:
                return False
        except (OSError, ValueError, EOFError):  # missing, truncated, not an .npy
            return False
    return all((out / png_name(i, num)).is_file() for i in range(lo, lo + count))


def save_npy(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write_bytes(path, buf.getvalue())


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def write_npz_streaming(path: Path, arrays: dict[str, tuple[tuple[int, ...], np.dtype, Iterable[np.ndarray]]]) -> None:
    """A compressed ``.npz`` (what ``np.savez_compressed`` writes, ``np.load`` reads) from arrays given as
    (shape, dtype, chunks along axis 0): one chunk in memory at a time; written to a temporary file, renamed."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
            for name, (shape, dtype, chunks) in arrays.items():
                dtype = np.dtype(dtype)
                with archive.open(f"{name}.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                             "fortran_order": False, "shape": tuple(shape)})
                    rows = 0
                    for chunk in chunks:
                        chunk = np.ascontiguousarray(chunk, dtype=dtype)
                        f.write(chunk.tobytes())
                        rows += len(chunk)
                    if rows != shape[0]:
                        raise ValueError(f"{name}: {rows} rows written, {shape[0]} announced")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def check_run_record(out: Path, record: dict, seed_given: bool) -> None:
    """Refuse to resume a run that was started with other settings (naming each)."""
    old = read_json(out / RUN_RECORD)
    keys = [k for k in DEFINING if k != "seed" or seed_given]
    diff = [f"{k}: {old.get(k)} -> {record.get(k)}" for k in keys if old.get(k) != record.get(k)]
    if old.get("format") != FORMAT:
        diff.insert(0, f"format: {old.get('format')} -> {FORMAT}")
    if diff:
        raise ValueError(f"'{out}' holds a sampling run made with other settings ({'; '.join(diff)}); rerun with "
                         "its settings to resume it, pass another --out, or --overwrite to start over")


# ---------------------------------------------------------------------------- completions (few images, in memory)
def save_outputs(out: Path, images: torch.Tensor, codes: torch.Tensor, meta: dict) -> None:
    """grid.png, images/NNNNN.png, samples.npz (uint8 images + codes) and samples.json."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("images", SHARD_DIR):  # never mix single images of an earlier run into this one's
        if (out / stale).is_dir():
            shutil.rmtree(out / stale)
    (out / RUN_RECORD).unlink(missing_ok=True)
    arrays = to_uint8(images)
    save_image_grid(images, out / "grid.png", nrow=int(math.ceil(math.sqrt(len(images)))))
    for i, array in enumerate(arrays):
        atomic_write_bytes(out / png_name(i, len(arrays)), png_bytes(array))
    buf = io.BytesIO()
    np.savez_compressed(buf, images=arrays, codes=codes.numpy().astype(np.int64))
    atomic_write_bytes(out / "samples.npz", buf.getvalue())
    write_json(out / MANIFEST, meta)


def _complete(args: argparse.Namespace, pipe: Any, sampling: dict, out: Path, device: str) -> None:
    if args.no_cache:
        raise ValueError("--no-cache is for timing plain sampling; drop it with --complete")
    tic = time.perf_counter()
    result = pipe.complete(args.complete, args.keep_rows, args.num, **sampling)
    seconds = time.perf_counter() - tic
    out.mkdir(parents=True, exist_ok=True)
    save_image_grid(torch.stack([result.kept, result.reconstruction]), out / "input.png", nrow=2)
    meta = {"mode": "complete", "image": str(args.complete), "keep_rows": result.keep_rows,
            "preprocess": pipe.preprocess, "prior": str(args.prior), "tokenizer": str(args.tokenizer),
            "num": args.num, **result.settings, "use_cache": True, "grid": list(pipe.grid),
            "image_size": pipe.image_size, "seconds": seconds, "device": device}
    if "note" in pipe.sampling_defaults:
        meta["sampling_note"] = pipe.sampling_defaults["note"]
    save_outputs(out, result.completions, result.codes, meta)
    print(f"wrote {args.num} completions to {out} in {seconds:.1f} s (grid.png, input.png, images/, samples.npz, "
          "samples.json)")


# ---------------------------------------------------------------------------- sampling, streamed
def sample_shard(pipe: Any, count: int, seed: int, record: dict, progress: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """One shard: codes sampled with the shard's seed, decoded batch by batch straight to uint8."""
    from stage2_prior.generation import decode_codes, generate_codes

    codes = generate_codes(pipe.prior, pipe.spec, count, temperature=record["temperature"], top_k=record["top_k"],
                           top_p=record["top_p"], seed=seed, batch_size=record["batch_size"],
                           cfg_scale=record["cfg_scale"], class_label=record["class_label"],
                           use_cache=record["use_cache"], progress=progress)
    size = pipe.image_size
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    for lo in range(0, count, DECODE_BATCH):
        images[lo:lo + DECODE_BATCH] = to_uint8(decode_codes(pipe.tokenizer, codes[lo:lo + DECODE_BATCH], DECODE_BATCH))
    return images, codes.numpy().astype(code_dtype(pipe.spec.codebook_size))


def _rows(out: Path, names: list[str], dtype: Any = None) -> Iterator[np.ndarray]:
    for name in names:
        array = np.load(out / name, mmap_mode="r")
        yield np.asarray(array if dtype is None else array.astype(dtype))


def _finish(out: Path, record: dict, shards: list[dict], pipe: Any, args: argparse.Namespace, meta: dict) -> dict:
    """After every shard is complete: grid.png, samples.npz (streamed) and, last, the manifest samples.json."""
    num, size = record["num"], pipe.image_size
    h, w = pipe.grid
    if args.grid > 0:
        first = np.concatenate(list(_first_rows(out, [s["images"] for s in shards], min(args.grid, num))))
        tensor = torch.from_numpy(first).permute(0, 3, 1, 2).float().div(255)
        save_image_grid(tensor, out / "grid.png", nrow=int(math.ceil(math.sqrt(len(first)))))
    else:
        (out / "grid.png").unlink(missing_ok=True)
    if args.no_npz:
        (out / "samples.npz").unlink(missing_ok=True)
    else:
        write_npz_streaming(out / "samples.npz", {
            "images": ((num, size, size, 3), np.uint8, _rows(out, [s["images"] for s in shards])),
            "codes": ((num, h, w), np.int64, _rows(out, [s["codes"] for s in shards], np.int64))})
    files = {"shards": SHARD_DIR, "images": "images", "grid": "grid.png" if args.grid > 0 else None,
             "npz": None if args.no_npz else "samples.npz"}
    manifest = {**meta, "files": files, "shards": shards}
    write_json(out / MANIFEST, manifest)
    return manifest


def _first_rows(out: Path, names: list[str], n: int) -> Iterator[np.ndarray]:
    for name in names:
        if n <= 0:
            return
        array = np.load(out / name, mmap_mode="r")
        yield np.asarray(array[:n])
        n -= len(array)


def _sample(args: argparse.Namespace, pipe: Any, settings: dict, out: Path, accelerator: Any, device: str) -> None:
    from tqdm.auto import tqdm

    from stage2_prior.generation import check_request

    if args.shard_size <= 0 or args.grid < 0:
        raise ValueError(f"--shard-size must be positive and --grid >= 0, got {args.shard_size} and {args.grid}")
    check_request(pipe.spec, args.num, batch_size=args.batch_size, temperature=settings["temperature"],
                  top_k=settings["top_k"], top_p=settings["top_p"], cfg_scale=settings["cfg_scale"],
                  class_label=settings["class_label"])
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out '{out}' is a file; pass a folder")

    # 1. The run record: what defines the images. A rerun must match it (and then resumes).
    seed_given = args.seed >= 0
    record = {"format": FORMAT, "version": VERSION, "mode": "sample",
              "prior_weights_sha256": weights_sha256(pipe.prior),
              "tokenizer_weights_hash": pipe.spec.tokenizer.weights_hash,
              "num": args.num, "shard_size": args.shard_size, "batch_size": args.batch_size,
              **{k: settings[k] for k in ("temperature", "top_k", "top_p", "class_label", "cfg_scale")},
              "seed": settings["seed"] if seed_given else None, "use_cache": not args.no_cache}
    exists = (out / RUN_RECORD).is_file()
    if exists and not args.overwrite:
        check_run_record(out, record, seed_given)  # on every process: one refusing alone would leave the others waiting
    if accelerator.is_main_process:
        if exists and not args.overwrite:
            record["seed"] = read_json(out / RUN_RECORD)["seed"]
        else:  # a new run: clear what an earlier run (another version, a completion, --overwrite) left here
            for stale in ("images", SHARD_DIR):
                if (out / stale).is_dir():
                    shutil.rmtree(out / stale)
            for stale in (MANIFEST, "samples.npz", "grid.png", "input.png"):
                (out / stale).unlink(missing_ok=True)
            if record["seed"] is None:
                record["seed"] = settings["seed"]  # drawn by the pipeline (seed -1)
        out.mkdir(parents=True, exist_ok=True)
        (out / MANIFEST).unlink(missing_ok=True)  # unfinished until the manifest is written again, last
        write_json(out / RUN_RECORD, record)
    accelerator.wait_for_everyone()
    record = read_json(out / RUN_RECORD)  # every process: the main process's seed and settings

    # 2. This process's shards that are not complete yet.
    num, size, shard_size = args.num, pipe.image_size, args.shard_size
    n_shards = math.ceil(num / shard_size)
    image_shape, grid = (size, size, 3), pipe.grid
    counts = [min(shard_size, num - i * shard_size) for i in range(n_shards)]
    rank, world = accelerator.process_index, accelerator.num_processes
    own = list(range(rank, n_shards, world))
    todo = [i for i in own if not shard_complete(out, i, i * shard_size, counts[i], num, image_shape, grid)]
    if len(own) > len(todo):
        logger.info("process %d: %d shard(s) already complete, kept", rank, len(own) - len(todo))
    tokens = grid[0] * grid[1]
    bar = tqdm(total=sum(counts[i] for i in todo), desc=f"samples (process {rank})", unit="img",
               disable=not accelerator.is_local_main_process)
    tic = time.perf_counter()

    # 3. Each shard: sample, decode to uint8, write its PNGs, then its codes, then its images (the last file
    #    marks it complete); every file under a temporary name first.
    for i in todo:
        lo = i * shard_size
        shown = [0]

        def progress(done: int, total: int, shown: list = shown) -> None:
            n = done // tokens
            bar.update(n - shown[0])
            shown[0] = n

        images, codes = sample_shard(pipe, counts[i], shard_seed(record["seed"], i), record, progress)
        for j, array in enumerate(images):
            atomic_write_bytes(out / png_name(lo + j, num), png_bytes(array))
        images_name, codes_name = shard_files(i)
        save_npy(out / codes_name, codes)
        save_npy(out / images_name, images)
        del images, codes
    bar.close()
    seconds = time.perf_counter() - tic

    # 4. All shards done (every process): the main process checks them and writes the rest and the manifest.
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    missing = [i for i in range(n_shards)
               if not shard_complete(out, i, i * shard_size, counts[i], num, image_shape, grid)]
    if missing:
        raise ValueError(f"shards {missing[:10]} of '{out}' are incomplete after sampling; rerun the command to resume")
    shards = [{"index": i, "first": i * shard_size, "count": counts[i], "seed": shard_seed(record["seed"], i),
               "images": shard_files(i)[0], "codes": shard_files(i)[1]} for i in range(n_shards)]
    meta = {"mode": "sample", "format": FORMAT, "version": VERSION, "prior": str(args.prior),
            "tokenizer": str(args.tokenizer), "num": num,
            **{k: record[k] for k in ("temperature", "top_k", "top_p", "class_label", "cfg_scale", "seed",
                                      "batch_size")},
            "use_cache": record["use_cache"], "grid": list(grid), "image_size": size, "shard_size": shard_size,
            "seed_rule": "shard i uses shard_seed(seed, i): the seed for shard 0, else "
                         "SeedSequence([seed, i]).generate_state(1)[0] & 0x7FFFFFFF (stage2_prior.sample)",
            "prior_weights_sha256": record["prior_weights_sha256"],
            "tokenizer_weights_hash": record["tokenizer_weights_hash"],
            "seconds": seconds, "shards_made": len(todo), "shards_kept": len(own) - len(todo),
            "processes": world, "device": device}
    if world > 1:
        meta["note"] = "seconds, shards_made and shards_kept are the main process's"
    if "note" in pipe.sampling_defaults:
        meta["sampling_note"] = pipe.sampling_defaults["note"]
    _finish(out, record, shards, pipe, args, meta)
    print(f"wrote {num} images to {out} in {seconds:.1f} s ({len(todo)} of {n_shards} shard(s) made here; "
          f"{SHARD_DIR}/, images/, {'grid.png, ' if args.grid else ''}{'' if args.no_npz else 'samples.npz, '}"
          f"{MANIFEST})")


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from edvae_common.accel import make_accelerator
    from stage2_prior.pipeline import Pipeline

    accelerator = make_accelerator(**({"cpu": True} if args.device == "cpu" else {}))
    try:
        device = str(args.device if args.device and accelerator.num_processes == 1 else accelerator.device)
        pipe = Pipeline.from_pretrained(args.tokenizer, args.prior, device=device, preprocess=args.preprocess)
        if not isinstance(args.num, int) or args.num < 1:
            raise ValueError(f"--num must be a positive integer, got {args.num}")
        seed = args.seed if args.seed >= 0 else None
        sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=seed,
                        class_label=args.class_label, guidance=args.cfg_scale)
        out = Path(args.out)
        if args.complete is not None:
            if accelerator.is_main_process:
                _complete(args, pipe, {**sampling, "batch_size": args.batch_size}, out, device)
        else:
            settings = pipe._settings(**sampling)  # flags > the prior's sampling.json > built-in; seed drawn if -1
            _sample(args, pipe, settings, out, accelerator, device)
        accelerator.wait_for_everyone()
    finally:
        accelerator.end_training()  # tears the process group down before exit (a live gloo group can abort at exit)
    return out


if __name__ == "__main__":
    from edvae_common.cli import run_cli

    run_cli(main)
