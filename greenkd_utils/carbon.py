"""Energy and CO2eq accounting for a training run: measured where a sensor allows, estimated otherwise.

The paper (Rafat et al. 2023) measured energy with carbontracker and multiplied
it by a PUE of 1.67.  This module reproduces that bookkeeping with three
components, each of which says how it was obtained:

``gpu``
    NVML's total-energy counter of the run's GPU (Volta and newer), read at the
    start and at every snapshot: a *measurement*.  Where the counter is not
    supported, the GPU power is sampled in a background thread and integrated,
    by carbontracker's ``NvidiaGPU`` component when it is available, else by
    NVML directly: still a measurement, only a coarser one.
``cpu`` and ``dram``
    The RAPL counters under ``/sys/class/powercap`` when they are readable,
    read through carbontracker's ``IntelCPU`` component when it is available,
    else by this module (it also handles counter wrap-around).  RAPL covers
    the whole socket, not only this process.  Without RAPL (virtual machines,
    containers, non-root users on recent kernels) both are *estimated*: CPU
    time of the process and its children x a per-core wattage, and the mean
    resident memory x a per-GiB wattage.

Only carbontracker's component classes are used.  Its top-level
``CarbonTracker`` looks the location up over the network (which stalls
offline) and multiplies by its own hard-coded PUE; neither may enter these
numbers, so PUE and carbon intensity here are always ours and explicit.

A missing or failing sensor never stops a run: every read is guarded, and a
failing sensor hands its component to the next source in line (ultimately
the estimate) with a warning logged once per process.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from .checks import real_number

logger = logging.getLogger(__name__)

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


def _warn_once(key: str, message: str, *args: Any) -> None:
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


def _ordered(names: Iterable[str]) -> List[str]:
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
        for name in _ordered(self.components):
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
        names = _ordered({n for r in reports for n in r.components})
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


# --------------------------------------------------------------------------- sensor adapters
# Thin wrappers around the external libraries; the meter only talks to these,
# so tests can replace the factory functions without a GPU or RAPL.


class NvmlDevice:
    """The few NVML calls the meter needs, for one GPU (NVML index, not CUDA index)."""

    def __init__(self, nvml_index: int):
        import pynvml

        self._nvml = pynvml
        pynvml.nvmlInit()  # reference counted by NVML, so other users are unaffected
        try:
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(nvml_index)
        except Exception:
            pynvml.nvmlShutdown()
            raise

    def total_energy_mj(self) -> float:
        """Energy since the driver was loaded, in millijoules (Volta and newer)."""
        return float(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))

    def power_w(self) -> float:
        """Current board power in watts."""
        return self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000.0

    def close(self) -> None:
        self._nvml.nvmlShutdown()


def open_nvml_device(nvml_index: int) -> NvmlDevice:
    """Open one GPU through NVML; replaced in tests by a fake with the same three methods."""
    return NvmlDevice(nvml_index)


class _CarbontrackerGpu:
    """carbontracker's ``NvidiaGPU`` component, reduced to the power of one GPU.

    ``NvidiaGPU`` lists the GPUs of CUDA_VISIBLE_DEVICES (if it is a list of
    integers) or else all GPUs, in that order; ``position`` indexes that list,
    which is exactly the CUDA device index under the same rule.
    """

    def __init__(self, position: int):
        from carbontracker.components.gpu.nvidia import NvidiaGPU

        handler = NvidiaGPU(pids=[os.getpid()], devices_by_pid=False)
        if not handler.available():
            raise RuntimeError("carbontracker reports no NVIDIA GPU")
        handler.init()
        self._handler = handler
        self._position = position
        self.power_w()  # fail now, not in the sampling thread

    def power_w(self) -> float:
        return float(self._handler.power_usage()[self._position])

    def close(self) -> None:
        self._handler.shutdown()


def _open_carbontracker_gpu(position: int) -> Optional[_CarbontrackerGpu]:
    """carbontracker's GPU power for CUDA device ``position``, or None if it cannot serve."""
    try:
        return _CarbontrackerGpu(position)
    except Exception as exc:  # ImportError, NVMLError, IndexError, ...
        logger.debug("carbontracker NvidiaGPU unavailable: %s", exc)
        return None


