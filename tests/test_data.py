from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from conftest import make_idx_dataset, write_idx

from lit_defense.data import VisionDataModule, make_synthetic, random_crop_flip, read_idx
from lit_defense.errors import ConfigError, DataFormatError, DataNotFoundError


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_roundtrip(tmp_path, compress):
    arr = np.random.default_rng(0).integers(0, 256, (7, 5, 3)).astype(np.uint8)
    path = write_idx(tmp_path / "x-idx3-ubyte", arr, compress)
    out = read_idx(path)
    assert out.dtype == torch.uint8
    assert torch.equal(out, torch.from_numpy(arr))


def test_read_idx_truncated_file(tmp_path):
    arr = np.zeros((10, 28, 28), np.uint8)
    path = write_idx(tmp_path / "x-idx3-ubyte", arr)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataFormatError, match="truncated"):
        read_idx(path)


def test_read_idx_truncated_gzip(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (50, 28, 28)).astype(np.uint8)
    path = write_idx(tmp_path / "x-idx3-ubyte", arr, compress=True)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataFormatError, match="x-idx3-ubyte.gz"):
        read_idx(path)


def test_read_idx_bad_magic(tmp_path):
    path = tmp_path / "junk"
    path.write_bytes(b"PK\x03\x04not an idx file")
    with pytest.raises(DataFormatError, match="not an IDX file"):
        read_idx(path)


@pytest.mark.parametrize("compress", [False, True])
def test_datamodule_reads_idx_folder(tmp_path, compress):
    data = make_idx_dataset(tmp_path / "fm", compress=compress)
    dm = VisionDataModule("fashion_mnist", data_dir=str(tmp_path / "fm"), download=False, val_size=12, batch_size=8)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (48, 12, 20)
    x, y, idx = next(iter(dm.test_dataloader()))
    assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    images, labels = data["t10k"]
    assert torch.equal(y, torch.from_numpy(labels[:8]).long())
    assert torch.allclose(x[:, 0], torch.from_numpy(images[:8]).float() / 255)
    assert torch.equal(idx, torch.arange(8))


def test_datamodule_finds_torchvision_layout(tmp_path):
    make_idx_dataset(tmp_path / "FashionMNIST" / "raw", compress=False)
    dm = VisionDataModule("fashion_mnist", data_dir=str(tmp_path), download=False, val_size=10)
    dm.setup("fit")
    assert len(dm.train_set) == 50


def test_validation_split_is_seeded_and_disjoint(tmp_path):
    make_idx_dataset(tmp_path, n_train=100)
    a = VisionDataModule("mnist", data_dir=str(tmp_path), download=False, val_size=0.2, seed=3)
    b = VisionDataModule("mnist", data_dir=str(tmp_path), download=False, val_size=0.2, seed=3)
    c = VisionDataModule("mnist", data_dir=str(tmp_path), download=False, val_size=0.2, seed=4)
    for dm in (a, b, c):
        dm.setup("fit")
    assert len(a.val_set) == 20 and len(a.train_set) == 80
    assert torch.equal(a.val_set.images, b.val_set.images)
    assert not torch.equal(a.val_set.images, c.val_set.images)
    # no sample is in both splits: every (train, val) pair of images differs somewhere
    tr = a.train_set.images.flatten(1).float()
    va = a.val_set.images.flatten(1).float()
    assert torch.cdist(tr, va).min() > 0


def test_missing_data_offline_is_one_clear_error(tmp_path):
    dm = VisionDataModule("fashion_mnist", data_dir=str(tmp_path), download=False)
    with pytest.raises(DataNotFoundError) as info:
        dm.prepare_data()
    msg = str(info.value)
    assert "fashion_mnist" in msg and str(tmp_path) in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "download=true" in msg


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dataset="imagenet"), "unknown dataset 'imagenet'"),
        (dict(batch_size=0), "batch_size"),
        (dict(val_size=1.5), "val_size"),
        (dict(val_size=-3), "val_size"),
    ],
)
def test_bad_datamodule_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        VisionDataModule(**kwargs)


def test_val_size_larger_than_train_set():
    dm = VisionDataModule("synthetic", val_size=5000, synthetic_train_size=100)
    with pytest.raises(ConfigError, match="leaves no training data"):
        dm.setup("fit")


def test_synthetic_is_deterministic_and_any_shape():
    a = make_synthetic(64, num_classes=5, in_chans=3, image_size=32, seed=1)
    b = make_synthetic(64, num_classes=5, in_chans=3, image_size=32, seed=1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape == (64, 3, 32, 32) and set(a[1].tolist()) == set(range(5))
    dm = VisionDataModule("synthetic", val_size=16, synthetic_num_classes=5, synthetic_in_chans=3,
                          synthetic_image_size=32, synthetic_train_size=64)
    assert (dm.num_classes, dm.in_chans, dm.image_size) == (5, 3, 32)
    dm.setup("fit")
    x, y, _ = next(iter(dm.train_dataloader()))
    assert x.shape[1:] == (3, 32, 32)


def test_synthetic_train_and_test_share_classes_not_samples():
    train = make_synthetic(200, split_seed=0)[0].float()
    test = make_synthetic(200, split_seed=1)[0].float()
    assert torch.cdist(train.flatten(1), test.flatten(1)).min() > 0


def test_augment_keeps_shape_and_range_and_moves_pixels():
    torch.manual_seed(0)
    x = torch.rand(16, 3, 32, 32)
    out = random_crop_flip(x, padding=2, flip=True)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, x)
    # a translation never invents new values: every output pixel is an input pixel or padding
    for i in range(4):
        assert set(out[i].flatten().tolist()) <= set(x[i].flatten().tolist()) | {0.0}


def test_gzip_corruption_named_in_datamodule_error(tmp_path):
    make_idx_dataset(tmp_path, compress=True)
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(bad, "rb") as f:
        raw = f.read()
    with gzip.open(bad, "wb") as f:
        f.write(raw[:-28 * 28])  # one image short
    dm = VisionDataModule("fashion_mnist", data_dir=str(tmp_path), download=False, val_size=10)
    with pytest.raises(DataFormatError, match="train-images-idx3-ubyte.gz"):
        dm.setup("fit")
