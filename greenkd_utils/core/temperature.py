"""Where tau comes from: a fixed value, a fresh draw from U[low, high] for every batch or every sample, or a
temperature learned during training (CTKD).

The stochastic schedule is the paper's whole proposal: one training run with
tau ~ U[2, 20] per batch replaces a grid search over fixed taus. The other schedules are extensions set
beside it (docs/protocol.md, "Temperature strategies beyond the paper").

The training loop asks each schedule for one epoch of taus at once (:meth:`TemperatureSchedule.for_epoch`)
and indexes it with the step: ``taus[step]``. Drawn schedules copy the epoch's taus to the accelerator in a
single transfer instead of one host transfer per batch (the values are the same as repeated
:meth:`sample` calls); a learned schedule computes each step's tau on the device, inside the autograd graph.
The loop never knows which schedule it runs.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from greenkd_utils.energy.checks import real_number

TEMPERATURE_MODES = ("fixed", "stochastic", "stochastic_per_sample", "ctkd")

# CTKD's defaults (Li et al., AAAI 2023, and the authors' CIFAR scripts): tau = 1 + 20 * sigmoid(p), p
# starting at 1, and a gradient-reversal strength that rises from 0 to 1 along a cosine over 10 epochs.
CTKD_LOW, CTKD_HIGH = 1.0, 21.0
CTKD_INIT = 1.0
CTKD_LAMBDA_MIN, CTKD_LAMBDA_MAX = 0.0, 1.0
CTKD_CURRICULUM_EPOCHS = 10


class EpochTaus:
    """One epoch of taus drawn before the epoch starts: ``taus[step]`` is a device tensor, a 0-d one per
    batch or a (batch,) one per sample, and :meth:`values` the host copy of everything the epoch used."""

    def __init__(self, values: np.ndarray, device):
        self._values = values
        self._device_values = torch.as_tensor(values, dtype=torch.float32, device=device)

    def __getitem__(self, step: int) -> torch.Tensor:
        return self._device_values[step]

    def values(self) -> np.ndarray:
        return self._values

    def record(self) -> Dict[str, Any]:
        """Schedule-specific entries of the epoch's history row (none for a drawn schedule)."""
        return {}


class TemperatureSchedule:
    """What the training loop needs from a temperature schedule; drawn schedules only implement
    :meth:`sample_many` (and their state)."""

    mode = ""
    per_sample = False

    def sample(self) -> float:
        return float(self.sample_many(1, batch_size=1).reshape(-1)[0])

    def sample_many(self, n: int, batch_size: Optional[int] = None) -> np.ndarray:
        raise NotImplementedError

    def for_epoch(self, epoch: int, n_steps: int, batch_size: int, device) -> EpochTaus:
        """The taus of epoch ``epoch`` (0-based): ``n_steps`` batches of ``batch_size`` samples."""
        return EpochTaus(self.sample_many(n_steps, batch_size), device)

    def parameters(self) -> List[torch.nn.Parameter]:
        """Learnable parameters, optimised together with the student (none for a drawn schedule)."""
        return []

    def to(self, device) -> "TemperatureSchedule":
        return self

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass

    def describe(self) -> Dict[str, Any]:
        return {"mode": self.mode}


class FixedTemperature(TemperatureSchedule):
    """The conventional schedule: the same tau for every batch of the run."""

    mode = "fixed"

    def __init__(self, tau: float):
        self.tau = real_number("tau", tau, above=0)

    def sample(self) -> float:
        return self.tau

    def sample_many(self, n: int, batch_size: Optional[int] = None) -> np.ndarray:
        return np.full(n, self.tau, dtype=np.float64)

    def describe(self) -> Dict[str, Any]:
        return {"mode": self.mode, "tau": self.tau}

    def __repr__(self) -> str:
        return f"FixedTemperature(tau={self.tau:g})"


