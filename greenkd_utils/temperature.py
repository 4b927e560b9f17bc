"""Where tau comes from: a fixed value, or a fresh draw from U[low, high] for every batch.

The stochastic schedule is the paper's whole proposal: one training run with
tau ~ U[2, 20] per batch replaces a grid search over fixed taus.

The training loop asks for one epoch of taus at once (:meth:`sample_many`) so
they can be moved to the accelerator in a single copy instead of one host
transfer per batch; the values are the same as repeated :meth:`sample` calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

import numpy as np

TEMPERATURE_MODES = ("fixed", "stochastic")


class FixedTemperature:
    """The conventional schedule: the same tau for every batch of the run."""

    mode = "fixed"

    def __init__(self, tau: float):
        if not tau > 0:
            raise ValueError(f"tau must be > 0; got {tau}")
        self.tau = float(tau)

    def sample(self) -> float:
        return self.tau

    def sample_many(self, n: int) -> np.ndarray:
        return np.full(n, self.tau, dtype=np.float64)

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass

    def describe(self) -> Dict[str, Any]:
        return {"mode": self.mode, "tau": self.tau}

    def __repr__(self) -> str:
        return f"FixedTemperature(tau={self.tau:g})"


class StochasticTemperature:
    """The paper's schedule: a new tau ~ U[low, high] for every batch, reproducible from ``seed``."""

    mode = "stochastic"

    def __init__(self, low: float = 2.0, high: float = 20.0, seed: int | None = 0):
        check_tau_range(low, high)
        self.low, self.high, self.seed = float(low), float(high), seed
        self._rng = np.random.default_rng(seed)

    def sample(self) -> float:
        return float(self._rng.uniform(self.low, self.high))

    def sample_many(self, n: int) -> np.ndarray:
        return self._rng.uniform(self.low, self.high, size=n)

    def state_dict(self) -> Dict[str, Any]:
        return {"bit_generator": self._rng.bit_generator.state}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self._rng.bit_generator.state = state["bit_generator"]

    def describe(self) -> Dict[str, Any]:
        return {"mode": self.mode, "low": self.low, "high": self.high, "seed": self.seed}

    def __repr__(self) -> str:
        return f"StochasticTemperature(low={self.low:g}, high={self.high:g}, seed={self.seed})"


def check_tau_range(low: float, high: float) -> None:
    if not low > 0:
        raise ValueError(f"the tau range needs low > 0; got low={low}")
    if low > high:
        raise ValueError(f"the tau range needs low <= high; got low={low}, high={high}")


def make_temperature(mode: str, **kwargs) -> FixedTemperature | StochasticTemperature:
    """``make_temperature("fixed", tau=4)`` or ``make_temperature("stochastic", low=2, high=20, seed=0)``."""
    if mode == "fixed":
        return FixedTemperature(**kwargs)
    if mode == "stochastic":
        return StochasticTemperature(**kwargs)
    raise ValueError(f"unknown temperature mode {mode!r}; valid: {', '.join(TEMPERATURE_MODES)}")


@dataclass
class TauStatistics:
    """Summary of the taus one epoch (or one run) actually used."""

    count: int
    mean: float
    std: float
    min: float
    max: float

    @classmethod
    def of(cls, taus: np.ndarray) -> "TauStatistics":
        taus = np.asarray(taus, dtype=np.float64)
        if taus.size == 0:
            return cls(0, float("nan"), float("nan"), float("nan"), float("nan"))
        return cls(int(taus.size), float(taus.mean()), float(taus.std()), float(taus.min()), float(taus.max()))
