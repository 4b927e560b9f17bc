"""A run's metered region, split into phases.

One :class:`~greenkd_utils.energy.meter.EnergyMeter` is open for the whole region; :meth:`PhaseMeter.phase`
brackets each part of it (training steps, synthesis, evaluation, checkpoint writes). The phases tile the
region: each bracket's closing reading of the meter ends one phase, and the phase charged is everything since
the previous reading, so the few lines of bookkeeping between two brackets (drawing the epoch's taus, building
the history row) go to the phase that follows them, and the meter is read once per phase, not twice.
Whatever ran after the last bracket until the meter stopped is ``other``, so the phases always add up to the
meter's total.

On a GPU each bracket synchronises the device before reading the meter: queued kernels would otherwise
finish, and be charged, in the next phase.
"""

from __future__ import annotations

import contextlib
import time
from typing import Dict, Iterator, Mapping, Optional

import torch

from greenkd_utils.energy.meter import EnergyMeter
from greenkd_utils.energy.report import ComponentEnergy, EnergyReport

# The phases a run's energy is split into, in the order tables show them.
PHASES = ("synthesis", "training", "evaluation", "checkpoints", "other")


def energy_between(later: EnergyReport, earlier: Optional[EnergyReport]) -> EnergyReport:
    """The energy spent between two snapshots of one meter (or two cumulative reports), per component."""
    if earlier is None:
        return later
    components = {}
    for name, comp in later.components.items():
        before = earlier.components.get(name)
        spent = comp.energy_kwh - (before.energy_kwh if before is not None else 0.0)
        components[name] = ComponentEnergy(name, max(0.0, spent), comp.source, comp.method)
    return EnergyReport(
        duration_s=max(0.0, later.duration_s - earlier.duration_s),
        components=components,
        pue=later.pue,
        carbon_intensity_g_per_kwh=later.carbon_intensity_g_per_kwh,
    )


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PhaseMeter:
    """Energy and wall time per phase of one metered region, continued from an earlier session's totals."""

    def __init__(self, meter: EnergyMeter, device: torch.device,
                 energy_before: Optional[Mapping[str, EnergyReport]] = None,
                 wall_before: Optional[Mapping[str, float]] = None):
        self.meter, self.device = meter, device
        self._energy: Dict[str, EnergyReport] = dict(energy_before or {})
        self._wall: Dict[str, float] = dict(wall_before or {})
        self._before = sum(self._energy.values()) if self._energy else None  # earlier sessions, all phases
        # The last phase boundary: none yet, so the first phase starts where the meter did.
        self._reading: Optional[EnergyReport] = None
        self._read_at = time.perf_counter()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Charge what ran since the last boundary, and what runs in the ``with`` block, to phase ``name``."""
        if name not in PHASES or name == "other":
            raise ValueError(f"unknown phase {name!r}; valid: {', '.join(p for p in PHASES if p != 'other')}")
        try:
            yield
        finally:
            _synchronize(self.device)
            self._charge(name, self.meter.snapshot())

    def _charge(self, name: str, reading: EnergyReport) -> None:
        now = time.perf_counter()
        spent = energy_between(reading, self._reading)
        self._energy[name] = spent if name not in self._energy else self._energy[name] + spent
        self._wall[name] = self._wall.get(name, 0.0) + now - self._read_at
        self._reading, self._read_at = reading, now

    def close(self) -> None:
        """Charge the tail after the last bracket to ``other``; call once the meter has stopped."""
        self._charge("other", self.meter.report)

    # -- totals, this session's plus the sessions before a resume (as of the last boundary) ------------
    def total(self) -> EnergyReport:
        reading = self._reading if self._reading is not None else self.meter.snapshot()
        return reading if self._before is None else self._before + reading

    def by_phase(self) -> Dict[str, EnergyReport]:
        return {name: self._energy[name] for name in PHASES if name in self._energy}

    def wall_by_phase(self) -> Dict[str, float]:
        return {name: self._wall[name] for name in PHASES if name in self._wall}

    def wall_time(self) -> float:
        return sum(self._wall.values())