class StochasticTemperature(TemperatureSchedule):
    """The paper's schedule: a new tau ~ U[low, high] for every batch, reproducible from ``seed``."""

    mode = "stochastic"

    def __init__(self, low: float = 2.0, high: float = 20.0, seed: int | None = 0):
        check_tau_range(low, high)
        self.low, self.high, self.seed = float(low), float(high), seed
        self._rng = np.random.default_rng(seed)

    def sample(self) -> float:
        return float(self._rng.uniform(self.low, self.high))

    def sample_many(self, n: int, batch_size: Optional[int] = None) -> np.ndarray:
        return self._rng.uniform(self.low, self.high, size=n)

    def state_dict(self) -> Dict[str, Any]:
        return {"bit_generator": self._rng.bit_generator.state}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self._rng.bit_generator.state = state["bit_generator"]

    def describe(self) -> Dict[str, Any]:
        return {"mode": self.mode, "low": self.low, "high": self.high, "seed": self.seed}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(low={self.low:g}, high={self.high:g}, seed={self.seed})"


class StochasticPerSampleTemperature(StochasticTemperature):
    """A new tau ~ U[low, high] for every *sample*: an epoch is an (n_steps, batch_size) array, drawn at once.

    Samples of one batch see different temperatures; :func:`~greenkd_utils.core.losses.kd_loss` takes a tau per
    sample (each sample's KL scaled by its own tau^2 in HKD).
    """

    mode = "stochastic_per_sample"
    per_sample = True

    def sample_many(self, n: int, batch_size: Optional[int] = None) -> np.ndarray:
        if batch_size is None or batch_size < 1:
            raise ValueError(
                f"per-sample taus need the batch size: sample_many(n_steps, batch_size); got batch_size={batch_size}"
            )
        return self._rng.uniform(self.low, self.high, size=(n, batch_size))


class _ReverseGradient(torch.autograd.Function):
    """Identity on the way forward; on the way back the gradient is multiplied by -strength, so whatever
    sits before it is pushed *up* the loss that everything after it goes down."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, strength: float) -> torch.Tensor:
        ctx.strength = strength
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.strength * grad, None


def reverse_gradient(x: torch.Tensor, strength: float) -> torch.Tensor:
    """Gradient reversal (Ganin and Lempitsky, 2015): forward ``x``, backward ``-strength * grad``."""
    return _ReverseGradient.apply(x, float(strength))


def cosine_curriculum(epoch: int, curriculum_epochs: int,
                      low: float = CTKD_LAMBDA_MIN, high: float = CTKD_LAMBDA_MAX) -> float:
    """CTKD's reversal strength for ``epoch`` (1-based, as in the paper): from ``low`` rising along half a
    cosine to ``high`` at ``curriculum_epochs``, then held there.

    lambda_e = low + (high - low) * (1 - cos(pi * min(e, E) / E)) / 2
    """
    progress = min(max(epoch, 0), curriculum_epochs) / curriculum_epochs
    return low + (high - low) * (1.0 - math.cos(math.pi * progress)) / 2.0


class _LearnedEpochTaus(EpochTaus):
    """A learned tau per step: computed on the device through the gradient reversal, and recorded (detached,
    still on the device) so the epoch's taus reach the host in one copy after the epoch."""

    def __init__(self, schedule: "CurriculumTemperature", strength: float, n_steps: int, device):
        self._schedule, self._strength = schedule, strength
        self._used = torch.full((n_steps,), float("nan"), dtype=torch.float32, device=device)

    def __getitem__(self, step: int) -> torch.Tensor:
        tau = self._schedule.tau(self._strength)
        self._used[step] = tau.detach()
        return tau

    def values(self) -> np.ndarray:
        used = self._used.cpu().numpy().astype(np.float64)
        return used[~np.isnan(used)]

    def record(self) -> Dict[str, Any]:
        return {"ctkd_lambda": self._strength}


