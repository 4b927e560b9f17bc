"""Channels: one running source of energy (a counter, a sampled power, a CPU-time or memory estimate) for
one or more components."""

from __future__ import annotations

import math
import os
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from greenkd_utils.energy.report import (
    BYTES_PER_GIB,
    JOULES_PER_KWH,
    ComponentEnergy,
    warn_once,
)
from greenkd_utils.energy.sensors import RaplDomain

# --------------------------------------------------------------------------- channels
# A channel is one running source of energy for one or more components.  The
# meter starts several per component (preferred first, the estimate last) and
# reports, for each component, the first one that is still healthy.


class Channel:
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
            warn_once(
                f"fail:{self.key}",
                "energy sensor %s failed (%s: %s); its components fall back to the next source",
                self.key,
                type(exc).__name__,
                exc,
            )


class NvmlCounterChannel(Channel):
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


class PowerChannel(Channel):
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


class RaplChannel(Channel):
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


# Finding the live children means scanning every process in /proc (about 2 ms); the meter is read at every phase
# boundary, so the list is refreshed at most this often, and always for a run's first and final reading.
CHILD_SCAN_INTERVAL_S = 1.0
_children_seen = {"at": -float("inf"), "children": []}


def _live_children(proc, fresh: bool):
    now = time.monotonic()
    if fresh or now - _children_seen["at"] >= CHILD_SCAN_INTERVAL_S:
        _children_seen["children"] = proc.children(recursive=False)
        _children_seen["at"] = now
    return _children_seen["children"]


def _process_cpu_seconds(fresh: bool = True) -> Tuple[float, Dict[int, float]]:
    """CPU seconds of this process and its reaped children, and of each live child.

    Live children (e.g. DataLoader workers) only enter the parent's
    ``children_*`` times once reaped, so they are read one by one until then;
    a child is in exactly one of the two at any moment, so nothing counts twice. A child started since the
    last scan of the process table (``fresh=False``) is counted from the next scan on, with all its CPU time.
    """
    try:
        import psutil

        proc = psutil.Process()
        ct = proc.cpu_times()
        own = ct.user + ct.system + ct.children_user + ct.children_system
        live: Dict[int, float] = {}
        for child in _live_children(proc, fresh):
            try:
                c = child.cpu_times()
                live[child.pid] = c.user + c.system + c.children_user + c.children_system
            except Exception:  # exited meanwhile: it will show up in children_* once reaped
                pass
        return own, live
    except Exception:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system, {}


class EstimateChannel(Channel):
    """An estimate: how much of a resource the process tree uses, x a fixed wattage per unit of it."""

    source = "estimated"
    model: str  # what the wattage multiplies, as the method names it
    unit: str  # what the wattage is per

    def __init__(self, watts_per_unit: float):
        super().__init__()
        self._watts = float(watts_per_unit)

    def method(self, name: str) -> str:
        return f"{self.model} x {self._watts:g} W per {self.unit}"


class CpuTimeChannel(EstimateChannel):
    """Estimated CPU energy: CPU time of the process tree x watts per busy core."""

    provides = ("cpu",)
    key = "cpu-time"
    model = "TDP model: process+children CPU time"
    unit = "core"

    def _start(self, t: float) -> None:
        # CPU seconds at the start: the process's own (with its reaped children) and each live child's.
        self._own0, self._live0 = _process_cpu_seconds()

    def _joules(self, t: float, final: bool) -> Dict[str, float]:
        own, live = _process_cpu_seconds(fresh=final)
        seconds = own - self._own0 + sum(s - self._live0.get(pid, 0.0) for pid, s in live.items())
        return {"cpu": max(0.0, seconds) * self._watts}


def _rss_bytes() -> float:
    try:
        import psutil

        return float(psutil.Process().memory_info().rss)
    except Exception:
        with open("/proc/self/statm") as f:
            return float(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssChannel(EstimateChannel):
    """Estimated DRAM energy: resident memory of the process, integrated over time, x watts per GiB."""

    model = "RSS model: mean process resident memory"
    unit = "GiB"
    provides = ("dram",)
    key = "rss"

    def _start(self, t: float) -> None:
        self._byte_seconds = 0.0
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


