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
``datasets`` folder or a Hub id); ``auto`` guesses which from ``path``. Sources
without a test split hold out a fixed, seeded ``test_fraction``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import DataConfig
from .preprocess import Preprocess

NAMED = ("cifar10", "celeba", "lsun_church")
GENERIC = ("npz", "folder", "hf")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
SPLITS = ("train", "test")
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
            return self.preprocess(img.convert("RGB"))


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


def held_out_split(n: int, split: str, fraction: float, seed: int) -> np.ndarray:
    """Indices of a fixed, seeded train/test split of ``n`` items (test = the first ``fraction`` of a permutation)."""
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
    return ArrayDataset(images, held_out_split(len(images), split, cfg.test_fraction, cfg.split_seed), preprocess,
                        labels)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def load_folder(path: str, split: str, cfg: DataConfig, preprocess: Preprocess) -> Dataset:
    root = Path(path)
    if not root.is_dir():
        raise DataNotFoundError(f"image folder '{path}' does not exist")
    split_dirs = {"train": root / "train", "test": root / "test"}
    if split_dirs["train"].is_dir() and split_dirs["test"].is_dir():
        files = _image_files(split_dirs[split])
    else:
        all_files = _image_files(root)
        files = [all_files[i] for i in held_out_split(len(all_files), split, cfg.test_fraction, cfg.split_seed)] \
            if len(all_files) >= 2 else all_files
    if not files:
        raise DataNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found under '{root}' for split '{split}'")
    return FileDataset(files, preprocess)


def load_hf(path: str, split: str, cfg: DataConfig, preprocess: Preprocess) -> Dataset:
    import datasets

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
    if isinstance(ds, datasets.DatasetDict):
        aliases = {"train": ["train"], "test": ["test", "validation", "valid", "val"]}
        name = next((s for s in aliases[split] if s in ds), None)
        if name is not None:
            part, indices = ds[name], None
        else:
            part = ds[next(iter(ds))]
            indices = held_out_split(len(part), split, cfg.test_fraction, cfg.split_seed)
    else:
        part, indices = ds, held_out_split(len(ds), split, cfg.test_fraction, cfg.split_seed)
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
    return WrappedDataset(base, preprocess)


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
        return WrappedDataset(base, preprocess)
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
    return FileDataset(files, preprocess)


def load_lsun_church(root: str, split: str, cfg: DataConfig, preprocess: Preprocess) -> Dataset:
    lmdb_dir = Path(root) / f"church_outdoor_{'train' if split == 'train' else 'val'}_lmdb"
    if not lmdb_dir.is_dir():
        raise DataNotFoundError(
            f"LSUN church_outdoor was not found: looked for '{lmdb_dir}'. Get it with the LSUN download script "
            "(github.com/fyu/lsun: download.py -c church_outdoor) and unzip it under data.path, or point data.path at "
            "an image folder (train/ and test/ subfolders) or an .npz file."
        )
    try:
        from torchvision.datasets import LSUN
    except ImportError as err:  # pragma: no cover
        raise ImportError("reading LSUN LMDB files needs the 'lmdb' package: pip install lmdb") from err
    try:
        base = LSUN(root, classes=[lmdb_dir.name[: -len("_lmdb")]])
    except ImportError as err:
        raise ImportError("reading LSUN LMDB files needs the 'lmdb' package: pip install lmdb") from err
    return WrappedDataset(base, preprocess)


NAMED_LOADERS = {"cifar10": load_cifar10, "celeba": load_celeba, "lsun_church": load_lsun_church}
NATIVE_LAYOUT = {"cifar10": "cifar-10-batches-py", "lsun_church": "church_outdoor_train_lmdb"}  # celeba: _celeba_dir


def _uses_generic_loader(name: str, root: Path, download: bool) -> bool:
    """A named dataset reads ``root`` generically when it is an .npz, or an existing folder without the native layout."""
    if root.suffix == ".npz":
        return True
    native = _celeba_dir(root) is not None if name == "celeba" else (root / NATIVE_LAYOUT[name]).exists()
    return root.is_dir() and not native and not download


def build_dataset(cfg: DataConfig, split: str) -> Dataset:
    """The ``split`` ('train' or 'test') of the source ``cfg`` describes, as (3, S, S) float tensors in [0, 1]."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got '{split}'")
    name = cfg.dataset
    if name not in NAMED + GENERIC + ("auto",):
        raise ValueError(f"invalid value for config key 'data.dataset': '{name}'; "
                         f"use one of {', '.join(NAMED + GENERIC + ('auto',))}")
    preprocess = Preprocess(name if name in NAMED else "generic", cfg.image_size)
    if name in NAMED:
        root = cfg.path or os.path.join("data", name)
        if _uses_generic_loader(name, Path(root), cfg.download):
            kind = detect_source(root)
            logger.info("data: %s from '%s' read as %s (%s preprocessing; a %s split)", name, root, kind, name,
                        "held-out" if kind == "npz" else "train/test-folder or held-out")
            return GENERIC_LOADERS[kind](root, split, cfg, preprocess)
        logger.info("data: %s from '%s' with its official %s split", name, root, split)
        return NAMED_LOADERS[name](root, split, cfg, preprocess)
    kind = detect_source(cfg.path) if name == "auto" else name
    if cfg.path is None:
        raise DataNotFoundError(f"data.dataset={name} needs data.path")
    return GENERIC_LOADERS[kind](cfg.path, split, cfg, preprocess)
