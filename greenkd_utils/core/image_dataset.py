"""The in-memory form of every classification data set, and the stratified slices taken from it.

An :class:`ImageDataset` holds uint8 images of shape ``(N, C, H, W)``, int64
labels, the class names and the per-channel mean and std of the training
images (for normalisation). Augmentation and normalisation happen later, on
batches, so the same arrays serve every run. The readers build one with
:func:`dataset_from_arrays`; the smoke profile's subsets and the tau-choosing
validation split are stratified by class and deterministic from a seed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

logger = logging.getLogger(__name__)

TensorPair = Tuple[torch.Tensor, torch.Tensor]

# Images per chunk when computing channel statistics: bounds the float copy
# to a few hundred MB even for Tiny ImageNet's 100k images.
_STATS_CHUNK = 4096


class NamedClasses:
    """The classes of a data set that has ``class_names``."""

    @property
    def num_classes(self) -> int:
        """Number of classes (the length of :attr:`class_names`; a detection set's background is not one)."""
        return len(self.class_names)


# eq=False: field-wise == on tensors is ambiguous, identity is what we want.
@dataclass(eq=False)
class ImageDataset(NamedClasses):
    """A classification data set held in memory as uint8 tensors.

    Attributes:
        name: the data set's name (one of :data:`greenkd_utils.core.data.DATASETS` for loaded ones).
        train_images: uint8, ``(N, C, H, W)``, contiguous.
        train_labels: int64, ``(N,)``.
        test_images: uint8, ``(M, C, H, W)``.
        test_labels: int64, ``(M,)``.
        class_names: one name per class; label ``k`` is ``class_names[k]``.
        mean: per-channel mean of the training images on the [0, 1] scale.
        std: per-channel (population) std of the training images, same scale.
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    class_names: List[str]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]

    def __post_init__(self) -> None:
        # Catch a malformed loader early, not as a shape error deep in training.
        for split, images, labels in (
            ("train", self.train_images, self.train_labels),
            ("test", self.test_images, self.test_labels),
        ):
            if images.dtype != torch.uint8 or images.dim() != 4:
                raise ValueError(
                    f"{self.name}: {split}_images must be uint8 (N, C, H, W); "
                    f"got {images.dtype} with shape {tuple(images.shape)}"
                )
            if labels.dtype != torch.int64 or labels.shape != (images.shape[0],):
                raise ValueError(
                    f"{self.name}: {split}_labels must be int64 of shape "
                    f"({images.shape[0]},); got {labels.dtype} {tuple(labels.shape)}"
                )
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise ValueError(
                f"{self.name}: train and test images differ in shape: "
                f"{tuple(self.train_images.shape[1:])} vs {tuple(self.test_images.shape[1:])}"
            )
        height, width = self.train_images.shape[2:]
        if height != width:
            raise ValueError(f"{self.name}: images must be square; got {height}x{width}")
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ValueError(
                f"{self.name}: mean/std need one value per channel ({self.in_channels})"
            )

    def __repr__(self) -> str:
        # The default repr would print every pixel.
        return (
            f"ImageDataset(name={self.name!r}, train={len(self.train_labels)}, "
            f"test={len(self.test_labels)}, classes={self.num_classes}, "
            f"input_shape={self.input_shape})"
        )

    @property
    def input_shape(self) -> Tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        channels, height, width = self.train_images.shape[1:]
        return int(channels), int(height), int(width)

    @property
    def in_channels(self) -> int:
        """Number of image channels (1 for digits, 3 otherwise)."""
        return self.input_shape[0]

    @property
    def image_size(self) -> int:
        """Height (= width) of the square images in pixels."""
        return self.input_shape[1]

    def subset(
        self, train: Optional[int] = None, test: Optional[int] = None, seed: int = 0
    ) -> "ImageDataset":
        """A class-stratified random subset, deterministic from ``seed``.

        Used by the smoke profile to run the real pipeline on tiny slices.
        Every class present in a split keeps at least one image whenever the
        requested size allows it. ``None`` (or a size at least as large as the
        split) keeps the whole split. The images keep their original order.

        The subset keeps the parent's ``name``, class names and normalisation
        statistics: it is a cheaper version of the same experiment, so it is
        normalised exactly as the full data set would be.
        """
        # Separate streams, so the test selection does not depend on the train size.
        train_idx = _subset_indices(self.train_labels, train, seed, stream=0, split="train")
        test_idx = _subset_indices(self.test_labels, test, seed, stream=1, split="test")
        return ImageDataset(
            name=self.name,
            train_images=_take(self.train_images, train_idx),
            train_labels=_take(self.train_labels, train_idx),
            test_images=_take(self.test_images, test_idx),
            test_labels=_take(self.test_labels, test_idx),
            class_names=list(self.class_names),
            mean=tuple(self.mean),
            std=tuple(self.std),
        )

    def split_validation(self, fraction: float, seed: int) -> Tuple[TensorPair, TensorPair]:
        """Hold out a stratified ``fraction`` of the training split for validation.

        This is how the tuned baseline chooses tau without touching the test
        set. Deterministic from ``seed``; both parts keep the original order,
        and every class keeps at least one training image.

        Returns:
            ``((train_x, train_y), (val_x, val_y))``; with ``fraction == 0``
            the validation tensors are empty (zero rows, same trailing shape).
        """
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"fraction must be in [0, 1); got {fraction}")
        labels = self.train_labels
        n_val = int(round(fraction * len(labels)))
        rng = np.random.default_rng([seed, 2])
        counts = _class_counts(labels)
        # A class with a single image stays in training: the student must see it.
        capacity = np.maximum(counts - 1, 0)
        if n_val > capacity.sum():
            raise ValueError(
                f"fraction={fraction} asks for {n_val} validation images but only "
                f"{int(capacity.sum())} can be held out while keeping one training "
                "image per class"
            )
        val_idx = _stratified_pick(labels, _allocate(capacity, n_val, rng), rng)
        keep = torch.ones(len(labels), dtype=torch.bool)
        keep[val_idx] = False
        train_idx = torch.nonzero(keep).flatten()
        logger.debug("%s: %d train / %d validation images", self.name, len(train_idx), n_val)
        return (
            (_take(self.train_images, train_idx), _take(labels, train_idx)),
            (_take(self.train_images, val_idx), _take(labels, val_idx)),
        )


# --------------------------------------------------------------------------
# Stratified sampling
# --------------------------------------------------------------------------


def _class_counts(labels: torch.Tensor) -> np.ndarray:
    """Images per class, indexed by label (classes up to the largest label)."""
    if len(labels) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.bincount(labels.numpy())


def _allocate(capacity: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Split ``n`` picks over classes: one each first, the rest proportionally.

    ``capacity[k]`` is how many images class ``k`` can give. Proportional
    shares are floored and the leftovers go to the largest remainders (the
    largest-remainder method), which never exceeds a class's capacity.
    """
    present = np.flatnonzero(capacity > 0)
    alloc = np.zeros_like(capacity)
    if n <= 0:
        return alloc
    if n < len(present):
        # Too few picks for one per class: a random selection of classes.
        logger.warning(
            "asked for %d images from %d classes: not every class can be present", n, len(present)
        )
        alloc[rng.choice(present, size=n, replace=False)] = 1
        return alloc
    alloc[present] = 1
    rest = capacity - alloc
    remaining = n - len(present)
    if remaining == 0:
        return alloc
    share = remaining * rest / rest.sum()
    floor = np.floor(share).astype(np.int64)
    leftover = remaining - int(floor.sum())
    # Ties broken at random, so no class is systematically favoured.
    order = np.lexsort((rng.random(len(share)), -(share - floor)))
    floor[order[:leftover]] += 1
    return alloc + floor


def _stratified_pick(labels: torch.Tensor, per_class: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """Random indices, ``per_class[k]`` of them with label ``k``, in ascending order."""
    labels_np = labels.numpy()
    chosen = []
    for k, count in enumerate(per_class):
        if count:
            members = np.flatnonzero(labels_np == k)
            chosen.append(rng.choice(members, size=int(count), replace=False))
    if not chosen:
        return torch.zeros(0, dtype=torch.int64)
    return torch.from_numpy(np.sort(np.concatenate(chosen)).astype(np.int64))


def _subset_indices(
    labels: torch.Tensor, size: Optional[int], seed: int, stream: int, split: str
) -> Optional[torch.Tensor]:
    """Indices of a stratified subset of ``size`` images, or None to keep all."""
    if size is None:
        return None
    if size < 0:
        raise ValueError(f"{split} subset size must be >= 0 or None; got {size}")
    if size >= len(labels):
        logger.info("%s subset of %d >= %d images: keeping the whole split", split, size, len(labels))
        return None
    rng = np.random.default_rng([seed, stream])
    return _stratified_pick(labels, _allocate(_class_counts(labels), size, rng), rng)


def _take(tensor: torch.Tensor, indices: Optional[torch.Tensor]) -> torch.Tensor:
    """Rows ``indices`` of ``tensor`` as a new contiguous tensor (all rows if None)."""
    if indices is None:
        return tensor
    return tensor.index_select(0, indices).contiguous()


# --------------------------------------------------------------------------
# Building a data set from arrays
# --------------------------------------------------------------------------


def channel_stats(images: np.ndarray) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Per-channel mean and population std of uint8 ``(N, C, H, W)`` images, in [0, 1]."""
    channels = images.shape[1]
    total = np.zeros(channels)
    total_sq = np.zeros(channels)
    for start in range(0, len(images), _STATS_CHUNK):
        chunk = images[start : start + _STATS_CHUNK].astype(np.float64) / 255.0
        total += chunk.sum(axis=(0, 2, 3))
        total_sq += np.square(chunk).sum(axis=(0, 2, 3))
    count = max(images.shape[0] * images.shape[2] * images.shape[3], 1)
    mean = total / count
    # Clip: rounding can push a constant channel's variance a hair below zero.
    std = np.sqrt(np.clip(total_sq / count - mean**2, 0.0, None))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def dataset_from_arrays(
    name: str,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    class_names: Sequence[str],
) -> ImageDataset:
    """Wrap numpy arrays as an :class:`ImageDataset`, computing the train statistics."""
    train_images = np.ascontiguousarray(train_images, dtype=np.uint8)
    test_images = np.ascontiguousarray(test_images, dtype=np.uint8)
    mean, std = channel_stats(train_images)
    return ImageDataset(
        name=name,
        train_images=torch.from_numpy(train_images),
        train_labels=torch.from_numpy(np.asarray(train_labels, dtype=np.int64)),
        test_images=torch.from_numpy(test_images),
        test_labels=torch.from_numpy(np.asarray(test_labels, dtype=np.int64)),
        class_names=list(class_names),
        mean=mean,
        std=std,
    )

