"""A run's metered region, split into phases.

One :class:`~greenkd_utils.energy.meter.EnergyMeter` is open for the whole region; :meth:`PhaseMeter.phase` brackets
each part of it (training steps, synthesis, evaluation, checkpoint writes) and charges the energy and wall time
between its two snapshots to that phase. Whatever ran inside the region but outside every bracket (a few lines
of bookkeeping between phases) is charged to ``other``, so the phases always add up to the meter's total.

On a GPU the brackets synchronise the device first: queued kernels would otherwise finish, and be charged,
in the next phase.
"""

from __future__ import annotations

import contextlib
import time
from typing import Dict, Iterator, Mapping, Optional

import torch

from greenkd_utils.energy.meter import ComponentEnergy, EnergyMeter, EnergyReport

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
        self._energy_before: Dict[str, EnergyReport] = dict(energy_before or {})
        self._wall_before: Dict[str, float] = dict(wall_before or {})
        self._energy: Dict[str, EnergyReport] = {}
        self._wall: Dict[str, float] = {}
        self._started = time.perf_counter()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Charge what runs in the ``with`` block to phase ``name``."""
        if name not in PHASES or name == "other":
            raise ValueError(f"unknown phase {name!r}; valid: {', '.join(p for p in PHASES if p != 'other')}")
        _synchronize(self.device)
        before, t0 = self.meter.snapshot(), time.perf_counter()
        try:
            yield
        finally:
            _synchronize(self.device)
            spent = energy_between(self.meter.snapshot(), before)
            self._energy[name] = spent if name not in self._energy else self._energy[name] + spent
            self._wall[name] = self._wall.get(name, 0.0) + time.perf_counter() - t0

    # -- totals, this session's plus the sessions before a resume ---------------------------------
    def total(self, final: bool = False) -> EnergyReport:
        """The whole region's energy so far (``final``: the stopped meter's report)."""
        now = self.meter.report if final else self.meter.snapshot()
        before = list(self._energy_before.values())
        return EnergyReport.total(before + [now]) if before else now

    def wall_time(self) -> float:
        return sum(self._wall_before.values()) + time.perf_counter() - self._started

    def by_phase(self, final: bool = False) -> Dict[str, EnergyReport]:
        """Energy per phase, ``other`` holding what ran inside the region but outside every phase."""
        now = self.meter.report if final else self.meter.snapshot()
        this_session = dict(self._energy)
        bracketed = sum(this_session.values()) if this_session else None
        this_session["other"] = energy_between(now, bracketed) if bracketed is not None else now
        out: Dict[str, EnergyReport] = {}
        for name in PHASES:
            parts = [p for p in (self._energy_before.get(name), this_session.get(name)) if p is not None]
            if parts:
                out[name] = EnergyReport.total(parts)
        return out

    def wall_by_phase(self) -> Dict[str, float]:
        elapsed = time.perf_counter() - self._started
        this_session = dict(self._wall)
        this_session["other"] = max(0.0, elapsed - sum(self._wall.values()))
        return {
            name: self._wall_before.get(name, 0.0) + this_session.get(name, 0.0)
            for name in PHASES
            if name in self._wall_before or name in this_session
        }
