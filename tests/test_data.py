"""Tests for the classification data sets: greenkd_utils.core.data and the readers and container it builds on.

The paper data sets are faked by writing tiny files in their real on-disk
formats (CIFAR's Python-2 style pickles with bytes keys, Tiny ImageNet's
folder tree of JPEGs; tests/dataset_writers.py), so the readers are exercised
without any download.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from dataset_writers import (
    TINY_WNIDS,
    write_cifar10,
    write_cifar100,
    write_tinyimagenet,
)

from greenkd_utils.core import tiny_imagenet
from greenkd_utils.core.data import DATASETS, load_dataset
from greenkd_utils.core.dataset_sources import DATA_ROOT_ENV, DatasetNotFoundError
from greenkd_utils.core.image_dataset import ImageDataset

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


@pytest.fixture(autouse=True)
def _no_env_root(monkeypatch):
    # A developer's own GREENKD_DATA_ROOT must not leak into the tests.
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)


# --------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    return load_dataset("digits")


def test_digits_split_shapes_and_range(digits):
    assert digits.name == "digits"
    assert digits.train_images.shape == (1347, 1, 8, 8)
    assert digits.test_images.shape == (450, 1, 8, 8)
    assert digits.train_images.dtype == torch.uint8 and digits.train_images.is_contiguous()
    assert digits.train_labels.dtype == torch.int64
    assert digits.num_classes == 10 and digits.class_names == [str(d) for d in range(10)]
    assert digits.input_shape == (1, 8, 8) and digits.in_channels == 1 and digits.image_size == 8
    assert int(digits.train_images.min()) == 0 and int(digits.train_images.max()) == 255
    assert set(digits.test_labels.tolist()) == set(range(10))


def test_digits_scaling_and_stats(digits):
    # 0..16 scaled to 0..255: value 8 becomes round(127.5) = 128 (numpy rounds half to even).
    allowed = {int(np.rint(v * 255 / 16)) for v in range(17)}
    assert set(torch.unique(digits.train_images).tolist()) <= allowed
    pixels = digits.train_images.double() / 255
    assert digits.mean[0] == pytest.approx(pixels.mean().item())
    assert digits.std[0] == pytest.approx(pixels.std(unbiased=False).item())


def test_digits_split_is_fixed():
    first, second = load_dataset("digits"), load_dataset("digits", root="/ignored")
    assert torch.equal(first.train_images, second.train_images)
    assert torch.equal(first.test_labels, second.test_labels)


# --------------------------------------------------------------------------
# CIFAR
# --------------------------------------------------------------------------


def test_cifar10_reads_real_format(tmp_path):
    written = write_cifar10(tmp_path)
    ds = load_dataset("cifar10", root=tmp_path)
    assert ds.train_images.shape == (20, 3, 32, 32) and ds.test_images.shape == (6, 3, 32, 32)
    assert ds.train_images.dtype == torch.uint8 and ds.train_images.is_contiguous()
    assert ds.train_labels.tolist() == written["train_labels"]
    assert ds.test_labels.tolist() == written["test_labels"]
    assert ds.class_names == written["names"]
    # Channel-major rows: bytes 0..1023 are red, 1024..2047 green, then blue.
    rows = written["train_rows"]
    assert int(ds.train_images[0, 0, 0, 1]) == rows[0, 1]
    assert int(ds.train_images[0, 1, 0, 0]) == rows[0, 1024]
    assert int(ds.train_images[0, 2, 1, 0]) == rows[0, 2048 + 32]
    assert np.array_equal(ds.train_images.numpy(), rows.reshape(-1, 3, 32, 32))
    assert np.array_equal(ds.test_images.numpy(), written["test_rows"].reshape(-1, 3, 32, 32))
    expected_mean = (rows.reshape(-1, 3, 1024) / 255).mean(axis=(0, 2))
    assert ds.mean == pytest.approx(tuple(expected_mean))


def test_cifar100_reads_fine_labels(tmp_path):
    written = write_cifar100(tmp_path)
    ds = load_dataset("cifar100", root=str(tmp_path))
    rows, fine = written["train"]
    assert ds.num_classes == 100 and ds.class_names == written["names"]
    assert ds.train_labels.tolist() == fine
    assert ds.test_labels.tolist() == written["test"][1]
    assert np.array_equal(ds.train_images.numpy(), rows.reshape(-1, 3, 32, 32))
    assert ds.input_shape == (3, 32, 32)


def test_root_from_environment(tmp_path, monkeypatch):
    write_cifar10(tmp_path)
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path))
    assert len(load_dataset("cifar10").train_labels) == 20


def test_download_uses_torchvision_then_reads_our_way(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    class FakeCIFAR10:
        def __init__(self, root, train=True, download=False):
            calls.append((root, download))
            write_cifar10(Path(root))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    ds = load_dataset("cifar10", root=tmp_path, download=True)
    assert calls == [(str(tmp_path), True)] and len(ds.train_labels) == 20
    load_dataset("cifar10", root=tmp_path, download=True)  # present now: no second fetch
    assert len(calls) == 1


def test_failed_download_explains_manual_steps(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", offline)
    with pytest.raises(DatasetNotFoundError, match="network unreachable") as info:
        load_dataset("cifar100", root=tmp_path, download=True)
    assert CIFAR100_URL in str(info.value)


# --------------------------------------------------------------------------
# Tiny ImageNet
# --------------------------------------------------------------------------


def test_tinyimagenet_reads_tree_and_caches(tmp_path, monkeypatch):
    folder = write_tinyimagenet(tmp_path)
    ds = load_dataset("tinyimagenet", root=tmp_path)
    assert ds.train_images.shape == (7, 3, 64, 64) and ds.test_images.shape == (4, 3, 64, 64)
    assert ds.train_images.dtype == torch.uint8 and ds.train_labels.dtype == torch.int64
    # Labels follow wnids.txt line order (n02, n01, n03), names come from words.txt.
    assert ds.class_names == ["tabby", "goldfish", "school bus"]
    assert ds.train_labels.tolist() == [0, 0, 1, 1, 2, 2, 2]
    assert ds.test_labels.tolist() == [2, 1, 0, 1]
    # Solid colours survive JPEG to within a few levels.
    red = ds.train_images[0].float().mean(dim=(1, 2))
    assert red.tolist() == pytest.approx([200, 30, 30], abs=4)
    # Sorted file names put n03_gray after n03_0 and n03_1: grayscale became RGB.
    gray = ds.train_images[6]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert abs(gray.float().mean().item() - 128) < 3

    cache = folder / "greenkd_cache.npz"
    assert cache.is_file()

    def no_decoding(path):
        raise AssertionError("the second load must come from the cache")

    monkeypatch.setattr(tiny_imagenet, "_decode_image", no_decoding)
    again = load_dataset("tinyimagenet", root=tmp_path)
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(ds, field), getattr(again, field))
    assert again.class_names == ds.class_names and again.mean == ds.mean


def test_tinyimagenet_without_words_or_writable_folder(tmp_path, monkeypatch):
    folder = write_tinyimagenet(tmp_path, per_class=1)
    (folder / "words.txt").unlink()
    monkeypatch.setattr(tiny_imagenet.os, "access", lambda path, mode: False)
    ds = load_dataset("tinyimagenet", root=tmp_path)
    assert ds.class_names == TINY_WNIDS
    assert not (folder / "greenkd_cache.npz").exists()


def test_tinyimagenet_stale_cache_is_rebuilt(tmp_path):
    folder = write_tinyimagenet(tmp_path, per_class=1)
    load_dataset("tinyimagenet", root=tmp_path)
    (folder / "wnids.txt").write_text("n01\nn02\nn03\n")  # a different class order
    ds = load_dataset("tinyimagenet", root=tmp_path)
    assert ds.class_names == ["goldfish", "tabby", "school bus"]
    assert ds.train_labels.tolist() == [0, 1, 2, 2]  # n03 has the extra grayscale image


def test_tinyimagenet_download_is_manual(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("tinyimagenet", root=tmp_path, download=True)
    message = str(info.value)
    assert TINY_URL in message and str(tmp_path) in message


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name, url", [
    ("cifar10", CIFAR10_URL), ("cifar100", CIFAR100_URL), ("tinyimagenet", TINY_URL),
])
def test_missing_root_says_how_to_provide_one(name, url):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(name)
    message = str(info.value)
    assert url in message and "GREENKD_DATA_ROOT" in message and "--data-root" in message


@pytest.mark.parametrize("name, folder, url", [
    ("cifar10", "cifar-10-batches-py", CIFAR10_URL),
    ("cifar100", "cifar-100-python", CIFAR100_URL),
    ("tinyimagenet", "tiny-imagenet-200", TINY_URL),
])
def test_missing_folder_names_path_and_url(tmp_path, name, folder, url):
    with pytest.raises(FileNotFoundError) as info:  # DatasetNotFoundError is one
        load_dataset(name, root=tmp_path)
    assert isinstance(info.value, DatasetNotFoundError)
    message = str(info.value)
    assert str(tmp_path / folder) in message and url in message


def test_incomplete_cifar_names_missing_file(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError, match="data_batch_3"):
        load_dataset("cifar10", root=tmp_path)


def test_unknown_dataset_lists_choices():
    with pytest.raises(ValueError) as info:
        load_dataset("mnist")
    assert all(name in str(info.value) for name in DATASETS)


# --------------------------------------------------------------------------
# subset and split_validation
# --------------------------------------------------------------------------


def indexed_dataset(n_train: int = 300, n_test: int = 100, classes: int = 5) -> ImageDataset:
    """Every image encodes its own index in its pixels, so rows can be traced."""

    def images(n: int, offset: int) -> torch.Tensor:
        idx = torch.arange(offset, offset + n)
        return torch.stack([idx // 256, idx % 256, idx // 256, idx % 256], dim=1).reshape(n, 1, 2, 2).to(torch.uint8)

    return ImageDataset(
        name="indexed",
        train_images=images(n_train, 0),
        train_labels=torch.arange(n_train) % classes,
        test_images=images(n_test, 10_000),
        test_labels=torch.arange(n_test) % classes,
        class_names=[f"c{k}" for k in range(classes)],
        mean=(0.5,),
        std=(0.25,),
    )


def row_ids(images: torch.Tensor) -> list[int]:
    flat = images.reshape(len(images), -1).long()
    return (flat[:, 0] * 256 + flat[:, 1]).tolist()


def test_subset_sizes_stratified_and_deterministic(digits):
    small = digits.subset(train=100, test=30, seed=3)
    assert len(small.train_labels) == 100 and len(small.test_labels) == 30
    assert small.train_images.shape == (100, 1, 8, 8) and small.train_images.is_contiguous()
    assert set(small.train_labels.tolist()) == set(range(10))
    assert set(small.test_labels.tolist()) == set(range(10))
    assert np.bincount(small.train_labels.numpy()).tolist() == [10] * 10  # digits is balanced
    assert small.class_names == digits.class_names and small.mean == digits.mean
    same = digits.subset(train=100, test=30, seed=3)
    assert torch.equal(small.train_images, same.train_images)
    assert torch.equal(small.test_labels, same.test_labels)
    other = digits.subset(train=100, test=30, seed=4)
    assert not torch.equal(small.train_images, other.train_images)


def test_subset_rows_come_from_parent_without_repeats():
    ds = indexed_dataset()
    small = ds.subset(train=50, test=None, seed=0)
    ids = row_ids(small.train_images)
    assert len(set(ids)) == 50 and ids == sorted(ids)
    assert small.train_labels.tolist() == [i % 5 for i in ids]
    assert small.test_images is ds.test_images  # None keeps the split as it is


def test_subset_edge_sizes():
    ds = indexed_dataset()
    assert len(ds.subset(train=10_000).train_labels) == 300  # larger than the split: all of it
    assert len(ds.subset(train=0).train_labels) == 0
    tiny = ds.subset(train=3, seed=1)  # fewer picks than classes: distinct classes
    assert len(set(tiny.train_labels.tolist())) == 3
    with pytest.raises(ValueError, match=">= 0"):
        ds.subset(train=-1)


def test_subset_keeps_class_proportions():
    labels = torch.tensor([0] * 80 + [1] * 15 + [2] * 5)
    ds = indexed_dataset(n_train=100)
    ds.train_labels = labels
    counts = np.bincount(ds.subset(train=20, seed=0).train_labels.numpy(), minlength=3)
    assert counts.sum() == 20 and counts.min() >= 1
    assert counts[0] > counts[1] > 0


def test_split_validation_disjoint_stratified_deterministic():
    ds = indexed_dataset()
    (train_x, train_y), (val_x, val_y) = ds.split_validation(0.2, seed=7)
    assert len(val_y) == 60 and len(train_y) == 240
    assert np.bincount(val_y.numpy()).tolist() == [12] * 5
    train_ids, val_ids = set(row_ids(train_x)), set(row_ids(val_x))
    assert not train_ids & val_ids and len(train_ids | val_ids) == 300
    assert train_y.tolist() == [i % 5 for i in row_ids(train_x)]
    (_, _), (val_x2, _) = ds.split_validation(0.2, seed=7)
    assert torch.equal(val_x, val_x2)
    (_, _), (val_x3, _) = ds.split_validation(0.2, seed=8)
    assert not torch.equal(val_x, val_x3)


def test_split_validation_on_digits(digits):
    (train_x, train_y), (val_x, val_y) = digits.split_validation(0.1, seed=0)
    assert len(val_y) == 135 and len(train_y) == 1347 - 135
    assert set(val_y.tolist()) == set(range(10)) and set(train_y.tolist()) == set(range(10))
    assert val_x.dtype == torch.uint8 and val_x.shape[1:] == (1, 8, 8)


def test_split_validation_zero_and_bad_fractions():
    ds = indexed_dataset()
    (train_x, train_y), (val_x, val_y) = ds.split_validation(0.0, seed=0)
    assert torch.equal(train_x, ds.train_images) and torch.equal(train_y, ds.train_labels)
    assert val_x.shape == (0, 1, 2, 2) and val_y.shape == (0,) and val_y.dtype == torch.int64
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            ds.split_validation(bad, seed=0)


def test_dataset_validates_its_tensors():
    ds = indexed_dataset()
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset("bad", ds.train_images.float(), ds.train_labels, ds.test_images,
                     ds.test_labels, ds.class_names, ds.mean, ds.std)
    with pytest.raises(ValueError, match="labels"):
        ImageDataset("bad", ds.train_images, ds.train_labels[:-1], ds.test_images,
                     ds.test_labels, ds.class_names, ds.mean, ds.std)
    assert "indexed" in repr(ds) and "300" in repr(ds)
