"""The build's image source and its pre-flight check, run before anything trains.

``parse_source`` reads ``KIND:PATH`` as every stage does (``stage2_prior.fid.parse_source``; a bare path is
detected by stage 1's ``detect_source``). ``scan`` looks at a folder's files (or an .npz's shape) to count
what is not an image, what cannot be read, what is small and what needs converting; ``check_splits`` opens
both splits with stage 1's own loaders (``build_dataset``) and decodes a few images through them, so a
missing or unreadable LMDB, an empty split or a batch larger than the data stops the build with one line
saying what to do, before the first step. The loaders themselves are not copied: unreadable files are left
out by pointing the stages at a folder of links to the readable ones (``OUT/data``, same relative paths).
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from edvae_common.config import ConfigError

NAMED_SIZE = {"cifar10": 32, "celeba": 64, "lsun_church": 128}   # the paper's resolution of each named dataset
AUTO_SIZES = (32, 64, 128, 256)          # auto: the largest of these at most the images' typical shorter side
UPSCALE_LIMIT = 4                        # images smaller than size / 4 on their shorter side are refused
FULL_DECODE_LIMIT = 20_000               # folders up to this many images are decoded whole; larger: headers only
CONVERTED = {"L": "grayscale", "LA": "grayscale with alpha", "P": "palette", "PA": "palette with alpha",
             "RGBA": "with alpha (over white)", "I;16": "16-bit", "I;16B": "16-bit", "I;16L": "16-bit",
             "I": "32-bit", "F": "float", "CMYK": "CMYK", "1": "1-bit"}


@dataclass(frozen=True)
class Source:
    kind: str    # cifar10 | celeba | lsun_church | npz | folder | hf
    path: str    # absolute for local paths; a Hub id (or hf:user/name for a named dataset) as given

    @property
    def spec(self) -> str:
        return f"{self.kind}:{self.path}"


@dataclass
class Scan:
    """What a look at the files found (folders, .npz); empty for sources read only through their loader."""

    n_files: int = 0
    images: list[Path] = field(default_factory=list)
    sides: list[int] = field(default_factory=list)       # shorter side of each readable image
    modes: Counter = field(default_factory=Counter)
    not_images: list[Path] = field(default_factory=list)  # other file types: the loaders ignore them
    unreadable: list[Path] = field(default_factory=list)  # image names PIL cannot open or decode
    decoded: bool = True                                  # False: headers only (very large folders)


def _names(paths: list[Path], root: Path | None = None, n: int = 5) -> str:
    shown = [str(p.relative_to(root)) if root and p.is_relative_to(root) else str(p) for p in paths[:n]]
    return ", ".join(shown) + (f" and {len(paths) - n} more" if len(paths) > n else "")


def parse_source(text: str) -> Source:
    """``KIND:PATH`` (cifar10, celeba, lsun_church, npz, folder, hf) or a bare path / Hub id (kind detected)."""
    from stage1_tokenizer import DataNotFoundError, detect_source
    from stage2_prior.fid import parse_source as split

    kind, path = split(text)
    if kind == "auto":
        try:
            kind = detect_source(path)
        except DataNotFoundError as err:
            raise ConfigError(f"--data {text}: {err}. Write it as KIND:PATH, e.g. folder:/my/images, "
                              "npz:/my/images.npz, lsun_church:/data/lsun, celeba:/data/celeba, hf:user/name") from None
    hub = kind == "hf" and not Path(path).expanduser().exists() or path.startswith("hf:")
    return Source(kind, path if hub else str(Path(path).expanduser().resolve()))


def scan(source: Source) -> Scan:
    """Count and open the files of a folder source (or read an .npz's shape); other sources: nothing to scan."""
    if source.kind == "folder":
        return _scan_folder(Path(source.path))
    if source.kind == "npz" and Path(source.path).is_file():
        import numpy as np

        try:
            with np.load(source.path) as archive:
                shape = archive["images"].shape if "images" in archive.files else ()
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot read the .npz '{source.path}' ({err}); expected key 'images', uint8 "
                              "N x H x W x 3") from None
        return Scan(n_files=1, sides=[min(shape[1:3])] * shape[0] if len(shape) == 4 else [])
    return Scan()


def _scan_folder(root: Path) -> Scan:
    from PIL import Image

    from stage1_tokenizer import IMAGE_EXTENSIONS

    if not root.is_dir():
        raise ConfigError(f"the image folder '{root}' does not exist: check the path after folder:")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if not files:
        raise ConfigError(f"the image folder '{root}' is empty: put the training images in it "
                          f"({', '.join(IMAGE_EXTENSIONS)}), flat or in train/ and test/ subfolders")
    out = Scan(n_files=len(files))
    candidates = [f for f in files if f.suffix.lower() in IMAGE_EXTENSIONS]
    out.not_images = [f for f in files if f.suffix.lower() not in IMAGE_EXTENSIONS]
    out.decoded = len(candidates) <= FULL_DECODE_LIMIT
    for f in candidates:
        try:
            with Image.open(f) as img:
                if out.decoded:
                    img.load()                     # a truncated or damaged file fails here, not mid-training
                out.sides.append(min(img.size))
                out.modes[img.mode] += 1
            out.images.append(f)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            out.unreadable.append(f)
    if not out.images:
        bad = out.not_images + out.unreadable
        raise ConfigError(f"no readable image in '{root}': {len(bad)} file(s), none an image PIL can open "
                          f"({_names(bad, root)}); put {', '.join(IMAGE_EXTENSIONS)} images there")
    return out


