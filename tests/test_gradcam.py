"""Tests for greenkd_utils.analysis.gradcam: heat maps that vary across the image, and their display."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from greenkd_utils.analysis import gradcam
from greenkd_utils.core.models import create_model


@pytest.fixture(scope="module")
def digits_batch():
    from greenkd_utils.core.data import load_dataset

    ds = load_dataset("digits")
    idx = gradcam.spread_class_examples(ds.test_labels.numpy(), 4)
    return ds.test_images[idx], ds.test_labels[idx].tolist(), torch.tensor(ds.mean), torch.tensor(ds.std), idx


def test_heat_maps_of_8px_digits_are_not_constant(digits_batch):
    images, labels, mean, std, _ = digits_batch
    torch.manual_seed(0)
    model = create_model("wrn16_1", 10, 1)
    result = gradcam.gradcam_heatmaps(model, "wrn16_1", images, mean, std, labels)
    assert result.heatmaps.shape == (4, 8, 8)
    assert result.feature_map == (2, 2), "the target layer must keep spatial extent on 8x8 inputs"
    assert result.layer == "final_act"
    assert 0.0 <= result.heatmaps.min() and result.heatmaps.max() <= 1.0
    # A 1x1 target layer would give one value per image; here the map varies across the image.
    assert result.heatmaps[0].std() > 0.05
    assert result.heatmaps[0].max() - result.heatmaps[0].min() > 0.5
    assert result.target_classes == labels


def test_predicted_target_and_bad_target(digits_batch):
    images, labels, mean, std, _ = digits_batch
    torch.manual_seed(0)
    model = create_model("wrn16_1", 10, 1)
    result = gradcam.gradcam_heatmaps(model, "wrn16_1", images, mean, std, target="predicted")
    assert result.target_classes == result.predicted
    with pytest.raises(ValueError, match="label"):
        gradcam.gradcam_heatmaps(model, "wrn16_1", images, mean, std, target="label")
    with pytest.raises(ValueError, match="one of"):
        gradcam.gradcam_heatmaps(model, "wrn16_1", images, mean, std, labels, target="class")


def test_spread_examples_are_first_of_distinct_classes():
    labels = np.array([3, 0, 1, 0, 2, 3, 1, 2])
    picked = gradcam.spread_class_examples(labels, 2)
    assert picked == [1, 0]  # classes 0 and 3, their first images
    assert len(set(labels[gradcam.spread_class_examples(labels, 10)])) == 4


def test_display_upsampling_keeps_digit_pixels_and_smooths_heat(digits_batch):
    images, *_ = digits_batch
    heat = np.zeros((4, 8, 8), np.float32)
    heat[:, :4, :4] = 1.0
    shown, smooth = gradcam.upsample_for_display(images, heat, 64)
    assert shown.shape == (4, 64, 64, 3) and smooth.shape == (4, 64, 64)
    # Nearest neighbour: every 8x8 block of the display is one image pixel.
    assert np.allclose(shown[0, :8, :8], shown[0, 0, 0])
    assert 0 < smooth[0, 31, 0] < 1  # bilinear: a soft edge between hot and cold