class _CarbontrackerCpu:
    """carbontracker's ``IntelCPU`` (RAPL) component, summed into cpu and dram watts.

    Each ``power_w`` call blocks for carbontracker's one-second measuring
    window, which is why it only runs in the meter's background thread.
    """

    def __init__(self) -> None:
        from carbontracker.components.cpu.intel import IntelCPU

        handler = IntelCPU(pids=[os.getpid()], devices_by_pid=False)
        if not handler.available():
            raise RuntimeError("carbontracker reports no RAPL")
        handler.init()
        self._handler = handler
        self._names = list(handler.devices())  # e.g. ["cpu:0", "dram:0"]
        if not any(n.startswith("cpu") for n in self._names):
            raise RuntimeError("carbontracker found no RAPL package domain")
        self.provides = tuple(k for k in ("cpu", "dram") if any(n.startswith(k) for n in self._names))

    def power_w(self) -> Dict[str, float]:
        watts = dict.fromkeys(self.provides, 0.0)
        for name, value in zip(self._names, self._handler.power_usage()):
            kind = name.split(":")[0]
            if kind in watts:
                watts[kind] += float(value)
        return watts

    def close(self) -> None:
        self._handler.shutdown()


def _open_carbontracker_cpu(powercap_root: str) -> Optional[_CarbontrackerCpu]:
    """carbontracker's RAPL reader, or None when it cannot serve this meter.

    carbontracker always reads the real /sys/class/powercap and only checks
    that the folder exists, so it is used only when the meter looks at that
    same folder and the counters there are readable.
    """
    try:
        from carbontracker.components.cpu import intel

        if os.path.realpath(powercap_root) != os.path.realpath(intel.RAPL_DIR):
            return None
        if not any(d.kind == "package" for d in discover_rapl_domains(powercap_root)):
            return None
        return _CarbontrackerCpu()
    except Exception as exc:
        logger.debug("carbontracker IntelCPU unavailable: %s", exc)
        return None


@dataclass(frozen=True)
class RaplDomain:
    """One RAPL energy counter: a CPU package or a DRAM domain."""

    path: str
    kind: str  # "package" or "dram"
    max_energy_uj: Optional[int]

    def read_uj(self) -> int:
        with open(os.path.join(self.path, "energy_uj")) as f:
            return int(f.read().strip())


_RAPL_DIR_RE = re.compile(r"intel-rapl:\d+(:\d+)?$")


def discover_rapl_domains(root: str = POWERCAP_ROOT) -> List[RaplDomain]:
    """Readable package and DRAM RAPL domains under ``root`` (empty if none).

    Core, uncore and psys domains are skipped: the first two are inside the
    package, and psys covers the whole platform, so either would count twice.
    """
    if not os.path.isdir(root):
        return []
    candidates = []
    for entry in sorted(os.listdir(root)):
        top = os.path.join(root, entry)
        if not _RAPL_DIR_RE.match(entry) or not os.path.isdir(top):
            continue
        candidates.append(top)
        # Subdomains appear both flat under root and nested in their package.
        candidates.extend(
            os.path.join(top, sub) for sub in sorted(os.listdir(top)) if _RAPL_DIR_RE.match(sub)
        )
    domains, seen, unreadable = [], set(), []
    for path in candidates:
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        try:
            with open(os.path.join(path, "name")) as f:
                name = f.read().strip()
        except OSError:
            continue
        kind = "package" if name.startswith("package") else "dram" if name == "dram" else None
        if kind is None:
            continue
        try:
            with open(os.path.join(path, "max_energy_range_uj")) as f:
                max_uj: Optional[int] = int(f.read().strip())
        except (OSError, ValueError):
            max_uj = None
        domain = RaplDomain(path=path, kind=kind, max_energy_uj=max_uj)
        try:
            domain.read_uj()
        except (OSError, ValueError):
            unreadable.append(path)
            continue
        domains.append(domain)
    if unreadable:
        _warn_once(
            f"rapl-unreadable:{root}",
            "RAPL counters under %s are not readable (root-only on most kernels since 2020); "
            "CPU/DRAM energy falls back to an estimate for those domains",
            root,
        )
    return domains