class CurriculumTemperature(TemperatureSchedule):
    """CTKD's global temperature (Li et al., AAAI 2023): tau = low + (high - low) * sigmoid(p), one learnable
    scalar ``p`` for the whole run, trained with the student through a gradient reversal of strength lambda.

    The reversal makes ``p`` climb the distillation loss while the student descends it: the task gets
    harder as the student gets better, and lambda (:func:`cosine_curriculum`, from 0 to 1 over
    ``curriculum_epochs`` epochs) sets how fast. Only the global variant is implemented (not the
    instance-wise one that predicts a tau per sample with a small network).
    """

    mode = "ctkd"

    def __init__(self, low: float = CTKD_LOW, high: float = CTKD_HIGH,
                 curriculum_epochs: int = CTKD_CURRICULUM_EPOCHS, init: float = CTKD_INIT):
        check_tau_range(low, high)
        if int(curriculum_epochs) < 1:
            raise ValueError(f"CTKD's curriculum needs curriculum_epochs >= 1; got {curriculum_epochs}")
        self.low, self.high = float(low), float(high)
        self.curriculum_epochs = int(curriculum_epochs)
        self.param = torch.nn.Parameter(torch.full((1,), float(init)))

    def strength(self, epoch: int) -> float:
        """lambda of epoch ``epoch`` (0-based, like the training loop's)."""
        return cosine_curriculum(epoch + 1, self.curriculum_epochs)

    def tau(self, strength: float) -> torch.Tensor:
        """The current tau as a 0-d tensor whose gradient reaches ``param`` reversed and scaled by ``strength``."""
        p = reverse_gradient(self.param, strength)
        return (self.low + (self.high - self.low) * torch.sigmoid(p)).reshape(())

    def current_tau(self) -> float:
        with torch.no_grad():
            return float(self.low + (self.high - self.low) * torch.sigmoid(self.param))

    def sample(self) -> float:
        return self.current_tau()

    def sample_many(self, n: int, batch_size: Optional[int] = None) -> np.ndarray:
        # A caller that draws taus up front would freeze a temperature that is meant to be trained.
        raise TypeError(
            "CTKD's tau is learned during training and cannot be drawn in advance; "
            "use for_epoch(epoch, n_steps, batch_size, device) and optimise parameters() with the student"
        )

    def for_epoch(self, epoch: int, n_steps: int, batch_size: int, device) -> EpochTaus:
        return _LearnedEpochTaus(self, self.strength(epoch), n_steps, device)

    def parameters(self) -> List[torch.nn.Parameter]:
        return [self.param]

    def to(self, device) -> "CurriculumTemperature":
        # In place, so that an optimiser built on ``parameters()`` keeps pointing at the same tensor.
        self.param.data = self.param.data.to(device)
        return self

    def state_dict(self) -> Dict[str, Any]:
        return {"param": self.param.detach().cpu().clone(), "curriculum_epochs": self.curriculum_epochs}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        with torch.no_grad():
            self.param.copy_(state["param"].to(self.param.device))

    def describe(self) -> Dict[str, Any]:
        return {"mode": self.mode, "low": self.low, "high": self.high,
                "curriculum_epochs": self.curriculum_epochs, "tau": self.current_tau()}

    def __repr__(self) -> str:
        return (f"CurriculumTemperature(low={self.low:g}, high={self.high:g}, "
                f"curriculum_epochs={self.curriculum_epochs}, tau={self.current_tau():.4g})")


def check_tau_range(low: float, high: float) -> None:
    for name, bound in (("low", low), ("high", high)):
        # A NaN bound passes both comparisons below and would draw NaN taus; an infinite one, infinite taus.
        if isinstance(bound, bool) or not isinstance(bound, numbers.Real) or not math.isfinite(bound):
            raise ValueError(f"the tau range needs two finite numbers low <= high; got {name}={bound!r}")
    if not low > 0:
        raise ValueError(f"the tau range needs low > 0; got low={low}")
    if low > high:
        raise ValueError(f"the tau range needs low <= high; got low={low}, high={high}")


_SCHEDULES = {
    "fixed": FixedTemperature,
    "stochastic": StochasticTemperature,
    "stochastic_per_sample": StochasticPerSampleTemperature,
    "ctkd": CurriculumTemperature,
}


def make_temperature(mode: str, **kwargs) -> TemperatureSchedule:
    """``make_temperature("fixed", tau=4)``, ``make_temperature("stochastic", low=2, high=20, seed=0)``,
    ``make_temperature("stochastic_per_sample", low=2, high=20, seed=0)`` or ``make_temperature("ctkd")``."""
    try:
        schedule = _SCHEDULES[mode]
    except (KeyError, TypeError):
        raise ValueError(f"unknown temperature mode {mode!r}; valid: {', '.join(TEMPERATURE_MODES)}") from None
    return schedule(**kwargs)


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
