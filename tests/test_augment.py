"""Tests for greenkd_utils.core.augment: the batch augmentation on the training device."""

from __future__ import annotations

import pytest
import torch

from greenkd_utils.core.augment import BatchAugment
from greenkd_utils.core.config import AugmentSettings


def _images(n=32, c=3, size=8, seed=0, dtype=torch.float32):
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _shifted(image, dx, dy, pad):
    """out[:, y, x] = image[:, y + dy, x + dx], zero outside: a window of the zero-padded image."""
    c, h, w = image.shape
    padded = torch.zeros(c, h + 2 * pad, w + 2 * pad, dtype=image.dtype)
    padded[:, pad : pad + h, pad : pad + w] = image
    return padded[:, pad + dy : pad + dy + h, pad + dx : pad + dx + w]


def test_identity_settings_return_the_input():
    aug = BatchAugment(AugmentSettings(crop_padding=0, flip=False, rotation_deg=0.0))
    assert aug.is_identity
    x = _images()
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    assert torch.equal(aug(x, g), x)
    assert torch.equal(g.get_state(), state)  # and no random numbers consumed


@pytest.mark.parametrize("size", [8, 16, 28])
def test_crop_moves_pixels_by_whole_pixels_exactly(size):
    pad = 2
    aug = BatchAugment(AugmentSettings(crop_padding=pad, flip=False, rotation_deg=0.0))
    x = _images(n=24, size=size, seed=size)
    out = aug(x, torch.Generator().manual_seed(1))
    allowed = set(x.flatten().tolist()) | {0.0}
    assert set(out.flatten().tolist()) <= allowed
    offsets = set()
    for i in range(x.shape[0]):
        matches = [
            (dx, dy)
            for dx in range(-pad, pad + 1)
            for dy in range(-pad, pad + 1)
            if torch.equal(out[i], _shifted(x[i], dx, dy, pad))
        ]
        assert matches, f"image {i} is not an exact whole-pixel shift of its input"
        offsets.add(matches[0])
    assert len(offsets) > 3  # the shifts are random, not one constant


def test_flip_flips():
    aug = BatchAugment(AugmentSettings(crop_padding=0, flip=True, rotation_deg=0.0))
    x = _images(n=64)
    out = aug(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(out[i], x[i].flip(2)) for i in range(64)]
    kept = [torch.equal(out[i], x[i]) for i in range(64)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 10 < sum(flipped) < 54  # about half of them
    # A horizontal flip: columns reversed, rows unchanged.
    i = flipped.index(True)
    assert torch.equal(out[i][:, :, 0], x[i][:, :, -1]) and torch.equal(out[i][:, 0, :], x[i][:, 0, :].flip(-1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_full_augmentation_keeps_shape_dtype_and_range(dtype):
    aug = BatchAugment(AugmentSettings(crop_padding=4, flip=True, rotation_deg=15.0))
    x = _images(n=16, size=32, dtype=dtype)
    out = aug(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0 + 1e-6
    assert not torch.equal(out, x)
    # Rotation interpolates: not all values are copies of input pixels any more.
    assert not set(out.flatten().tolist()) <= set(x.flatten().tolist()) | {0.0}


@pytest.mark.parametrize("settings", [
    AugmentSettings(crop_padding=1, flip=False, rotation_deg=0.0),
    AugmentSettings(crop_padding=4, flip=True, rotation_deg=15.0),
])
def test_augmentation_is_deterministic_given_the_generator(settings):
    aug = BatchAugment(settings)
    x = _images(n=16, size=16)
    a = aug(x, torch.Generator().manual_seed(5))
    b = aug(x, torch.Generator().manual_seed(5))
    c = aug(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(x, _images(n=16, size=16))  # the input is not modified in place