# --------------------------------------------------------------------------- channels
# A channel is one running source of energy for one or more components.  The
# meter starts several per component (preferred first, the estimate last) and
# reports, for each component, the first one that is still healthy.


class _Channel:
    """Base class: failure handling and thread-safety shared by all sources."""

    provides: Tuple[str, ...] = ()  # component names this source can report
    key = "channel"  # names the source in warnings
    source = "measured"  # what a healthy reading is

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.healthy = True
        self._t0 = 0.0
        self._last_good: Dict[str, Tuple[float, float]] = {}  # name -> (t, joules)
        self._failed_at: Optional[float] = None

    # subclasses implement these three; they may raise
    def _start(self, t: float) -> None:
        pass

    def _tick(self, t: float) -> None:
        pass

    def _joules(self, t: float, final: bool) -> Dict[str, float]:
        raise NotImplementedError

    def method(self, name: str) -> str:
        raise NotImplementedError

    def close(self) -> None:
        pass

    # guarded public side
    def start(self, t: float) -> None:
        """Take the baseline reading; raises if the source cannot serve (the meter drops it)."""
        self._t0 = t
        self._start(t)

    def has_data(self) -> bool:
        """False until the source can say anything (a sampler before its first sample)."""
        return True

    def tick(self, t: float) -> None:
        """Background work, then remember the energy so far for a later extrapolation."""
        if not self.healthy:
            return
        try:
            self._tick(t)
            t = time.monotonic()  # a sampler's read may have taken a while
            with self._lock:
                if self.healthy and self.has_data():
                    self._last_good = {n: (t, j) for n, j in self._joules(t, False).items()}
        except Exception as exc:
            self._fail(t, exc)

    def read(self, t: float, final: bool = False) -> Dict[str, ComponentEnergy]:
        """Energy since start per component; a failed source extrapolates, marked estimated."""
        with self._lock:
            if self.healthy:
                if not self.has_data():
                    return {}
                try:
                    joules = self._joules(t, final)
                    self._last_good = {n: (t, j) for n, j in joules.items()}
                    return {n: self._component(n, j, self.source, self.method(n)) for n, j in joules.items()}
                except Exception as exc:
                    self._fail_locked(t, exc)
            return {n: self._extrapolated(n, t) for n in self.provides}

    def _component(self, name: str, joules: float, source: str, method: str) -> ComponentEnergy:
        return ComponentEnergy(name, max(0.0, joules) / JOULES_PER_KWH, source, method)

    def _extrapolated(self, name: str, t: float) -> ComponentEnergy:
        # Only reported when no healthier source is left: keep the mean power
        # seen so far rather than pretend the component stopped drawing power.
        t_good, j_good = self._last_good.get(name, (self._t0, 0.0))
        span = t_good - self._t0
        joules = j_good + (j_good / span) * max(0.0, t - t_good) if span > 0 else j_good
        failed = (self._failed_at or t) - self._t0
        method = f"{self.method(name)}, extrapolated at its mean power after the sensor failed {failed:.0f} s in"
        return self._component(name, joules, "estimated", method)

    def _fail(self, t: float, exc: BaseException) -> None:
        with self._lock:
            self._fail_locked(t, exc)

    def _fail_locked(self, t: float, exc: BaseException) -> None:
        if self.healthy:
            self.healthy = False
            self._failed_at = t
            _warn_once(
                f"fail:{self.key}",
                "energy sensor %s failed (%s: %s); its components fall back to the next source",
                self.key,
                type(exc).__name__,
                exc,
            )


