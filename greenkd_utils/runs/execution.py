"""How a run executes on this device: device choice, precision and layout, the optimiser and the paper's
learning-rate schedule, and the provenance a record keeps (library versions, the device it ran on)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import socket
from importlib import metadata
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional

import numpy as np
import torch

from greenkd_utils import __version__


@dataclass(frozen=True)
class ExecutionPlan:
    """Device-dependent execution choices; numerics-changing ones come from the config (``fast``)."""

    device: torch.device
    autocast_dtype: Optional[torch.dtype]
    channels_last: bool
    fused_optimizer: bool
    compile: bool

    @classmethod
    def for_run(cls, settings, device: torch.device) -> "ExecutionPlan":
        cuda = device.type == "cuda"
        fast = settings.fast and cuda  # bf16 and channels_last pay off on tensor cores, not on a small CPU
        return cls(
            device=device,
            autocast_dtype=torch.bfloat16 if fast else None,
            channels_last=fast,
            fused_optimizer=cuda,
            compile=settings.compile and cuda,
        )

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def prepare_batch(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is available; use device='cpu' or 'auto'")
    return device


# ---------------------------------------------------------------------------------------------
# Optimiser and schedule (the paper's: SGD, one-epoch warm-up, x0.2 at the milestones)
# ---------------------------------------------------------------------------------------------
def make_optimizer(model: torch.nn.Module, settings, plan: ExecutionPlan, extra_params=()) -> torch.optim.Optimizer:
    """SGD (or Adam, where the settings say ``optimizer="adam"``) over the model's parameters and
    ``extra_params`` (a learned temperature's), with the same settings."""
    extra = {"fused": True} if plan.fused_optimizer else {}
    params = [*model.parameters(), *extra_params]
    if getattr(settings, "optimizer", "sgd") == "adam":
        return torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay, **extra)
    return torch.optim.SGD(
        params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay, **extra
    )


def lr_factor(step: int, steps_in_epoch: int, settings) -> float:
    """Linear warm-up over the first ``warmup_epochs``, then x``lr_decay`` at each milestone epoch."""
    warmup_steps = settings.warmup_epochs * steps_in_epoch
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    epoch = step // steps_in_epoch
    decays = sum(epoch >= m for m in settings.milestones)
    return warm * settings.lr_decay**decays


def make_scheduler(optimizer: torch.optim.Optimizer, steps_in_epoch: int, settings):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, steps_in_epoch, settings))


def epoch_lr(epoch: int, steps_in_epoch: int, settings) -> float:
    """The learning rate of the epoch's last step (0-based ``epoch``): what the history records."""
    return settings.lr * lr_factor((epoch + 1) * steps_in_epoch - 1, steps_in_epoch, settings)


# ---------------------------------------------------------------------------------------------
# Provenance
# ---------------------------------------------------------------------------------------------
def library_versions() -> Dict[str, str]:
    import torchvision

    return {
        "greenkd": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        # A "timm:" model's architecture is timm's code: its version says which.
        "timm": metadata.version("timm"),
        "cuda": str(torch.version.cuda),
    }


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return (f"cpu: {cpu_model_name()} ({os.cpu_count()} logical cores, {cpu_capability()} kernels, "
            f"{torch.get_num_threads()} torch threads)")


def cpu_model_name() -> str:
    """The CPU's marketing name (``/proc/cpuinfo``'s ``model name``); ``platform`` gives "" on Linux."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_capability() -> str:
    """The instruction set PyTorch picked its CPU kernels for (``default``, ``avx2``, ``avx512``, ...): it
    changes the rounding of every convolution, and so a trained network's accuracy (docs/protocol.md)."""
    try:
        return str(torch.backends.cpu.get_cpu_capability()).lower()
    except (AttributeError, RuntimeError):
        return "unknown"


def describe_hardware(device: torch.device) -> Dict[str, Any]:
    """What produced a number: CPU model, torch's CPU kernels and threads, and on a GPU its name, driver and
    CUDA version. Kept in every run record and in ``manifest.json``."""
    info: Dict[str, Any] = {
        "cpu_model": cpu_model_name(),
        "cpu_capability": cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "logical_cores": os.cpu_count(),
        "machine": platform.machine(),
    }
    if device.type == "cuda":
        info.update({"gpu": torch.cuda.get_device_name(device), "gpu_driver": nvidia_driver_version() or "unknown",
                     "cuda_version": str(torch.version.cuda)})
    return info


