"""What a detection data set is in memory: square uint8 images and, per image, its boxes, labels and flags.

A :class:`DetectionDataset` keeps every image resized to one square size
(``image_size`` x ``image_size``, as SSD sees it) and, per image, its boxes in
pixel coordinates of that resized image (``x1, y1, x2, y2``, continuous, so a
box covering pixels 0..9 is ``[0, 10)``), class labels ``1..C`` (0 is SSD's
background class) and VOC's "difficult" flags. Training ignores difficult
objects; evaluation neither rewards nor penalises detections of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from greenkd_utils.core.image_dataset import NamedClasses, channel_stats


# eq=False: field-wise == on tensors is ambiguous, identity is what we want.
@dataclass(eq=False)
class DetectionDataset(NamedClasses):
    """Images and their annotations; image ``i`` owns ``boxes[i]``, ``labels[i]`` and ``difficult[i]``."""

    name: str
    images: torch.Tensor  # uint8 (N, 3, S, S)
    boxes: List[torch.Tensor]  # float32 (n_i, 4), xyxy in pixels of the S x S image
    labels: List[torch.Tensor]  # int64 (n_i,), 1..C
    difficult: List[torch.Tensor]  # bool (n_i,)
    class_names: List[str]  # C names, without the background
    image_ids: List[str]

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[2] != self.images.shape[3]:
            raise ValueError(
                f"{self.name}: images must be square uint8 (N, 3, S, S); got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if not (len(self.boxes) == len(self.labels) == len(self.difficult) == len(self.image_ids) == n):
            raise ValueError(f"{self.name}: every image needs boxes, labels, difficult flags and an id")
        for boxes, labels, difficult in zip(self.boxes, self.labels, self.difficult):
            if boxes.shape != (labels.numel(), 4) or difficult.shape != labels.shape:
                raise ValueError(f"{self.name}: boxes (n, 4), labels (n,) and difficult (n,) must agree")
            if labels.numel() and (labels.min() < 1 or labels.max() > len(self.class_names)):
                raise ValueError(f"{self.name}: labels run from 1 to {len(self.class_names)} (0 is background)")

    @classmethod
    def from_arrays(cls, name: str, images: np.ndarray, annotations: Sequence[Tuple[np.ndarray, np.ndarray, np.ndarray]],
                    class_names: Sequence[str], image_ids: Sequence[str]) -> "DetectionDataset":
        """A data set from numpy arrays: the uint8 images (N, 3, S, S) and, per image, its (boxes, labels,
        difficult); the tensors share their memory."""
        boxes, labels, difficult = ([torch.from_numpy(annotation[k]) for annotation in annotations] for k in range(3))
        return cls(name, torch.from_numpy(images), boxes, labels, difficult, list(class_names), list(image_ids))

    def __len__(self) -> int:
        return self.images.shape[0]

    def __repr__(self) -> str:
        return (
            f"DetectionDataset(name={self.name!r}, images={len(self)}, objects={self.num_objects}, "
            f"classes={self.num_classes}, image_size={self.image_size})"
        )

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def num_objects(self) -> int:
        return int(sum(labels.numel() for labels in self.labels))

    def subset(self, indices: Sequence[int] | torch.Tensor) -> "DetectionDataset":
        indices = [int(i) for i in indices]
        return DetectionDataset(
            name=self.name,
            images=self.images[indices],
            boxes=[self.boxes[i] for i in indices],
            labels=[self.labels[i] for i in indices],
            difficult=[self.difficult[i] for i in indices],
            class_names=list(self.class_names),
            image_ids=[self.image_ids[i] for i in indices],
        )

    def split_validation(self, fraction: float, seed: int = 0) -> Tuple["DetectionDataset", "DetectionDataset"]:
        """(train, validation): a random ``fraction`` of the images held out, the same for a given seed."""
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"the validation fraction must lie in [0, 1); got {fraction}")
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        n_val = int(round(fraction * len(self)))
        return self.subset(order[n_val:].sort().values), self.subset(order[:n_val].sort().values)

    def targets(self, indices: Sequence[int] | torch.Tensor, device=None, keep_difficult: bool = False) -> List[Dict[str, torch.Tensor]]:
        """Training targets of the images ``indices``: ``{"boxes", "labels"}`` per image.

        Difficult objects are dropped unless ``keep_difficult`` (the usual SSD practice).
        """
        out = []
        for i in (int(i) for i in indices):
            keep = torch.ones_like(self.difficult[i]) if keep_difficult else ~self.difficult[i]
            out.append({"boxes": self.boxes[i][keep].to(device), "labels": self.labels[i][keep].to(device)})
        return out

    def ground_truth(self) -> List[Dict[str, torch.Tensor]]:
        """Every image's boxes, labels and difficult flags, for evaluation."""
        return [
            {"boxes": b, "labels": l, "difficult": d} for b, l, d in zip(self.boxes, self.labels, self.difficult)
        ]


@dataclass(eq=False)
class DetectionSplits:
    """Train and test sets, with the per-channel mean and std of the training images (on [0, 1])."""

    train: DetectionDataset
    test: DetectionDataset
    mean: Tuple[float, ...]
    std: Tuple[float, ...]

    @classmethod
    def of(cls, train: DetectionDataset, test: DetectionDataset) -> "DetectionSplits":
        if train.image_size != test.image_size or train.class_names != test.class_names:
            raise ValueError("train and test sets must share the image size and the classes")
        mean, std = channel_stats(train.images.numpy())
        return cls(train, test, mean, std)