class _NvmlCounterChannel(_Channel):
    """GPU energy as the difference of NVML's total-energy counter (mJ)."""

    provides = ("gpu",)

    def __init__(self, device: Any, nvml_index: int):
        super().__init__()
        self._device = device
        self._index = nvml_index
        self.key = f"nvml-counter:{nvml_index}"
        self._start_mj = 0.0

    def _start(self, t: float) -> None:
        self._start_mj = self._device.total_energy_mj()

    def _joules(self, t: float, final: bool) -> Dict[str, float]:
        return {"gpu": (self._device.total_energy_mj() - self._start_mj) / 1000.0}

    def method(self, name: str) -> str:
        return f"NVML total-energy counter (GPU {self._index})"


class _PowerChannel(_Channel):
    """Integrates power samples taken by the background thread.

    Each sample's watts are credited to the interval since the previous
    sample (NVML and carbontracker both report power averaged over the recent
    past).  Snapshots report what has been integrated; the final reading adds
    the tail since the last sample at the last power seen.
    """

    def __init__(
        self,
        read_watts: Callable[[], Dict[str, float]],
        provides: Sequence[str],
        methods: Dict[str, str],
        key: str,
        close: Callable[[], None] = lambda: None,
    ):
        super().__init__()
        self._read_watts = read_watts
        self.provides = tuple(provides)
        self._methods = methods
        self.key = key
        self._close = close
        self._joules_acc = dict.fromkeys(self.provides, 0.0)
        self._last_watts: Dict[str, float] = {}
        self._t_last = 0.0
        self._t_end: Optional[float] = None

    def _start(self, t: float) -> None:
        self._t_last = t

    def clip(self, t_end: float) -> None:
        """No credit past the end of the run, even for a sample still in flight."""
        with self._lock:
            self._t_end = t_end

    def _tick(self, t: float) -> None:
        watts = self._read_watts()  # may block (carbontracker's 1 s window): outside the lock
        t = time.monotonic()
        with self._lock:
            if self._t_end is not None:
                t = min(t, self._t_end)
            dt = max(0.0, t - self._t_last)
            for name in self.provides:
                w = float(watts.get(name, 0.0))
                if not (w >= 0 and math.isfinite(w)):
                    raise ValueError(f"invalid power reading {w!r} W for {name}")
                self._joules_acc[name] += w * dt
                self._last_watts[name] = w
            self._t_last = max(self._t_last, t)

    def has_data(self) -> bool:
        return bool(self._last_watts)

    def _joules(self, t: float, final: bool) -> Dict[str, float]:
        tail = max(0.0, t - self._t_last) if final else 0.0
        return {n: self._joules_acc[n] + self._last_watts.get(n, 0.0) * tail for n in self.provides}

    def method(self, name: str) -> str:
        return self._methods[name]

    def close(self) -> None:
        self._close()


class _RaplChannel(_Channel):
    """CPU package and DRAM energy from this module's own RAPL counter reads.

    The counters wrap at ``max_energy_range_uj`` (a few hundred kJ, i.e. tens
    of minutes at full load), so the background thread reads them every
    interval and accumulates the deltas; one wrap per interval is undone.
    """

    key = "rapl"
    _KINDS = (("cpu", "package"), ("dram", "dram"))  # component name, RAPL domain kind

    def __init__(self, domains: Sequence[RaplDomain]):
        super().__init__()
        self._domains = list(domains)
        kinds = {d.kind for d in self._domains}
        self.provides = tuple(name for name, kind in self._KINDS if kind in kinds)
        self._last_uj: List[int] = []
        self._acc_uj: List[int] = []

    def _start(self, t: float) -> None:
        self._last_uj = [d.read_uj() for d in self._domains]
        self._acc_uj = [0] * len(self._domains)

    def _update(self) -> None:
        for i, domain in enumerate(self._domains):
            now = domain.read_uj()
            delta = now - self._last_uj[i]
            if delta < 0:
                if not domain.max_energy_uj:
                    raise RuntimeError(f"RAPL counter {domain.path} went backwards with no known range")
                delta += domain.max_energy_uj
            self._acc_uj[i] += delta
            self._last_uj[i] = now

    def _joules(self, t: float, final: bool) -> Dict[str, float]:
        self._update()
        return {
            name: sum(a for a, d in zip(self._acc_uj, self._domains) if d.kind == kind) / 1e6
            for name, kind in self._KINDS
            if name in self.provides
        }

    def method(self, name: str) -> str:
        what = "package" if name == "cpu" else "dram"
        return f"RAPL {what} counter (whole socket, all processes)"


