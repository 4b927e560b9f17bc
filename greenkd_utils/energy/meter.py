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

import threading
import time
from dataclasses import replace
from typing import Any, Callable, Dict, List, Optional, Tuple

from greenkd_utils.energy.channels import (
    Channel,
    CpuTimeChannel,
    NvmlCounterChannel,
    PowerChannel,
    RaplChannel,
    RssChannel,
)
from greenkd_utils.energy.checks import real_number
from greenkd_utils.energy.report import (
    DEFAULT_CARBON_INTENSITY,
    DEFAULT_PUE,
    POWERCAP_ROOT,
    ComponentEnergy,
    EnergyReport,
    in_component_order,
    logger,
    warn_once,
)
from greenkd_utils.energy.sensors import (
    carbontracker_can_map_gpus,
    cuda_index_of,
    discover_rapl_domains,
    nvml_index_for,
    open_carbontracker_cpu,
    open_carbontracker_gpu,
    open_nvml_device,
)

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
        host_shared: bool = False,
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
        # Other runs on this machine: a whole-socket sensor would bill their work to this run.
        self.host_shared = bool(host_shared)
        self.report: Optional[EnergyReport] = None

        self._channels: List[Channel] = []
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
        final = self._final_report()
        return final if final is not None else self._build(time.monotonic(), final=False)

    def stop(self) -> EnergyReport:
        """Stop sampling, close the sensors and set :attr:`report`."""
        final = self._final_report()
        if final is not None:
            return final
        t_end = time.monotonic()
        try:
            for ch in self._channels:
                if isinstance(ch, PowerChannel):
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

    def _final_report(self) -> Optional[EnergyReport]:
        """The report of a stopped meter, None while it runs; a meter never started has neither."""
        if self._t0 is None:
            raise RuntimeError("EnergyMeter has not been started")
        return self.report if self._t_end is not None else None

    def _empty(self, t: float) -> EnergyReport:
        return EnergyReport(max(0.0, t - (self._t0 or t)), {}, self.pue, self.carbon_intensity_g_per_kwh)

    def _started(self, channel: Optional[Channel], t: float) -> List[Channel]:
        """``[channel]`` once it has started; ``[]`` when there is none or it cannot serve (the next source in line
        takes over)."""
        if channel is None:
            return []
        try:
            channel.start(t)
            return [channel]
        except Exception as exc:
            warn_once(
                f"start:{channel.key}",
                "energy sensor %s could not start (%s: %s); using the next source",
                channel.key,
                type(exc).__name__,
                exc,
            )
            channel.close()
            return []

    def _open_channels(self, t: float) -> List[Channel]:
        channels: List[Channel] = []
        channels += self._gpu_channels(t)
        if not self.host_shared:
            channels += self._cpu_channels(t)
        # The estimates always run: they are the last resort of cpu and dram.
        for estimate in (CpuTimeChannel(self.cpu_watts_per_core), RssChannel(self.dram_watts_per_gb)):
            channels += self._started(estimate, t)
        return channels

    def _gpu_channels(self, t: float) -> List[Channel]:
        try:
            cuda_index = cuda_index_of(self.device)
        except Exception as exc:
            logger.debug("cannot parse device %r: %s", self.device, exc)
            return []
        if cuda_index is None:
            return []
        nvml_index = nvml_index_for(cuda_index)
        nvml = self._open_nvml(nvml_index)
        channels: List[Channel] = []
        if nvml is not None:
            counter = NvmlCounterChannel(nvml, nvml_index)
            try:
                counter.start(t)
                channels.append(counter)
            except Exception as exc:  # pre-Volta GPUs, some vGPU/MIG setups
                logger.info("NVML energy counter unsupported on GPU %s (%s); sampling power", nvml_index, exc)
        # Power sampling runs even when the counter works: it is the backup.
        return channels + self._started(self._gpu_power_channel(cuda_index, nvml_index, nvml), t)

    def _open_nvml(self, nvml_index: int) -> Optional[Any]:
        """NVML's handle of GPU ``nvml_index``, closed when the meter stops; None where NVML cannot open it."""
        try:
            nvml = open_nvml_device(nvml_index)
        except Exception as exc:
            warn_once(
                "nvml-open",
                "cannot open NVML for GPU %s (%s); GPU energy will not be reported",
                nvml_index,
                exc,
            )
            return None
        self._closers.append(nvml.close)
        return nvml

    def _gpu_power_channel(self, cuda_index: int, nvml_index: int, nvml: Optional[Any]) -> Optional[Channel]:
        every = f"sampled every {self.sample_interval_s:g} s (GPU {nvml_index})"
        ct = None
        if self.use_carbontracker and carbontracker_can_map_gpus():
            ct = open_carbontracker_gpu(cuda_index)
        if ct is not None:
            return _gpu_power(ct, f"carbontracker NvidiaGPU power {every}", "carbontracker-gpu", close=ct.close)
        if nvml is not None:
            # NVML itself is closed with the meter: it may also serve the energy counter.
            return _gpu_power(nvml, f"NVML power {every}", f"nvml-power:{nvml_index}")
        return None

    def _cpu_channels(self, t: float) -> List[Channel]:
        channels: List[Channel] = []
        ct = open_carbontracker_cpu(self.powercap_root) if self.use_carbontracker else None
        if ct is not None:
            methods = {
                name: f"carbontracker IntelCPU (RAPL {what} power sampled; whole socket, all processes)"
                for name, what in (("cpu", "package"), ("dram", "dram"))
            }
            channel = PowerChannel(ct.power_w, ct.provides, methods, key="carbontracker-cpu", close=ct.close)
            channels += self._started(channel, t)
        try:
            domains = discover_rapl_domains(self.powercap_root)
        except Exception as exc:
            logger.debug("RAPL discovery failed: %s", exc)
            domains = []
        if any(d.kind == "package" for d in domains):
            channels += self._started(RaplChannel(domains), t)
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
            for name in in_component_order(readings):
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


def _gpu_power(sensor: Any, method: str, key: str, close: Callable[[], None] = lambda: None) -> PowerChannel:
    """A channel that samples ``sensor.power_w()`` as the power of the GPU."""
    return PowerChannel(lambda: {"gpu": sensor.power_w()}, ("gpu",), {"gpu": method}, key=key, close=close)
