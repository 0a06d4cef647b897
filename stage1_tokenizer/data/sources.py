"""Image sources: the paper's datasets and generic ones, each with a train and a test split.

Named datasets (the paper's preprocessing, Appendix D.1):

=============  ==================================================  ========================
``dataset``    loading path                                         preprocessing
=============  ==================================================  ========================
cifar10        torchvision CIFAR10 under ``path`` (download=true)   none (32x32)
celeba         ``img_align_celeba/`` + ``list_eval_partition.txt``    center crop 140, bilinear 64
lsun_church    LSUN LMDB ``church_outdoor_{train,val}_lmdb``         bilinear resize to 128 x 128
=============  ==================================================  ========================

Each named dataset also accepts ``path`` pointing at an ``.npz`` file, an image
folder or a saved ``datasets`` folder; images that already have the target
size are taken as preprocessed and used as they are.

Generic sources: ``npz`` (key ``images``, uint8 N x H x W x 3), ``folder``
(``train/`` and ``test/`` subfolders, or a flat folder), ``hf`` (a saved
``datasets`` folder or a Hub id); ``auto`` guesses which from ``path``. A named
dataset also reads a Hub dataset with its own preprocessing when ``path`` is
``hf:user/name``.

Splits: the ``test`` split is the source's own wherever it has one (CIFAR-10's test
set, CelebA's official test partition, LSUN's ``*_val_lmdb``, a folder's ``test/``
(or ``val/``, ``validation/``), a ``datasets`` source's ``test`` / ``validation``);
only sources without one hold out a fixed, seeded ``test_fraction``. ``all`` is
train + test where there are splits, every image otherwise. Each dataset carries
``split_rule``, the rule in words.

LSUN LMDBs are read directly (``LMDBImages``): the list of keys is cached in a cache
folder (``EDVAE_CACHE_DIR`` or ``~/.cache/edvae``, ``lsun/``), never in the working
directory (torchvision's ``LSUN`` writes ``_cache_*`` files there).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from edvae_common.io import to_rgb_array

from ..config import DataConfig
from .preprocess import Preprocess

NAMED = ("cifar10", "celeba", "lsun_church")
GENERIC = ("npz", "folder", "hf")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
SPLITS = ("train", "test", "all")
TEST_FOLDERS = ("test", "val", "validation", "valid")  # a folder's test split, in this order of preference
HUB_PREFIX = "hf:"  # data.path=hf:user/name reads a Hub dataset with a named dataset's preprocessing
logger = logging.getLogger("stage1.data")


class DataNotFoundError(FileNotFoundError):
    """The data a config asks for is not there; the message says what was looked for and how to get it."""


class ArrayDataset(Dataset):
    """uint8 images (N, H, W, 3) in memory (e.g. from an ``.npz``), preprocessed on access.

    ``labels`` (class ids of the selected images, or None) is read by stage 2's token extraction.
    """

    def __init__(self, images: np.ndarray, indices: np.ndarray, preprocess: Preprocess,
                 labels: np.ndarray | None = None):
        self.images, self.indices, self.preprocess = images, indices, preprocess
        self.labels = None if labels is None else np.asarray(labels)[indices].astype(np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.preprocess(self.images[self.indices[i]])


class FileDataset(Dataset):
    """Image files decoded with PIL on access."""

    def __init__(self, files: Sequence[Path], preprocess: Preprocess):
        self.files, self.preprocess = list(files), preprocess

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.files[i]) as img:
            return self.preprocess(to_rgb_array(img))  # 16-bit scaled, alpha over white: as the app converts uploads


class WrappedDataset(Dataset):
    """Any dataset whose items are a PIL image, or a tuple starting with one (torchvision, datasets)."""

    def __init__(self, base: Any, preprocess: Preprocess, key: str | None = None, indices: np.ndarray | None = None):
        self.base, self.preprocess, self.key = base, preprocess, key
        self.indices = indices
        targets = getattr(base, "targets", None)  # torchvision classification datasets (CIFAR-10)
        self.labels = None
        if isinstance(targets, (list, np.ndarray)) and len(targets) == len(base):
            labels = np.asarray(targets, dtype=np.int64)
            self.labels = labels if indices is None else labels[indices]

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.base)

    def __getitem__(self, i: int) -> torch.Tensor:
        item = self.base[int(self.indices[i]) if self.indices is not None else i]
        if self.key is not None:
            item = item[self.key]
        elif isinstance(item, tuple):
            item = item[0]
        return self.preprocess(item.convert("RGB") if hasattr(item, "convert") else item)


class ConcatImages(ConcatDataset):
    """Several parts of one source (train + test for ``split='all'``), labels concatenated when all have them."""

    def __init__(self, parts: Sequence[Dataset], split_rule: str):
        super().__init__(parts)
        labels = [getattr(p, "labels", None) for p in parts]
        self.labels = None if any(x is None for x in labels) else np.concatenate(labels)
        self.split_rule = split_rule


def held_out_split(n: int, split: str, fraction: float, seed: int) -> np.ndarray:
    """Indices of a fixed, seeded train/test split of ``n`` items (test = the first ``fraction`` of a permutation).

    ``split='all'`` gives every index.
    """
    if split == "all":
        return np.arange(n)
    if n < 2:
        raise ValueError(f"need at least 2 images to hold out a test split, found {n}")
    perm = np.random.default_rng(seed).permutation(n)
    n_test = min(max(1, int(round(n * fraction))), n - 1)
    return np.sort(perm[:n_test] if split == "test" else perm[n_test:])


def detect_source(path: str | None) -> str:
    """Guess a generic source kind from a path (``auto``)."""
    if path is None:
        raise DataNotFoundError("data.dataset=auto needs data.path (an .npz file, an image folder or a datasets folder)")
    p = Path(path)
    if p.suffix == ".npz":
        return "npz"
    if p.is_dir():
        if (p / "dataset_dict.json").is_file() or (p / "dataset_info.json").is_file() or (p / "state.json").is_file():
            return "hf"
        return "folder"
    if path.startswith(HUB_PREFIX):
        return "hf"
    if not p.exists() and path.count("/") == 1 and not path.startswith((".", "/")):
        return "hf"  # a Hub id such as 'user/name'
    raise DataNotFoundError(f"data.path '{path}' does not exist (expected an .npz file, an image folder, a saved "
                            "datasets folder or a Hub id 'user/name')")


# ---------------------------------------------------------------------------- generic loaders
def load_npz(path: str, split: str, cfg: DataConfig, preprocess: Preprocess) -> Dataset:
    if not Path(path).is_file():
        raise DataNotFoundError(f"no .npz file at '{path}' (expected key 'images', uint8, N x H x W x 3)")
    with np.load(path) as archive:
        if "images" not in archive.files:
            raise ValueError(f"'{path}' has no 'images' array (found keys: {', '.join(archive.files)}); "
                             "expected uint8 images of shape N x H x W x 3")
        images = archive["images"]
        labels = archive["labels"] if "labels" in archive.files else None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"'{path}': 'images' must be uint8 of shape N x H x W x 3, got {images.dtype} {images.shape}")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"'{path}': 'labels' has {len(labels)} entries for {len(images)} images")
    ds = ArrayDataset(images, held_out_split(len(images), split, cfg.test_fraction, cfg.split_seed), preprocess,
                      labels)
    ds.split_rule = _held_out_rule(split, cfg)
    return ds


def _held_out_rule(split: str, cfg: DataConfig) -> str:
    if split == "all":
        return "all images (the source has no split)"
    return (f"seeded held-out split (the source has none): {split} part of test_fraction={cfg.test_fraction}, "
            f"split_seed={cfg.split_seed}")


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def load_folder(path: str, split: str, cfg: DataConfig, preprocess: Preprocess) -> Dataset:
    root = Path(path)
    if not root.is_dir():
        raise DataNotFoundError(f"image folder '{path}' does not exist")
    test_dir = next((root / name for name in TEST_FOLDERS if (root / name).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        dirs = {"train": [root / "train"], "test": [test_dir], "all": [root / "train", test_dir]}[split]
        files = [f for d in dirs for f in _image_files(d)]
        rule = f"the folder's own split: {' + '.join(d.name + '/' for d in dirs)}"
    else:
        all_files = _image_files(root)
        files = [all_files[i] for i in held_out_split(len(all_files), split, cfg.test_fraction, cfg.split_seed)] \
            if len(all_files) >= 2 else all_files
        rule = _held_out_rule(split, cfg)
    if not files:
        raise DataNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found under '{root}' for split '{split}'")
    ds = FileDataset(files, preprocess)
    ds.split_rule = rule
    return ds


def load_hf(path: str, split: str, cfg: DataConfig, preprocess: Preprocess) -> Dataset:
    import datasets

    path = path[len(HUB_PREFIX):] if path.startswith(HUB_PREFIX) else path

    try:
        if Path(path).is_dir():
            ds = datasets.load_from_disk(path)
        else:
            ds = datasets.load_dataset(path)
    except FileNotFoundError as err:
        raise DataNotFoundError(f"could not load the datasets source '{path}': {err}. Offline, only saved folders "
                                "(Dataset.save_to_disk) and the local cache are available.") from err
    except ConnectionError as err:
        raise DataNotFoundError(f"could not reach the Hugging Face Hub for '{path}' ({err}); save the dataset "
                                "with save_to_disk() where there is network and pass that folder") from err
    aliases = {"train": ["train"], "test": ["test", "validation", "valid", "val"]}
    names = {s: next((a for a in aliases[s] if a in ds), None) for s in aliases} \
        if isinstance(ds, datasets.DatasetDict) else {"train": None, "test": None}
    if names["train"] is not None and names["test"] is not None:  # its own split; else a held-out one, below
        wanted = [names["train"], names["test"]] if split == "all" else [names[split]]
        parts = [_hf_part(ds[name], path, preprocess) for name in wanted]
        rule = f"the dataset's own split: {' + '.join(repr(n) for n in wanted)}"
        if len(parts) == 1:
            parts[0].split_rule = rule
            return parts[0]
        return ConcatImages(parts, rule)
    part = ds[names["train"] or next(iter(ds))] if isinstance(ds, datasets.DatasetDict) else ds
    out = _hf_part(part, path, preprocess, held_out_split(len(part), split, cfg.test_fraction, cfg.split_seed))
    out.split_rule = _held_out_rule(split, cfg)
    return out


def _hf_part(part: Any, path: str, preprocess: Preprocess, indices: np.ndarray | None = None) -> "WrappedDataset":
    import datasets

    key = next((k for k, f in part.features.items() if isinstance(f, datasets.Image)), None)
    if key is None:
        raise ValueError(f"the datasets source '{path}' has no Image column (columns: {', '.join(part.features)})")
    return WrappedDataset(part, preprocess, key=key, indices=indices)


GENERIC_LOADERS: dict[str, Callable[[str, str, DataConfig, Preprocess], Dataset]] = {
    "npz": load_npz, "folder": load_folder, "hf": load_hf,
}


# ---------------------------------------------------------------------------- named datasets
def _torchvision_error(name: str, root: str, how: str, err: Exception) -> DataNotFoundError:
    return DataNotFoundError(
        f"{name} was not found under data.path='{root}' ({err}). {how} Or point data.path at an .npz file "
        "(key 'images', uint8 N x H x W x 3) or an image folder."
    )


def load_cifar10(root: str, split: str, cfg: DataConfig, preprocess: Preprocess) -> Dataset:
    from torchvision.datasets import CIFAR10

    try:
        base = CIFAR10(root, train=(split == "train"), download=cfg.download)
    except RuntimeError as err:
        raise _torchvision_error("CIFAR-10", root, "Pass data.download=true to fetch it with torchvision (needs network).", err) from err
    ds = WrappedDataset(base, preprocess)
    ds.split_rule = f"CIFAR-10's own split: the official {split} set"
    return ds


CELEBA_PARTITION = {"train": "0", "valid": "1", "test": "2"}


def _celeba_dir(root: Path) -> Path | None:
    """The folder holding img_align_celeba/ and list_eval_partition.txt: root itself or root/celeba."""
    for folder in (root, root / "celeba"):
        if (folder / "img_align_celeba").is_dir() and (folder / "list_eval_partition.txt").is_file():
            return folder
    return None


def load_celeba(root: str, split: str, cfg: DataConfig, preprocess: Preprocess) -> Dataset:
    """The official CelebA partition (train / test; 'valid' is not used), from the aligned images.

    Needs only ``img_align_celeba/`` and ``list_eval_partition.txt`` (under ``root`` or
    ``root/celeba``); ``data.download=true`` fetches everything with torchvision instead.
    """
    folder = _celeba_dir(Path(root))
    if folder is None and cfg.download:
        from torchvision.datasets import CelebA

        try:
            base = CelebA(root, split=split, target_type=[], download=True)
        except (RuntimeError, OSError) as err:
            raise _torchvision_error("CelebA", root, "torchvision's download (Google Drive) failed.", err) from err
        ds = WrappedDataset(base, preprocess)
        ds.split_rule = f"CelebA's official {split} partition (torchvision)"
        return ds
    if folder is None:
        raise DataNotFoundError(
            f"CelebA was not found: looked for img_align_celeba/ and list_eval_partition.txt under '{root}' and "
            f"'{root}/celeba'. Get img_align_celeba.zip and list_eval_partition.txt from the CelebA page "
            "(mmlab.ie.cuhk.edu.hk/projects/CelebA.html) and unzip them there, or pass data.download=true "
            "(torchvision). Or point data.path at an .npz file (key 'images') or an image folder."
        )
    wanted = CELEBA_PARTITION[split]
    names = [line.split()[0] for line in (folder / "list_eval_partition.txt").read_text().splitlines()
             if len(line.split()) == 2 and line.split()[1] == wanted]
    files = [folder / "img_align_celeba" / name for name in names]
    missing = [f for f in files[:5] if not f.is_file()]
    if not files or missing:
        raise DataNotFoundError(f"CelebA under '{folder}' is incomplete: {len(files)} '{split}' entries in "
                                f"list_eval_partition.txt, missing e.g. {', '.join(str(m) for m in missing[:2])}")
    ds = FileDataset(files, preprocess)
    ds.split_rule = f"CelebA's official {split} partition (list_eval_partition.txt: {wanted})"
    return ds


def cache_root() -> Path:
    """Where data-side caches go: ``$EDVAE_CACHE_DIR``, else ``$XDG_CACHE_HOME/edvae``, else ``~/.cache/edvae``."""
    if os.environ.get("EDVAE_CACHE_DIR"):
        return Path(os.environ["EDVAE_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edvae"


_LMDB_ENVS: dict[tuple[str, int], Any] = {}  # one read-only handle per LMDB and process (lmdb refuses a second)


def _lmdb_env(path: Path) -> Any:
    import lmdb

    key = (str(path), os.getpid())
    if key not in _LMDB_ENVS:
        _LMDB_ENVS[key] = lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False,
                                    max_readers=126)
    return _LMDB_ENVS[key]


class LMDBImages(Dataset):
    """Encoded images (JPEG, WEBP, ...) stored as values under string keys in an LMDB, the way LSUN ships them.

    Items are in key order (an LMDB cursor's order, as torchvision's ``LSUN``). The key list
    is made once and kept in ``cache_dir`` (default ``cache_root() / 'lsun'``), under a name
    derived from the LMDB's absolute path, and rebuilt when ``data.mdb`` changes; nothing is
    written to the working directory or into the data folder. The LMDB is opened lazily, once
    per process, so the dataset works with DataLoader workers.
    """

    def __init__(self, path: str | Path, preprocess: Callable, cache_dir: str | Path | None = None):
        try:
            import lmdb  # noqa: F401
        except ImportError as err:
            raise ImportError("reading LSUN LMDB files needs the 'lmdb' package: pip install lmdb "
                              "(or pip install -e '.[lsun]')") from err
        self.path, self.preprocess = Path(path).resolve(), preprocess
        self.cache_dir = Path(cache_dir) if cache_dir is not None else cache_root() / "lsun"
        self._env, self._pid = None, None
        self.keys = self._load_keys()

    def _open(self):
        if self._env is None or self._pid != os.getpid():
            self._env, self._pid = _lmdb_env(self.path), os.getpid()
        return self._env

    def _load_keys(self) -> list[bytes]:
        data = self.path / "data.mdb"
        st = data.stat() if data.is_file() else self.path.stat()
        stamp = {"path": str(self.path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        name = hashlib.sha1(str(self.path).encode()).hexdigest()[:16]
        cache = self.cache_dir / f"{self.path.name}-{name}.keys"
        try:
            header, *lines = cache.read_text().splitlines()
            if json.loads(header) == stamp:
                return [bytes.fromhex(line) for line in lines]
        except (OSError, ValueError):
            pass
        with self._open().begin(write=False) as txn:
            keys = list(txn.cursor().iternext(keys=True, values=False))
        try:  # best effort: a read-only cache folder only costs the listing next time
            from edvae_common.io import atomic_write_text

            atomic_write_text(cache, "\n".join([json.dumps(stamp), *(k.hex() for k in keys)]) + "\n")
        except OSError as err:
            logger.info("LSUN key cache not written (%s): %s", cache, err)
        return keys

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_env": None, "_pid": None}

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        with self._open().begin(write=False) as txn:
            buf = txn.get(self.keys[i])
        if buf is None:
            raise KeyError(f"key {self.keys[i]!r} is missing from '{self.path}' (was the LMDB changed?)")
        with Image.open(io.BytesIO(buf)) as img:
            return self.preprocess(img.convert("RGB"))


def load_lsun_church(root: str, split: str, cfg: DataConfig, preprocess: Preprocess) -> Dataset:
    """LSUN church_outdoor from its LMDBs: ``church_outdoor_train_lmdb`` (train), ``church_outdoor_val_lmdb`` (test)."""
    lmdb_dir = Path(root) / f"church_outdoor_{'train' if split == 'train' else 'val'}_lmdb"
    if not lmdb_dir.is_dir():
        raise DataNotFoundError(
            f"LSUN church_outdoor was not found: looked for '{lmdb_dir}'. Get it with the LSUN download script "
            "(github.com/fyu/lsun: download.py -c church_outdoor) and unzip it under data.path, or point data.path at "
            "an image folder (train/ and test/ subfolders), an .npz file or a Hub dataset (hf:user/name)."
        )
    ds = LMDBImages(lmdb_dir, preprocess)
    ds.split_rule = f"LSUN's own split: {lmdb_dir.name}"
    return ds


NAMED_LOADERS = {"cifar10": load_cifar10, "celeba": load_celeba, "lsun_church": load_lsun_church}
NATIVE_LAYOUT = {"cifar10": "cifar-10-batches-py", "lsun_church": "church_outdoor_train_lmdb"}  # celeba: _celeba_dir


def _uses_generic_loader(name: str, root: Path, download: bool) -> bool:
    """A named dataset reads ``root`` generically when it is an .npz, or an existing folder without the native layout."""
    if root.suffix == ".npz":
        return True
    native = _celeba_dir(root) is not None if name == "celeba" else (root / NATIVE_LAYOUT[name]).exists()
    return root.is_dir() and not native and not download


def build_dataset(cfg: DataConfig, split: str) -> Dataset:
    """The ``split`` ('train', 'test' or 'all') of the source ``cfg`` describes, as (3, S, S) float tensors in [0, 1].

    The dataset's ``split_rule`` says which images the split is (the source's own split, or a held-out one).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got '{split}'")
    name = cfg.dataset
    if name not in NAMED + GENERIC + ("auto",):
        raise ValueError(f"invalid value for config key 'data.dataset': '{name}'; "
                         f"use one of {', '.join(NAMED + GENERIC + ('auto',))}")
    preprocess = Preprocess(name if name in NAMED else "generic", cfg.image_size)
    if name in NAMED:
        root = cfg.path or os.path.join("data", name)
        if str(root).startswith(HUB_PREFIX):  # a Hub dataset with this dataset's preprocessing
            logger.info("data: %s from the datasets source '%s'", name, root[len(HUB_PREFIX):])
            return load_hf(root, split, cfg, preprocess)
        if _uses_generic_loader(name, Path(root), cfg.download):
            kind = detect_source(root)
            logger.info("data: %s from '%s' read as %s (%s preprocessing; a %s split)", name, root, kind, name,
                        "held-out" if kind == "npz" else "train/test-folder or held-out")
            return GENERIC_LOADERS[kind](root, split, cfg, preprocess)
        logger.info("data: %s from '%s' with its official %s split", name, root, split)
        if split == "all":
            parts = [NAMED_LOADERS[name](root, s, cfg, preprocess) for s in ("train", "test")]
            return ConcatImages(parts, " + ".join(p.split_rule for p in parts))
        return NAMED_LOADERS[name](root, split, cfg, preprocess)
    kind = detect_source(cfg.path) if name == "auto" else name
    if cfg.path is None:
        raise DataNotFoundError(f"data.dataset={name} needs data.path")
    return GENERIC_LOADERS[kind](cfg.path, split, cfg, preprocess)
