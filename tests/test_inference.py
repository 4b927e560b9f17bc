"""Tests for greenkd_utils.analysis.inference: repeated, metered passes over a test set."""

from __future__ import annotations

import pytest
import torch

from greenkd_utils.analysis import inference
from greenkd_utils.core.models import create_model


@pytest.fixture
def tiny_setup():
    torch.manual_seed(0)
    model = create_model("wrn16_1", 10, 1)
    images = torch.randint(0, 256, (20, 1, 8, 8), dtype=torch.uint8)
    return model, images, torch.tensor([0.5]), torch.tensor([0.25])


def test_passes_are_repeated_until_the_minimum_duration(tiny_setup):
    model, images, mean, std = tiny_setup
    cost = inference.measure_inference(model, images, mean, std, batch_size=8, min_duration_s=0.3)
    assert cost.passes >= 2  # a 20-image pass of a tiny network is far below 0.3 s
    assert cost.passes * cost.time_per_pass_s >= 0.25
    assert cost.time_per_pass_s > 0 and cost.energy_kwh_per_pass > 0
    assert cost.co2_g_per_pass == pytest.approx(cost.energy_kwh_pue_per_pass * 294.0)
    assert cost.n_images == 20 and cost.energy_source in ("measured", "estimated", "partly estimated")


def test_passes_are_capped(tiny_setup):
    model, images, mean, std = tiny_setup
    cost = inference.measure_inference(model, images, mean, std, min_duration_s=100.0, max_passes=3)
    assert cost.passes == 3


def test_bad_arguments(tiny_setup):
    model, images, mean, std = tiny_setup
    with pytest.raises(ValueError, match="at least one image"):
        inference.measure_inference(model, images[:0], mean, std)
    with pytest.raises(ValueError, match="min_duration_s"):
        inference.measure_inference(model, images, mean, std, min_duration_s=0)
