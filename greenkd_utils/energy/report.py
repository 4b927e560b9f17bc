"""What a run's energy is: per-component device energy, each saying whether it was measured or estimated,
and the constants (PUE, carbon intensity) that turn it into CO2eq. Also the shared constants and the
once-per-process warning the sensors use."""

from __future__ import annotations

import logging
import math
import re
import threading
from dataclasses import dataclass, replace
from typing import Any, Dict, Iterable, List, Optional

logger = logging.getLogger('greenkd_utils.energy')

DEFAULT_PUE = 1.67
"""The paper's power usage effectiveness (global data-centre average, 2019)."""

DEFAULT_CARBON_INTENSITY = 294.0
"""g CO2eq per kWh; what the paper's Table 1 implies (its CO2 divided by its kWh)."""

POWERCAP_ROOT = "/sys/class/powercap"
"""Where Linux exposes RAPL; a module constant so tests can point it at a fake tree."""

JOULES_PER_KWH = 3.6e6
MILLIJOULES_PER_KWH = 3.6e9
BYTES_PER_GIB = 2**30

COMPONENT_ORDER = ("gpu", "cpu", "dram")
SOURCES = ("measured", "estimated")

_warned: set = set()
_warned_lock = threading.Lock()


def warn_once(key: str, message: str, *args: Any) -> None:
    """Log a warning only the first time ``key`` is seen in this process.

    A grid sweep runs dozens of meters; one warning about an unreadable sensor
    is information, fifty are noise.
    """
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    logger.warning(message, *args)


# --------------------------------------------------------------------------- reports


@dataclass(frozen=True)
class ComponentEnergy:
    """The energy of one hardware component over a run, and how it was obtained."""

    name: str
    energy_kwh: float
    source: str
    method: str

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}; got {self.source!r}")
        if not (self.energy_kwh >= 0 and math.isfinite(self.energy_kwh)):
            raise ValueError(f"energy_kwh must be finite and >= 0; got {self.energy_kwh!r}")

    @property
    def short_method(self) -> str:
        """The method up to its first detail, for one-line labels."""
        return re.split(r" \(|:", self.method, maxsplit=1)[0].strip()


def in_component_order(names: Iterable[str]) -> List[str]:
    """``names`` in the order reports show them: gpu, cpu, dram, then any others alphabetically."""
    known = [n for n in COMPONENT_ORDER if n in names]
    return known + sorted(n for n in names if n not in COMPONENT_ORDER)