def hardware_label(hardware: Dict[str, Any]) -> str:
    """``avx2, 1 thread``: the part of the hardware that changes a CPU run's numbers (a GPU's name on a GPU)."""
    if not hardware:
        return "unrecorded"
    if hardware.get("gpu"):
        return str(hardware["gpu"])
    threads = hardware.get("torch_threads")
    return f"{hardware.get('cpu_capability', 'unknown')}, {threads} thread{'s' if threads != 1 else ''}"


def nvidia_driver_version() -> Optional[str]:
    """The NVIDIA driver's version from NVML; None without NVML or a driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # no NVML library or no driver: say so rather than fail a finished run
        return None


# ---------------------------------------------------------------------------------------------
# CPU threads: one setting wherever a run trains (a notebook in JupyterLab, run_all.sh, a Ray worker)
# ---------------------------------------------------------------------------------------------
CPU_THREADS_ENV = "GREENKD_CPU_THREADS"
DEFAULT_CPU_THREADS = 1


def cpu_threads() -> int:
    """Torch threads of a run on the CPU: ``$GREENKD_CPU_THREADS``, else 1.

    The thread count changes how a convolution's sums are split, so the same config trained with 1 and with 2
    threads gives different networks. One setting for every entry point keeps a notebook opened in JupyterLab
    (torch's default: every core) and the same notebook under run_all.sh on the same numbers.
    """
    raw = os.environ.get(CPU_THREADS_ENV, "").strip()
    if not raw:
        return DEFAULT_CPU_THREADS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{CPU_THREADS_ENV} must be a whole number >= 1; got {raw!r}")
    return value


@contextlib.contextmanager
def torch_threads_for(device: torch.device) -> Iterator[int]:
    """Inside the block a CPU run uses :func:`cpu_threads` torch threads (a GPU run keeps torch's default)."""
    before = torch.get_num_threads()
    wanted = cpu_threads() if device.type == "cpu" else before
    if wanted != before:
        torch.set_num_threads(wanted)
    try:
        yield wanted
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# Concurrency: how many runs share this machine, and so how a run's energy is attributed
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Concurrency:
    """How the run executes beside others: set by the executor, read by the lifecycle and its meter.

    A whole-socket sensor (RAPL) cannot tell two processes apart, so when runs share a machine the CPU and
    DRAM energy of each run is estimated from its own process's CPU time and memory instead; a GPU is
    measured by its own counter when each run holds one GPU.
    """

    executor: str = "local"
    runs_sharing_node: int = 1
    one_run_per_gpu: bool = False
    # The Ray node that trained the run and its address (None outside Ray): which machine of a cluster it was.
    ray_node_id: Optional[str] = None
    node_ip: Optional[str] = None

    @property
    def host_shared(self) -> bool:
        return self.runs_sharing_node > 1

    def energy_attribution(self) -> str:
        if not self.host_shared:
            return ("the run had its machine to itself: every sensor (NVML, RAPL) or estimate reads this run's "
                    "work alone")
        gpu = ("its GPU measured by that GPU's own counter (one run per GPU); " if self.one_run_per_gpu else "")
        return (f"up to {self.runs_sharing_node} runs shared this machine: {gpu}CPU and DRAM estimated from this "
                "run's own process CPU time and memory (a whole-socket sensor such as RAPL cannot separate "
                "concurrent runs, so it is not used)")

    def record(self) -> Dict[str, Any]:
        """The settings above, where the run ran (host, process, and the Slurm job it ran in, if any) and how
        its energy was attributed."""
        where = {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": os.environ.get("SLURM_JOB_ID")}
        return {**dataclasses.asdict(self), **where, "energy_attribution": self.energy_attribution()}


_CONCURRENCY = Concurrency()


def current_concurrency() -> Concurrency:
    return _CONCURRENCY


@contextlib.contextmanager
def running_under(concurrency: Concurrency) -> Iterator[Concurrency]:
    """Runs started in this block run beside others as ``concurrency`` says (an executor's worker)."""
    global _CONCURRENCY
    before, _CONCURRENCY = _CONCURRENCY, concurrency
    try:
        yield concurrency
    finally:
        _CONCURRENCY = before
