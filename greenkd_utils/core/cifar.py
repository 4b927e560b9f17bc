"""CIFAR-10 and CIFAR-100, read from the original "python version" pickle batches under a data root."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np

from greenkd_utils.core.dataset_sources import (
    DatasetNotFoundError,
    PathLike,
    damaged_error,
    how_to_get,
    incomplete_error,
    source_folder,
)
from greenkd_utils.core.image_dataset import ImageDataset, dataset_from_arrays

logger = logging.getLogger(__name__)


def _why_unreadable(head: bytes, error: Exception) -> str:
    text = head.lstrip().lower()
    if not head:
        return "it is empty"
    if text.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")):
        return "it is a web page, not a CIFAR pickle (a download that failed and saved an error page)"
    return f"it is truncated or damaged ({type(error).__name__})"


def _unpickle(name: str, root: Path, path: Path, *fields: str) -> Dict[Any, Any]:
    """One CIFAR pickle file, which must be a record holding ``fields``.

    The files were written by Python 2; ``encoding="bytes"`` keeps their keys
    and strings as bytes instead of guessing a text encoding. Only unpickle
    files you downloaded yourself from the official source: pickle can run code.
    """
    if not path.is_file():
        raise incomplete_error(name, root, path)
    head = b""
    try:
        with open(path, "rb") as handle:
            head = handle.read(64)
            handle.seek(0)
            record = pickle.load(handle, encoding="bytes")
    except Exception as error:  # pickle raises UnpicklingError, EOFError, ValueError, ... on bad bytes
        raise damaged_error(name, root, path, _why_unreadable(head, error)) from None
    if not isinstance(record, dict):
        raise damaged_error(name, root, path, f"it holds a {type(record).__name__}, not a CIFAR record")
    missing = [key for key in fields if key not in record and key.encode("ascii") not in record]
    if missing:
        raise damaged_error(name, root, path, f"it has no {', '.join(missing)} entry")
    return record


def _read_batch(name: str, root: Path, path: Path, label_key: str) -> Tuple[np.ndarray, np.ndarray]:
    """Images and labels of the CIFAR batch file ``path``."""
    record = _unpickle(name, root, path, "data", label_key)
    try:
        images, labels = _cifar_arrays(record, label_key)
    except (ValueError, TypeError, OverflowError) as error:
        raise damaged_error(name, root, path, str(error)) from None
    if len(images) != len(labels):
        raise damaged_error(name, root, path, f"it has {len(images)} images but {len(labels)} labels")
    return images, labels


def _field(record: Dict[Any, Any], key: str) -> Any:
    """``record[key]`` whether the pickle stored the key as bytes (the real files) or str."""
    for candidate in (key.encode("ascii"), key):
        if candidate in record:
            return record[candidate]
    raise KeyError(f"CIFAR record has no {key!r} entry; keys are {sorted(map(str, record))}")


def _text(value: Union[bytes, str]) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _cifar_arrays(record: Dict[Any, Any], label_key: str) -> Tuple[np.ndarray, np.ndarray]:
    """Images and labels of one CIFAR batch.

    Each row holds 3072 bytes: the 1024 red values, then green, then blue,
    each plane row-major, so a plain reshape gives ``(N, 3, 32, 32)``.
    """
    data = np.asarray(_field(record, "data"), dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"CIFAR data must be (N, 3072) rows; got shape {data.shape}")
    labels = np.asarray(_field(record, label_key), dtype=np.int64)
    return data.reshape(-1, 3, 32, 32), labels


def _download_cifar(name: str, root: Path) -> None:
    """Fetch a CIFAR archive with torchvision (which also checks its MD5)."""
    import torchvision.datasets

    dataset_cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    logger.info("Downloading %s into %s with torchvision", name, root)
    try:
        dataset_cls(root=str(root), train=True, download=True)
    except Exception as error:  # network, disk or checksum: all end the same way
        raise DatasetNotFoundError(
            f"Could not download {name} into {root} ({error}). {how_to_get(name, str(root))}"
        ) from error


def load_cifar10(root: Optional[PathLike], download: bool) -> ImageDataset:
    """CIFAR-10 from ``{root}/cifar-10-batches-py/`` (50000 train, 10000 test)."""
    root_path, folder = source_folder("cifar10", root, download, _download_cifar)
    train = [_read_batch("cifar10", root_path, folder / f"data_batch_{i}", "labels") for i in range(1, 6)]
    test_images, test_labels = _read_batch("cifar10", root_path, folder / "test_batch", "labels")
    meta = _unpickle("cifar10", root_path, folder / "batches.meta", "label_names")
    names = [_text(n) for n in _field(meta, "label_names")]
    return dataset_from_arrays(
        "cifar10",
        np.concatenate([images for images, _ in train]),
        np.concatenate([labels for _, labels in train]),
        test_images,
        test_labels,
        names,
    )


def load_cifar100(root: Optional[PathLike], download: bool) -> ImageDataset:
    """CIFAR-100 from ``{root}/cifar-100-python/`` with the 100 fine labels."""
    root_path, folder = source_folder("cifar100", root, download, _download_cifar)
    train_images, train_labels = _read_batch("cifar100", root_path, folder / "train", "fine_labels")
    test_images, test_labels = _read_batch("cifar100", root_path, folder / "test", "fine_labels")
    meta = _unpickle("cifar100", root_path, folder / "meta", "fine_label_names")
    names = [_text(n) for n in _field(meta, "fine_label_names")]
    return dataset_from_arrays("cifar100", train_images, train_labels, test_images, test_labels, names)

