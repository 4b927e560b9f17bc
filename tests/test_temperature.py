"""Tests for greenkd_utils.core.temperature: fixed and stochastic (tau ~ U[low, high] per batch) schedules."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from greenkd_utils.core.config import TemperatureSpec
from greenkd_utils.core.temperature import (
    FixedTemperature,
    StochasticTemperature,
    TauStatistics,
    make_temperature,
)


def test_fixed_returns_its_tau():
    temp = make_temperature("fixed", tau=3)
    assert isinstance(temp, FixedTemperature)
    assert temp.sample() == 3.0
    assert temp.sample() == 3.0
    np.testing.assert_array_equal(temp.sample_many(4), [3.0] * 4)
    assert temp.describe() == {"mode": "fixed", "tau": 3.0}


def test_stochastic_draws_lie_in_range_and_differ():
    temp = make_temperature("stochastic", low=2, high=20, seed=0)
    assert isinstance(temp, StochasticTemperature)
    draws = [temp.sample() for _ in range(200)]
    assert all(2.0 <= d <= 20.0 for d in draws)
    assert len(set(draws)) == len(draws)  # a new tau for every batch
    many = temp.sample_many(1000)
    assert many.min() >= 2.0 and many.max() <= 20.0
    # The draws spread over the range, not a corner of it.
    assert many.min() < 3.0 and many.max() > 19.0


def test_stochastic_is_reproducible_from_the_seed():
    first = make_temperature("stochastic", low=2, high=20, seed=7).sample()
    x = make_temperature("stochastic", low=2, high=20, seed=7)
    y = make_temperature("stochastic", low=2, high=20, seed=7)
    z = make_temperature("stochastic", low=2, high=20, seed=8)
    xs = [x.sample() for _ in range(10)]
    assert xs[0] == first
    assert xs == [y.sample() for _ in range(10)]
    assert xs != [z.sample() for _ in range(10)]


def test_sample_many_equals_successive_samples():
    one = StochasticTemperature(2.0, 20.0, seed=3)
    many = StochasticTemperature(2.0, 20.0, seed=3)
    batch = many.sample_many(37)
    assert batch.shape == (37,)
    np.testing.assert_array_equal(batch, [one.sample() for _ in range(37)])
    # ... and the streams stay aligned afterwards.
    assert many.sample() == one.sample()


def test_mean_of_many_draws_is_the_middle_of_the_range():
    draws = StochasticTemperature(2.0, 20.0, seed=11).sample_many(200_000)
    # Standard error of the mean: (18 / sqrt(12)) / sqrt(2e5) = 0.012.
    assert draws.mean() == pytest.approx(11.0, abs=0.06)
    assert draws.std() == pytest.approx(18 / np.sqrt(12), rel=0.01)
    stats = TauStatistics.of(draws)
    assert stats.count == 200_000 and stats.mean == pytest.approx(draws.mean())
    assert 2.0 <= stats.min < stats.max <= 20.0


def test_state_dict_resumes_the_stream():
    original = StochasticTemperature(2.0, 20.0, seed=5)
    original.sample_many(13)
    state = original.state_dict()
    expected = original.sample_many(9)

    resumed = StochasticTemperature(2.0, 20.0, seed=123)  # another seed: the state must win
    resumed.load_state_dict(state)
    np.testing.assert_array_equal(resumed.sample_many(9), expected)

    # The engine stores the state in a checkpoint read with weights_only=True.
    buffer = io.BytesIO()
    torch.save({"temperature": state}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)["temperature"]
    again = StochasticTemperature(2.0, 20.0, seed=0)
    again.load_state_dict(loaded)
    np.testing.assert_array_equal(again.sample_many(9), expected)


def test_degenerate_range_is_allowed():
    temp = StochasticTemperature(4.0, 4.0, seed=0)
    assert temp.sample() == 4.0


@pytest.mark.parametrize(
    "low, high, match",
    [(0.0, 20.0, "low > 0"), (-1.0, 5.0, "low > 0"), (10.0, 2.0, "low <= high")],
)
def test_bad_ranges_are_errors(low, high, match):
    with pytest.raises(ValueError, match=match):
        make_temperature("stochastic", low=low, high=high)
    with pytest.raises(ValueError, match=match):
        TemperatureSpec.stochastic(low, high)


def test_bad_fixed_tau_and_unknown_mode_are_errors():
    with pytest.raises(ValueError, match="tau must be > 0"):
        make_temperature("fixed", tau=0)
    with pytest.raises(ValueError, match="fixed, stochastic"):
        make_temperature("annealed", tau=4)
    with pytest.raises(ValueError, match="fixed, stochastic"):
        TemperatureSpec(mode="annealed")
    with pytest.raises(ValueError, match="tau > 0"):
        TemperatureSpec.fixed(-2)


def test_spec_builds_the_schedule_with_the_run_seed():
    spec = TemperatureSpec.stochastic(2, 20)
    a, b = spec.build(seed=10_000), spec.build(seed=10_000)
    assert a.sample_many(5).tolist() == b.sample_many(5).tolist()
    assert spec.build(seed=10_001).sample() != spec.build(seed=10_000).sample()
    assert TemperatureSpec.fixed(4).build(seed=0).sample() == 4.0
    assert spec.short() == "tau~U[2,20]" and TemperatureSpec.fixed(4).short() == "tau=4"
