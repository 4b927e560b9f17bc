"""Sensor adapters: thin wrappers around NVML, carbontracker's components and the RAPL counters, and the
mapping from a CUDA device to its NVML index. The meter only talks to these, so tests can replace the
factory functions without a GPU or RAPL."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from greenkd_utils.energy.report import POWERCAP_ROOT, warn_once, logger

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


class _CarbontrackerComponent:
    """One of carbontracker's components, initialised for this process; closing shuts it down."""

    def __init__(self, component_class: Any, missing: str):
        handler = component_class(pids=[os.getpid()], devices_by_pid=False)
        if not handler.available():
            raise RuntimeError(f"carbontracker reports no {missing}")
        handler.init()
        self._handler = handler

    def close(self) -> None:
        self._handler.shutdown()


class _CarbontrackerGpu(_CarbontrackerComponent):
    """carbontracker's ``NvidiaGPU`` component, reduced to the power of one GPU.

    ``NvidiaGPU`` lists the GPUs of CUDA_VISIBLE_DEVICES (if it is a list of
    integers) or else all GPUs, in that order; ``position`` indexes that list,
    which is exactly the CUDA device index under the same rule.
    """

    def __init__(self, position: int):
        from carbontracker.components.gpu.nvidia import NvidiaGPU

        super().__init__(NvidiaGPU, "NVIDIA GPU")
        self._position = position
        self.power_w()  # fail now, not in the sampling thread

    def power_w(self) -> float:
        return float(self._handler.power_usage()[self._position])


def open_carbontracker_gpu(position: int) -> Optional[_CarbontrackerGpu]:
    """carbontracker's GPU power for CUDA device ``position``, or None if it cannot serve."""
    try:
        return _CarbontrackerGpu(position)
    except Exception as exc:  # ImportError, NVMLError, IndexError, ...
        logger.debug("carbontracker NvidiaGPU unavailable: %s", exc)
        return None


class _CarbontrackerCpu(_CarbontrackerComponent):
    """carbontracker's ``IntelCPU`` (RAPL) component, summed into cpu and dram watts.

    Each ``power_w`` call blocks for carbontracker's one-second measuring
    window, which is why it only runs in the meter's background thread.
    """

    def __init__(self) -> None:
        from carbontracker.components.cpu.intel import IntelCPU

        super().__init__(IntelCPU, "RAPL")
        self._names = list(self._handler.devices())  # e.g. ["cpu:0", "dram:0"]
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


def open_carbontracker_cpu(powercap_root: str) -> Optional[_CarbontrackerCpu]:
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
        warn_once(
            f"rapl-unreadable:{root}",
            "RAPL counters under %s are not readable (root-only on most kernels since 2020); "
            "CPU/DRAM energy falls back to an estimate for those domains",
            root,
        )
    return domains



# --------------------------------------------------------------------------- device mapping


def cuda_index_of(device: Any) -> Optional[int]:
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


def carbontracker_can_map_gpus() -> bool:
    """Whether carbontracker's GPU list is indexed like CUDA devices.

    It lists the GPUs of a plain CUDA_VISIBLE_DEVICES list, or else all GPUs by
    NVML index, which is the rule of :func:`nvml_index_for`; with UUIDs in the
    variable its list and ours could disagree.
    """
    return os.environ.get("CUDA_VISIBLE_DEVICES") is None or _visible_device_list() is not None


