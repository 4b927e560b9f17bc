"""Image classification data sets as in-memory uint8 tensors.

Every data set comes back as an
:class:`~greenkd_utils.core.image_dataset.ImageDataset`: uint8 images of shape
``(N, C, H, W)``, int64 labels, the class names and the per-channel mean and
std of the training images (for normalisation).

Four data sets are known (:data:`DATASETS`):

``digits``
    scikit-learn's bundled 8x8 handwritten digits (real data that ships with
    the package, so the demo and smoke profiles never need the network).
``cifar10`` / ``cifar100``
    The original "python version" pickle batches, read from a data root.
``tinyimagenet``
    The Stanford CS231n Tiny ImageNet folder tree, read from a data root
    (its ``val`` split is used as the test split: the official test labels
    were never published).

The paper profile reads a local data root and fails with a
:class:`~greenkd_utils.core.dataset_sources.DatasetNotFoundError` that
says exactly what to download, from where, and where to put it.
"""

from __future__ import annotations

import logging
from typing import Callable, Dict, Optional

import numpy as np

from greenkd_utils.core.cifar import load_cifar10, load_cifar100
from greenkd_utils.core.dataset_sources import PathLike
from greenkd_utils.core.image_dataset import ImageDataset, dataset_from_arrays
from greenkd_utils.core.tiny_imagenet import load_tinyimagenet

logger = logging.getLogger(__name__)

DATASETS = ("digits", "cifar10", "cifar100", "tinyimagenet")


def _load_digits() -> ImageDataset:
    """scikit-learn's digits: 1797 8x8 images, values 0..16 scaled to 0..255.

    The split is fixed (stratified, 25% test, ``random_state=0``), so every
    profile and every seed sees the same 1347 training and 450 test images.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    labels = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.25, random_state=0, stratify=labels
    )
    return dataset_from_arrays("digits", x_train, y_train, x_test, y_test, [str(d) for d in range(10)])


_LOADERS: Dict[str, Callable[[Optional[PathLike], bool], ImageDataset]] = {
    "digits": lambda root, download: _load_digits(),
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "tinyimagenet": load_tinyimagenet,
}


def load_dataset(name: str, root: Optional[PathLike] = None, download: bool = False) -> ImageDataset:
    """Load one of :data:`DATASETS` into memory.

    Args:
        name: ``"digits"``, ``"cifar10"``, ``"cifar100"`` or ``"tinyimagenet"``.
        root: the data root holding the extracted archives (e.g.
            ``root/cifar-10-batches-py/``). ``None`` means the
            ``GREENKD_DATA_ROOT`` environment variable. Ignored for digits,
            which ships with scikit-learn.
        download: fetch CIFAR-10/100 with torchvision when the folder is
            missing. Tiny ImageNet must be downloaded by hand.

    Raises:
        ValueError: ``name`` is not one of :data:`DATASETS`.
        DatasetNotFoundError: the data is not under ``root``; the message says
            what to download, from where, and where to extract it.
    """
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    dataset = _LOADERS[name](root, download)
    logger.info("loaded %r", dataset)
    return dataset
