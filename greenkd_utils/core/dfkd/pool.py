"""The in-memory pool of synthesized images the student learns from.

Images are kept as uint8 in pixel space, exactly as a real dataset is kept on
the training device (and as the original implementations kept theirs, as PNG
files): a round's images are clipped to [0, 1] and rounded when they enter the
pool. The pool only grows; the student samples batches from all of it.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] (values outside are clipped) -> uint8."""
    return (pixels.detach().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


class SyntheticPool:
    """Synthesized images (uint8, N x C x H x W) and the class each was synthesized for."""

    def __init__(self, image_shape, device: torch.device | str = "cpu"):
        self.image_shape = tuple(int(s) for s in image_shape)
        self.device = torch.device(device)
        self.images = torch.empty((0,) + self.image_shape, dtype=torch.uint8, device=self.device)
        self.targets = torch.empty(0, dtype=torch.long, device=self.device)

    def __len__(self) -> int:
        return int(self.targets.numel())

    def add(self, images_u8: torch.Tensor, targets: torch.Tensor) -> None:
        if images_u8.dtype != torch.uint8 or tuple(images_u8.shape[1:]) != self.image_shape:
            raise ValueError(
                f"the pool holds uint8 images of shape (N, {', '.join(map(str, self.image_shape))}); "
                f"got {images_u8.dtype} {tuple(images_u8.shape)}"
            )
        if images_u8.shape[0] != targets.numel():
            raise ValueError("one target per image")
        self.images = torch.cat([self.images, images_u8.to(self.device)])
        self.targets = torch.cat([self.targets, targets.to(self.device, torch.long)])

    def sample_indices(self, batch_size: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``batch_size`` distinct indices drawn uniformly (every index when the pool is smaller)."""
        n = len(self)
        if n == 0:
            raise RuntimeError("the synthetic pool is empty: synthesize before training the student")
        order = torch.randperm(n, device=self.device, generator=generator)
        return order[: min(batch_size, n)]

    def class_counts(self, num_classes: int) -> list:
        return torch.bincount(self.targets, minlength=num_classes).tolist()

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {"images": self.images.cpu(), "targets": self.targets.cpu()}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        self.images = state["images"].to(self.device)
        self.targets = state["targets"].to(self.device)