def _process_cpu_seconds() -> Tuple[float, Dict[int, float]]:
    """CPU seconds of this process and its reaped children, and of each live child.

    Live children (e.g. DataLoader workers) only enter the parent's
    ``children_*`` times once reaped, so they are read one by one until then;
    a child is in exactly one of the two at any moment, so nothing counts twice.
    """
    try:
        import psutil

        proc = psutil.Process()
        ct = proc.cpu_times()
        own = ct.user + ct.system + ct.children_user + ct.children_system
        live: Dict[int, float] = {}
        for child in proc.children(recursive=False):
            try:
                c = child.cpu_times()
                live[child.pid] = c.user + c.system + c.children_user + c.children_system
            except Exception:  # exited meanwhile: it will show up in children_* once reaped
                pass
        return own, live
    except Exception:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system, {}


class _CpuTimeChannel(_Channel):
    """Estimated CPU energy: CPU time of the process tree x watts per busy core."""

    provides = ("cpu",)
    key = "cpu-time"
    source = "estimated"

    def __init__(self, watts_per_core: float):
        super().__init__()
        self._watts = float(watts_per_core)
        self._own0 = 0.0
        self._live0: Dict[int, float] = {}

    def _start(self, t: float) -> None:
        self._own0, self._live0 = _process_cpu_seconds()

    def _joules(self, t: float, final: bool) -> Dict[str, float]:
        own, live = _process_cpu_seconds()
        seconds = own - self._own0 + sum(s - self._live0.get(pid, 0.0) for pid, s in live.items())
        return {"cpu": max(0.0, seconds) * self._watts}

    def method(self, name: str) -> str:
        return f"TDP model: process+children CPU time x {self._watts:g} W per core"