def choose_size(source: Source, found: Scan, preset_size: int | None) -> int:
    """The preset's resolution, else the named dataset's, else the largest of AUTO_SIZES under the images'
    median shorter side (at least 32)."""
    if preset_size is not None:
        return preset_size
    if source.kind in NAMED_SIZE:
        return NAMED_SIZE[source.kind]
    if not found.sides:
        return 64
    median = sorted(found.sides)[len(found.sides) // 2]
    return max([s for s in AUTO_SIZES if s <= median] or [AUTO_SIZES[0]])


def notes_and_refusals(source: Source, found: Scan, size: int) -> list[str]:
    """What the stages will skip, convert or upscale, in words; refuses images under the upscaling floor."""
    root = Path(source.path)
    notes = []
    if found.not_images:
        notes.append(f"{len(found.not_images)} of {found.n_files} files are not images and are skipped "
                     f"({_names(found.not_images, root)})")
    if found.unreadable:
        notes.append(f"{len(found.unreadable)} image file(s) could not be read and are skipped "
                     f"({_names(found.unreadable, root)})")
        if len(found.unreadable) > len(found.images):
            notes.append(f"WARNING: most image files are unreadable; only {len(found.images)} are used")
    floor = max(8, size // UPSCALE_LIMIT)
    tiny = [f for f, side in zip(found.images, found.sides) if side < floor] if found.images else []
    if tiny or (not found.images and found.sides and min(found.sides) < floor):
        what = _names(tiny, root) if tiny else f"{source.path}: {min(found.sides)} pixels"
        raise ConfigError(f"{len(tiny) or len(found.sides)} image(s) are under {floor} pixels on their shorter side "
                          f"({what}): a {size}x{size} model would upscale them more than {UPSCALE_LIMIT}x. Remove them, "
                          "or build at a lower resolution (data.image_size=N or another --preset)")
    small = sum(side < size for side in found.sides)
    if small:
        notes.append(f"{small} image(s) are smaller than {size} pixels on their shorter side and are upscaled "
                     f"(bilinear; the smallest: {min(found.sides)} pixels)")
    odd = {mode: n for mode, n in found.modes.items() if mode != "RGB"}
    if odd:
        notes.append("converted to RGB: " + ", ".join(f"{n} {CONVERTED.get(m, m)} ({m})" for m, n in sorted(odd.items())))
    if found.images and len(set(found.sides)) > 1:
        notes.append(f"mixed sizes (shorter side {min(found.sides)} to {max(found.sides)} pixels): each is resized")
    if not found.decoded:
        notes.append(f"{len(found.images)} images: only their headers were checked (over {FULL_DECODE_LIMIT:,}); a "
                     "damaged file would stop the tokenizer stage, which then resumes after you remove it")
    return notes


def readable_view(source: Source, found: Scan, out: Path) -> Source:
    """What the stages read: the source itself, or, when a folder holds unreadable image files, ``out/data``
    (made by ``link_readable``: links to the readable ones under their relative paths, so the same train/ and
    test/ layout and the same held-out split order, without them)."""
    if source.kind != "folder" or not found.unreadable:
        return source
    return Source("folder", str(out / "data"))


def link_readable(source: Source, found: Scan, view: Path) -> None:
    """Fill ``view`` with links to the readable images of the folder ``source`` (replacing an earlier view whole)."""
    root, tmp = Path(source.path), view.with_name(".data.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    for f in found.images:
        link = tmp / f.relative_to(root)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(f, link)
    if view.exists():
        shutil.rmtree(view)
    tmp.rename(view)


@dataclass
class Splits:
    n_train: int
    n_test: int
    split_rule: str
    preprocessing: str


def check_splits(data_cfg, batches: dict[str, int]) -> Splits:
    """Open both splits with stage 1's loaders, decode images through them, and check the batch sizes fit."""
    from stage1_tokenizer import DataNotFoundError, build_dataset

    where = f"{data_cfg.dataset}:{data_cfg.path}"
    try:
        train, test = build_dataset(data_cfg, "train"), build_dataset(data_cfg, "test")
        for ds in (train, test):
            if len(ds):
                ds[0], ds[len(ds) - 1]     # through the real loader: a damaged LMDB value or file fails here
    except DataNotFoundError as err:
        raise ConfigError(str(err).splitlines()[0]) from None
    except ConfigError:
        raise
    except Exception as err:  # lmdb.Error, OSError, ValueError, ...: one line, then what to check
        raise ConfigError(f"cannot read the images of {where}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                          " (an LSUN folder needs church_outdoor_{train,val}_lmdb/ with data.mdb; a folder, image files; "
                          "an .npz, key 'images')") from None
    if len(test) < 2:
        raise ConfigError(f"{where}: the test split has {len(test)} image(s); the FID needs at least 2: add images or "
                          "raise data.test_fraction")
    for what, batch in batches.items():
        if len(train) < batch:
            raise ConfigError(f"{where}: the training split has {len(train)} images, fewer than the {what} batch of "
                              f"{batch}: add images, or pass a smaller one ({what}={len(train)})")
    parts = getattr(train, "datasets", [train])
    prep = getattr(parts[0], "preprocess", None)
    rules = [getattr(ds, "split_rule", "?") for ds in (train, test)]
    rule = rules[0] if rules[0] == rules[1] or "held-out" in rules[0] else f"train: {rules[0]}; held out: {rules[1]}"
    return Splits(len(train), len(test), rule,
                  prep.describe() if hasattr(prep, "describe") else "the source's own")
