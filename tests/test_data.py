"""Data sources: the developer .npz files, image folders, saved datasets, splits and errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from stage1_tokenizer.config import DataConfig
from stage1_tokenizer.data import DataNotFoundError, Preprocess, build_dataset, held_out_split
from tests.conftest import write_celeba_folder


def test_held_out_split_is_fixed_and_disjoint():
    train, test = held_out_split(1000, "train", 0.1, 0), held_out_split(1000, "test", 0.1, 0)
    assert len(test) == 100 and len(train) == 900 and not set(train) & set(test)
    assert np.array_equal(test, held_out_split(1000, "test", 0.1, 0))
    assert not np.array_equal(test, held_out_split(1000, "test", 0.1, 1))


def test_real_cifar_npz(cifar_npz):
    cfg = DataConfig(dataset="cifar10", path=str(cifar_npz))
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert len(train) == 22_500 and len(test) == 2_500
    x = train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    raw = np.load(cifar_npz)["images"]
    assert torch.equal((x * 255).round().byte().permute(1, 2, 0), torch.from_numpy(raw[train.indices[0]]))


def test_auto_detection_of_npz_and_folder(synthetic_npz, tmp_path):
    assert len(build_dataset(DataConfig(dataset="auto", path=str(synthetic_npz)), "test")) == 10
    folder = tmp_path / "imgs"
    (folder / "train").mkdir(parents=True)
    (folder / "test").mkdir()
    for i in range(5):
        Image.fromarray(np.full((40, 48, 3), i * 40, np.uint8)).save(folder / "train" / f"{i}.png")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "test" / "a.jpg")
    train = build_dataset(DataConfig(dataset="auto", path=str(folder)), "train")
    assert len(train) == 5 and train[0].shape == (3, 32, 32)  # resized shorter side + center crop
    assert len(build_dataset(DataConfig(dataset="folder", path=str(folder)), "test")) == 1


def test_saved_hf_dataset(tmp_path):
    import datasets

    images = [Image.fromarray(np.full((32, 32, 3), i, np.uint8)) for i in range(20)]
    ds = datasets.Dataset.from_dict({"img": images, "label": list(range(20))},
                                    features=datasets.Features({"img": datasets.Image(), "label": datasets.Value("int64")}))
    datasets.DatasetDict({"train": ds.select(range(15)), "test": ds.select(range(15, 20))}).save_to_disk(tmp_path / "hf")
    cfg = DataConfig(dataset="auto", path=str(tmp_path / "hf"))
    assert len(build_dataset(cfg, "train")) == 15 and len(build_dataset(cfg, "test")) == 5
    x = build_dataset(cfg, "test")[0]
    assert x.shape == (3, 32, 32) and abs(x.max().item() - 15 / 255) < 1e-6


def test_celeba_preprocessing_crops_140_then_resizes_to_64():
    raw = np.zeros((218, 178, 3), np.uint8)
    raw[39:179, 19:159] = 255  # exactly the central 140x140 window
    out = Preprocess("celeba", 64)(Image.fromarray(raw))
    assert out.shape == (3, 64, 64) and out.min() > 0.99  # all white: the crop removed the black border
    already = np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.uint8)
    assert torch.equal(Preprocess("celeba", 64)(already), torch.from_numpy(already).permute(2, 0, 1).float() / 255)


def test_lsun_preprocessing_squeezes_to_128_without_cropping():
    raw = np.zeros((256, 341, 3), np.uint8)
    raw[:, :20] = 255  # a white stripe at the left edge: a center crop would remove it
    out = Preprocess("lsun_church", 128)(Image.fromarray(raw))
    assert out.shape == (3, 128, 128)
    assert out[:, :, :5].mean() > 0.9 and out[:, :, 20:].max() < 0.05


def test_celeba_official_partition_from_the_aligned_images(tmp_path):
    write_celeba_folder(tmp_path / "celeba_root" / "celeba", n_train=3, n_valid=1, n_test=2, step=30)
    cfg = DataConfig(dataset="celeba", path=str(tmp_path / "celeba_root"), image_size=64)
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert len(train) == 3 and len(test) == 2  # 'valid' (000004) is in neither
    assert train[0].shape == (3, 64, 64)
    assert [f.name for f in test.files] == ["000005.jpg", "000006.jpg"]


def test_missing_data_messages(tmp_path):
    with pytest.raises(DataNotFoundError, match="CIFAR-10 was not found.*data.download=true"):
        build_dataset(DataConfig(dataset="cifar10", path=str(tmp_path / "none")), "train")
    with pytest.raises(DataNotFoundError, match="church_outdoor_train_lmdb.*download.py"):
        build_dataset(DataConfig(dataset="lsun_church", path=str(tmp_path / "none"), image_size=128), "train")
    with pytest.raises(DataNotFoundError, match="CelebA was not found.*img_align_celeba/ and list_eval_partition.txt"):
        build_dataset(DataConfig(dataset="celeba", path=str(tmp_path / "none"), image_size=64), "train")
    with pytest.raises(DataNotFoundError, match="no .npz file"):
        build_dataset(DataConfig(dataset="npz", path=str(tmp_path / "x.npz")), "train")
    with pytest.raises(DataNotFoundError, match="does not exist"):
        build_dataset(DataConfig(dataset="auto", path=str(tmp_path / "missing_dir")), "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match="no image files"):
        build_dataset(DataConfig(dataset="folder", path=str(tmp_path / "empty")), "train")


def test_bad_npz_content(tmp_path):
    np.savez(tmp_path / "bad.npz", pictures=np.zeros((4, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="no 'images' array.*pictures"):
        build_dataset(DataConfig(dataset="npz", path=str(tmp_path / "bad.npz")), "train")
    np.savez(tmp_path / "float.npz", images=np.zeros((4, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="must be uint8"):
        build_dataset(DataConfig(dataset="npz", path=str(tmp_path / "float.npz")), "train")


def test_unknown_dataset_name_is_a_config_error():
    from edvae_common import ConfigError, load_config
    from stage1_tokenizer.config import Stage1Config

    with pytest.raises(ConfigError, match="data.dataset.*'cifar' is not one of"):
        load_config(Stage1Config, "configs/stage1/cifar10.yaml", ["data.dataset=cifar"])
