"""How a run executes on this device: device choice, precision and layout, the optimiser and the paper's
learning-rate schedule, and the provenance a record keeps (library versions, the device it ran on)."""

from __future__ import annotations

import contextlib
import os
import platform
import socket
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
        "cuda": str(torch.version.cuda),
    }


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.processor() or platform.machine()} ({os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads)"


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
        return {
            "executor": self.executor,
            "runs_sharing_node": self.runs_sharing_node,
            "one_run_per_gpu": self.one_run_per_gpu,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "energy_attribution": self.energy_attribution(),
        }


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