@dataclass
class EnergyReport:
    """Device energy of a run per component, plus the constants that turn it into CO2eq.

    ``components`` hold device energy before PUE; PUE and carbon intensity are
    applied only in the derived properties, so :meth:`with_constants` can
    re-derive the CO2 of an old run under other assumptions.
    """

    duration_s: float
    components: Dict[str, ComponentEnergy]
    pue: float = DEFAULT_PUE
    carbon_intensity_g_per_kwh: float = DEFAULT_CARBON_INTENSITY

    @property
    def energy_kwh(self) -> float:
        """Device energy summed over components, before PUE."""
        return sum(c.energy_kwh for c in self.components.values())

    @property
    def energy_kwh_pue(self) -> float:
        """Facility energy: device energy x PUE."""
        return self.energy_kwh * self.pue

    @property
    def co2_g(self) -> float:
        """Grams of CO2eq: facility energy x carbon intensity."""
        return self.energy_kwh_pue * self.carbon_intensity_g_per_kwh

    @property
    def source(self) -> str:
        """One of ``measured``, ``estimated`` or ``partly estimated``, over all components."""
        sources = {c.source for c in self.components.values()}
        if sources == {"measured"}:
            return "measured"
        if "measured" in sources:
            return "partly estimated"
        return "estimated"  # also for an empty report: nothing was measured

    # -- serialisation -------------------------------------------------------

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready dict; the derived totals are included for readers but ignored by :meth:`from_dict`."""
        return {
            "duration_s": self.duration_s,
            "pue": self.pue,
            "carbon_intensity_g_per_kwh": self.carbon_intensity_g_per_kwh,
            "components": {
                name: {"energy_kwh": c.energy_kwh, "source": c.source, "method": c.method}
                for name, c in self.components.items()
            },
            "energy_kwh": self.energy_kwh,
            "energy_kwh_pue": self.energy_kwh_pue,
            "co2_g": self.co2_g,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "EnergyReport":
        components = {
            name: ComponentEnergy(
                name=name,
                energy_kwh=float(c["energy_kwh"]),
                source=str(c["source"]),
                method=str(c["method"]),
            )
            for name, c in d.get("components", {}).items()
        }
        return cls(
            duration_s=float(d["duration_s"]),
            components=components,
            pue=float(d.get("pue", DEFAULT_PUE)),
            carbon_intensity_g_per_kwh=float(
                d.get("carbon_intensity_g_per_kwh", DEFAULT_CARBON_INTENSITY)
            ),
        )

    # -- derivations ---------------------------------------------------------

    def with_constants(
        self,
        pue: Optional[float] = None,
        carbon_intensity_g_per_kwh: Optional[float] = None,
    ) -> "EnergyReport":
        """The same measurement under another PUE and/or carbon intensity."""
        return replace(
            self,
            components=dict(self.components),
            pue=self.pue if pue is None else float(pue),
            carbon_intensity_g_per_kwh=(
                self.carbon_intensity_g_per_kwh
                if carbon_intensity_g_per_kwh is None
                else float(carbon_intensity_g_per_kwh)
            ),
        )

    def label(self) -> str:
        """One line for a table cell or a plot legend.

        e.g. ``0.0012 kWh (estimated: cpu TDP model, dram RSS model) x PUE 1.67 x 294 g/kWh = 0.59 g CO2eq``
        """
        source = self.source
        parts = []
        for name in in_component_order(self.components):
            c = self.components[name]
            flag = " [estimated]" if source == "partly estimated" and c.source == "estimated" else ""
            parts.append(f"{name} {c.short_method}{flag}")
        how = f"{source}: {', '.join(parts)}" if parts else "no components"
        return (
            f"{self.energy_kwh:.4g} kWh ({how}) x PUE {self.pue:g} "
            f"x {self.carbon_intensity_g_per_kwh:g} g/kWh = {self.co2_g:.3g} g CO2eq"
        )

    @staticmethod
    def total(reports: Iterable["EnergyReport"]) -> "EnergyReport":
        """Sum of several reports: a whole grid sweep, or one run resumed across sessions.

        Durations and per-component energies add up.  A component estimated in
        any part is estimated in the sum, and its method lists every method
        that contributed.  All parts must share PUE and carbon intensity
        (re-derive with :meth:`with_constants` first otherwise).
        """
        reports = list(reports)
        if not reports:
            raise ValueError("EnergyReport.total needs at least one report")
        first = reports[0]
        for r in reports[1:]:
            if not (
                math.isclose(r.pue, first.pue, rel_tol=1e-12)
                and math.isclose(
                    r.carbon_intensity_g_per_kwh, first.carbon_intensity_g_per_kwh, rel_tol=1e-12
                )
            ):
                raise ValueError(
                    "cannot add energy reports with different constants: "
                    f"PUE {first.pue} / {first.carbon_intensity_g_per_kwh} g/kWh vs "
                    f"PUE {r.pue} / {r.carbon_intensity_g_per_kwh} g/kWh; "
                    "use with_constants() to align them first"
                )
        names = in_component_order({n for r in reports for n in r.components})
        components = {}
        for name in names:
            parts = [r.components[name] for r in reports if name in r.components]
            methods: List[str] = []
            for p in parts:
                if p.method not in methods:
                    methods.append(p.method)
            all_measured = all(p.source == "measured" for p in parts)
            components[name] = ComponentEnergy(
                name=name,
                energy_kwh=sum(p.energy_kwh for p in parts),
                source="measured" if all_measured else "estimated",
                method=" + ".join(methods),
            )
        return EnergyReport(
            duration_s=sum(r.duration_s for r in reports),
            components=components,
            pue=first.pue,
            carbon_intensity_g_per_kwh=first.carbon_intensity_g_per_kwh,
        )

    def __add__(self, other: "EnergyReport") -> "EnergyReport":
        if not isinstance(other, EnergyReport):
            return NotImplemented
        return EnergyReport.total([self, other])

    def __radd__(self, other: Any) -> "EnergyReport":
        # Lets the builtin sum() start from 0.
        if isinstance(other, (int, float)) and other == 0:
            return self
        return NotImplemented


