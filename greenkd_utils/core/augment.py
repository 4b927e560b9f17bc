"""Batched augmentation on whatever device the batch lives on (GPU or CPU).

One ``grid_sample`` call applies the padded random crop (an integer translation
with zero fill) and the random rotation to the whole batch, so augmentation
never needs a host-side loop over images or a DataLoader worker. Without
rotation the crop is one batched integer gather, which copies pixels exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from greenkd_utils.core.config import AugmentSettings


class BatchAugment:
    """Random crop after ``crop_padding`` zero pixels, horizontal flip, rotation in [-deg, deg]."""

    def __init__(self, settings: AugmentSettings):
        self.settings = settings

    @property
    def is_identity(self) -> bool:
        s = self.settings
        return s.crop_padding == 0 and not s.flip and s.rotation_deg == 0

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``images``: float (N, C, H, W) in [0, 1]; returns a new tensor of the same shape."""
        if self.is_identity:
            return images
        s = self.settings
        n, _, h, w = images.shape
        dev = images.device

        def uniform(low: float, high: float) -> torch.Tensor:
            return torch.rand(n, device=dev, generator=generator) * (high - low) + low

        if s.flip:
            flip = torch.rand(n, device=dev, generator=generator) < 0.5
            images = torch.where(flip.view(n, 1, 1, 1), images.flip(3), images)
        if s.crop_padding == 0 and s.rotation_deg == 0:
            return images

        p = s.crop_padding
        shift_x = torch.randint(-p, p + 1, (n,), device=dev, generator=generator)
        shift_y = torch.randint(-p, p + 1, (n,), device=dev, generator=generator)
        angle = uniform(-s.rotation_deg, s.rotation_deg) * (math.pi / 180.0)
        if s.rotation_deg == 0:
            # Crop only: copy pixels by integer indexing, exactly RandomCrop(pad). Bilinear sampling at
            # whole-pixel offsets is off by float rounding of the sampling grid at most image sizes.
            return _shift(images, shift_x, shift_y, p)
        shift_x, shift_y = shift_x.to(images.dtype), shift_y.to(images.dtype)
        cos, sin = torch.cos(angle), torch.sin(angle)
        # theta maps output coordinates (normalised to [-1, 1]) to input coordinates.
        theta = torch.stack(
            [
                torch.stack([cos, -sin * h / w, shift_x * 2.0 / w], dim=1),
                torch.stack([sin * w / h, cos, shift_y * 2.0 / h], dim=1),
            ],
            dim=1,
        ).to(images.dtype)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _shift(images: torch.Tensor, shift_x: torch.Tensor, shift_y: torch.Tensor, pad: int) -> torch.Tensor:
    """out[i, :, y, x] = images[i, :, y + shift_y[i], x + shift_x[i]], zero outside the image."""
    n, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    dev = images.device
    rows = torch.arange(h, device=dev).view(1, h) + (shift_y + pad).view(n, 1)
    cols = torch.arange(w, device=dev).view(1, w) + (shift_x + pad).view(n, 1)
    batch = torch.arange(n, device=dev).view(n, 1, 1, 1)
    channel = torch.arange(c, device=dev).view(1, c, 1, 1)
    return padded[batch, channel, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]


def standardize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Float (N, C, H, W) in [0, 1] -> per-channel standardised, with the dataset's mean and std."""
    return (images - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