def _rss_bytes() -> float:
    try:
        import psutil

        return float(psutil.Process().memory_info().rss)
    except Exception:
        with open("/proc/self/statm") as f:
            return float(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _RssChannel(_Channel):
    """Estimated DRAM energy: resident memory of the process, integrated over time, x watts per GiB."""

    provides = ("dram",)
    key = "rss"
    source = "estimated"

    def __init__(self, watts_per_gib: float):
        super().__init__()
        self._watts = float(watts_per_gib)
        self._byte_seconds = 0.0
        self._last_bytes = 0.0
        self._t_last = 0.0

    def _start(self, t: float) -> None:
        self._last_bytes = _rss_bytes()
        self._t_last = t

    def _sample(self, t: float) -> None:
        # The previous size is held until now (left Riemann sum).
        if t > self._t_last:
            self._byte_seconds += self._last_bytes * (t - self._t_last)
            self._t_last = t
        self._last_bytes = _rss_bytes()

    def _joules(self, t: float, final: bool) -> Dict[str, float]:
        self._sample(max(t, self._t_last))
        return {"dram": self._byte_seconds / BYTES_PER_GIB * self._watts}

    def method(self, name: str) -> str:
        return f"RSS model: mean process resident memory x {self._watts:g} W per GiB"


# --------------------------------------------------------------------------- device mapping


def _cuda_index(device: Any) -> Optional[int]:
    """The CUDA index of ``device``, or None when it is not a CUDA device."""
    if device is None:
        return None
    if isinstance(device, int):
        return device
    text = str(device)
    if not text.startswith("cuda"):
        return None
    if ":" in text:
        return int(text.split(":", 1)[1])
    index = None if isinstance(device, str) else getattr(device, "index", None)
    if index is not None:
        return int(index)
    # Bare "cuda" means torch's current device.  If torch was never imported,
    # nothing can have changed it from 0, and importing it here costs seconds.
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available():
            return int(torch.cuda.current_device())
    except Exception:
        pass
    return 0


def _visible_device_list() -> Optional[List[int]]:
    """CUDA_VISIBLE_DEVICES as a list of NVML indices, or None if unset or not plain integers."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        return None


def nvml_index_for(cuda_index: int) -> int:
    """NVML index of the GPU that CUDA calls ``cuda_index``.

    Simplification: CUDA_VISIBLE_DEVICES is honoured only when it is a list of
    integers (UUIDs and MIG names fall back to the identity), and CUDA's and
    NVML's orderings are assumed to agree, which holds with
    CUDA_DEVICE_ORDER=PCI_BUS_ID and on machines with identical GPUs.
    """
    visible = _visible_device_list()
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None and visible is None:
        logger.debug("CUDA_VISIBLE_DEVICES is not a list of integers; assuming NVML index = CUDA index")
    if visible is not None and cuda_index < len(visible):
        return visible[cuda_index]
    return cuda_index


def _carbontracker_can_map_gpus() -> bool:
    """Whether carbontracker's GPU list is indexed like CUDA devices.

    It lists the GPUs of a plain CUDA_VISIBLE_DEVICES list, or else all GPUs by
    NVML index, which is the rule of :func:`nvml_index_for`; with UUIDs in the
    variable its list and ours could disagree.
    """
    return os.environ.get("CUDA_VISIBLE_DEVICES") is None or _visible_device_list() is not None


# --------------------------------------------------------------------------- the meter


class EnergyMeter:
    """Measures (or estimates) the energy of the code in its ``with`` block.

    Usage::

        with EnergyMeter(device="cuda:0") as meter:
            for epoch in range(epochs):
                train_one_epoch()
                log(meter.snapshot())   # energy so far
        meter.report.co2_g

    Sources per component, best first (the first still healthy is reported):
    gpu: NVML counter, then power sampling (carbontracker, else NVML);
    cpu/dram: carbontracker IntelCPU, then own RAPL counters, then estimates.
    """

    def __init__(
        self,
        pue: float = DEFAULT_PUE,
        carbon_intensity_g_per_kwh: float = DEFAULT_CARBON_INTENSITY,
        device: Any = None,
        sample_interval_s: float = 1.0,
        cpu_watts_per_core: float = 12.0,
        dram_watts_per_gb: float = 0.3725,
        use_carbontracker: bool = True,
        powercap_root: Optional[str] = None,
    ):
        if not sample_interval_s > 0:
            raise ValueError(f"sample_interval_s must be > 0; got {sample_interval_s}")
        # A PUE below 1 or a negative intensity would make every bill this meter signs too small.
        self.pue = real_number("pue", pue, at_least=1)
        self.carbon_intensity_g_per_kwh = real_number(
            "carbon_intensity_g_per_kwh", carbon_intensity_g_per_kwh, at_least=0
        )
        self.device = device
        self.sample_interval_s = float(sample_interval_s)
        self.cpu_watts_per_core = float(cpu_watts_per_core)
        self.dram_watts_per_gb = float(dram_watts_per_gb)  # GB taken as GiB (2**30 bytes)
        self.use_carbontracker = bool(use_carbontracker)
        self.powercap_root = POWERCAP_ROOT if powercap_root is None else powercap_root
        self.report: Optional[EnergyReport] = None

        self._channels: List[_Channel] = []
        self._closers: List[Callable[[], None]] = []
        self._t0: Optional[float] = None
        self._t_end: Optional[float] = None
        self._stop_event = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        self._high_water: Dict[Tuple[str, str], float] = {}

    # -- context manager -------------------------------------------------

    def __enter__(self) -> "EnergyMeter":
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.stop()
        return False  # never swallow the user's exception

    # -- public ----------------------------------------------------------

    def start(self) -> "EnergyMeter":
        """Open the sensors, take baselines and start the sampling thread."""
        if self._t0 is not None and self._t_end is None:
            raise RuntimeError("EnergyMeter is already running")
        self.report = None
        self._t_end = None
        self._high_water = {}
        self._stop_event = threading.Event()
        self._t0 = time.monotonic()
        try:
            self._channels = self._open_channels(self._t0)
        except Exception as exc:  # each sensor is guarded; this is the last net
            logger.warning("energy meter could not open its sensors (%s); reporting no energy", exc)
            self._channels = []
        self._thread = threading.Thread(target=self._sample_loop, name="greenkd-energy-meter", daemon=True)
        self._thread.start()
        return self

    def snapshot(self) -> EnergyReport:
        """Energy from the start until now (the final report once stopped); safe from any thread."""
        if self._t0 is None:
            raise RuntimeError("EnergyMeter has not been started")
        if self._t_end is not None and self.report is not None:
            return self.report
        return self._build(time.monotonic(), final=False)

    def stop(self) -> EnergyReport:
        """Stop sampling, close the sensors and set :attr:`report`."""
        if self._t0 is None:
            raise RuntimeError("EnergyMeter has not been started")
        if self._t_end is not None and self.report is not None:
            return self.report
        t_end = time.monotonic()
        try:
            for ch in self._channels:
                if isinstance(ch, _PowerChannel):
                    ch.clip(t_end)
            self._stop_event.set()
            if self._thread is not None:
                # carbontracker's RAPL read blocks for 1 s, hence the margin.
                self._thread.join(timeout=self.sample_interval_s + 3.0)
                if self._thread.is_alive():
                    logger.warning("energy meter thread did not stop in time; reporting what it has")
            report = self._build(t_end, final=True)
        except Exception as exc:  # never let accounting break the caller's run
            logger.warning("energy report failed (%s); reporting no components", exc)
            report = self._empty(t_end)
        self._t_end = t_end
        self.report = report
        self._close_all()
        return report

    # -- internals -------------------------------------------------------

    def _empty(self, t: float) -> EnergyReport:
        return EnergyReport(max(0.0, t - (self._t0 or t)), {}, self.pue, self.carbon_intensity_g_per_kwh)

    def _try_start(self, channel: _Channel, t: float) -> Optional[_Channel]:
        try:
            channel.start(t)
            return channel
        except Exception as exc:
            _warn_once(
                f"start:{channel.key}",
                "energy sensor %s could not start (%s: %s); using the next source",
                channel.key,
                type(exc).__name__,
                exc,
            )
            channel.close()
            return None

    def _open_channels(self, t: float) -> List[_Channel]:
        channels: List[_Channel] = []
        channels += self._gpu_channels(t)
        channels += self._cpu_channels(t)
        # The estimates always run: they are the last resort of cpu and dram.
        for estimate in (_CpuTimeChannel(self.cpu_watts_per_core), _RssChannel(self.dram_watts_per_gb)):
            started = self._try_start(estimate, t)
            if started is not None:
                channels.append(started)
        return channels

    def _gpu_channels(self, t: float) -> List[_Channel]:
        try:
            cuda_index = _cuda_index(self.device)
        except Exception as exc:
            logger.debug("cannot parse device %r: %s", self.device, exc)
            return []
        if cuda_index is None:
            return []
        nvml_index = nvml_index_for(cuda_index)
        nvml = self._open_nvml(nvml_index)
        channels: List[_Channel] = []
        if nvml is not None:
            counter = _NvmlCounterChannel(nvml, nvml_index)
            try:
                counter.start(t)
                channels.append(counter)
            except Exception as exc:  # pre-Volta GPUs, some vGPU/MIG setups
                logger.info("NVML energy counter unsupported on GPU %s (%s); sampling power", nvml_index, exc)
        # Power sampling runs even when the counter works: it is the backup.
        power = self._gpu_power_channel(cuda_index, nvml_index, nvml)
        if power is not None and self._try_start(power, t) is not None:
            channels.append(power)
        return channels

    def _open_nvml(self, nvml_index: int) -> Optional[Any]:
        try:
            nvml = open_nvml_device(nvml_index)
        except Exception as exc:
            _warn_once(
                "nvml-open",
                "cannot open NVML for GPU %s (%s); GPU energy will not be reported",
                nvml_index,
                exc,
            )
            return None
        self._closers.append(nvml.close)
        return nvml

    def _gpu_power_channel(self, cuda_index: int, nvml_index: int, nvml: Optional[Any]) -> Optional[_Channel]:
        every = f"sampled every {self.sample_interval_s:g} s (GPU {nvml_index})"
        ct = None
        if self.use_carbontracker and _carbontracker_can_map_gpus():
            ct = _open_carbontracker_gpu(cuda_index)
        if ct is not None:
            return _PowerChannel(
                lambda: {"gpu": ct.power_w()},
                ("gpu",),
                {"gpu": f"carbontracker NvidiaGPU power {every}"},
                key="carbontracker-gpu",
                close=ct.close,
            )
        if nvml is not None:
            return _PowerChannel(
                lambda: {"gpu": nvml.power_w()},
                ("gpu",),
                {"gpu": f"NVML power {every}"},
                key=f"nvml-power:{nvml_index}",
            )
        return None

    def _cpu_channels(self, t: float) -> List[_Channel]:
        channels: List[_Channel] = []
        ct = _open_carbontracker_cpu(self.powercap_root) if self.use_carbontracker else None
        if ct is not None:
            methods = {
                name: f"carbontracker IntelCPU (RAPL {what} power sampled; whole socket, all processes)"
                for name, what in (("cpu", "package"), ("dram", "dram"))
            }
            channel = _PowerChannel(ct.power_w, ct.provides, methods, key="carbontracker-cpu", close=ct.close)
            started = self._try_start(channel, t)
            if started is not None:
                channels.append(started)
        try:
            domains = discover_rapl_domains(self.powercap_root)
        except Exception as exc:
            logger.debug("RAPL discovery failed: %s", exc)
            domains = []
        if any(d.kind == "package" for d in domains):
            started = self._try_start(_RaplChannel(domains), t)
            if started is not None:
                channels.append(started)
        else:
            logger.debug("no readable RAPL package counter in %s; CPU energy is estimated", self.powercap_root)
        return channels

    def _sample_loop(self) -> None:
        while not self._stop_event.is_set():
            began = time.monotonic()
            for ch in self._channels:
                if self._stop_event.is_set():
                    break
                ch.tick(time.monotonic())
            spent = time.monotonic() - began
            self._stop_event.wait(max(0.0, self.sample_interval_s - spent))

    def _build(self, t: float, final: bool) -> EnergyReport:
        readings: Dict[str, List[ComponentEnergy]] = {}
        healthy: Dict[str, List[ComponentEnergy]] = {}
        for ch in self._channels:
            try:
                values = ch.read(t, final=final)
            except Exception as exc:  # read() guards itself; this is belt and braces
                logger.debug("energy channel %s read failed: %s", ch.key, exc)
                continue
            for name, comp in values.items():
                readings.setdefault(name, []).append(comp)
                if ch.healthy:
                    healthy.setdefault(name, []).append(comp)
        components = {}
        with self._lock:
            for name in _ordered(readings):
                comp = (healthy.get(name) or readings[name])[0]
                # Snapshots must not go down: a live child's CPU time can
                # vanish for an instant before it is reaped.  Only within one
                # method, so a switch of source is reported as it is.
                key = (name, comp.method)
                energy = max(comp.energy_kwh, self._high_water.get(key, 0.0))
                self._high_water[key] = energy
                components[name] = replace(comp, energy_kwh=energy)
        return EnergyReport(
            duration_s=max(0.0, t - (self._t0 or t)),
            components=components,
            pue=self.pue,
            carbon_intensity_g_per_kwh=self.carbon_intensity_g_per_kwh,
        )

    def _close_all(self) -> None:
        for ch in self._channels:
            try:
                ch.close()
            except Exception as exc:
                logger.debug("closing energy channel %s failed: %s", ch.key, exc)
        for close in self._closers:
            try:
                close()
            except Exception as exc:
                logger.debug("closing NVML failed: %s", exc)
        self._closers = []
