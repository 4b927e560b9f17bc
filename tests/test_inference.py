"""Tests for greenkd_utils.analysis.inference: repeated, metered passes over a test set."""

from __future__ import annotations

import pandas as pd
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


def test_compare_with_paper_uses_the_teachers_row():
    costs = pd.DataFrame([{"method": "teacher", "model": "resnet18", "time_per_pass_s": 0.47, "co2_g_per_pass": 0.0087,
                           "n_images": 1000, "energy_source": "estimated", "device": "cpu"}])
    table = inference.compare_with_paper(costs)
    by_metric = table.set_index("metric")
    assert by_metric.loc["inference_time_s", "paper_per_pass"] == 4.7
    assert by_metric.loc["inference_co2_g", "paper_per_pass"] == 0.087
    assert by_metric.loc["inference_time_s", "ratio_per_pass"] == pytest.approx(0.1)
    # 0.47 s / 1000 images vs 4.7 s / 10000 images: the same per image.
    assert by_metric.loc["inference_time_s", "ratio_per_image"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="teacher"):
        inference.compare_with_paper(costs.assign(method="student"))
