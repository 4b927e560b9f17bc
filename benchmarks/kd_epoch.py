"""Time one KD epoch: the conventional loop against greenkd's fast path, in the same process.

    python benchmarks/kd_epoch.py                       # CIFAR and Tiny ImageNet shapes, batch 128 and 512
    python benchmarks/kd_epoch.py --images 2048 --shapes cifar --batch-sizes 128   # a quick CPU check
    python benchmarks/kd_epoch.py --shapes cifar --json kd_epoch.json               # also keep the figures as JSON

Workload: ResNet18 teacher -> MobileNetV2 student, HKD, stochastic tau, on synthetic data of the paper's
shapes (CIFAR: 50,000 x 3 x 32 x 32, 10 classes; Tiny ImageNet: 100,000 x 3 x 64 x 64, 200 classes).

(a) conventional: a torchvision-style DataLoader over PIL images with PIL transforms (random crop after
    4-pixel padding, flip, rotation up to 15 degrees), worker processes, fp32, the teacher under no_grad.
(b) fast: the run lifecycle's training phase (runs.lifecycle.TrainingSteps): uint8 data on the device, batched augmentation there, bf16 autocast
    and channels_last on CUDA, a fused optimiser, the teacher in inference mode, no per-batch host sync,
    optionally torch.compile.

Prints images/s, seconds per epoch, energy per epoch (GPU: NVML's energy counter, measured; CPU: what
EnergyMeter can read, labelled) and the speed-up. A benchmark prints numbers; it asserts nothing.
``--json PATH`` also writes every figure to PATH, rewritten after each row so that a run stopped half-way
keeps what it measured (benchmarks/gpu_check.py turns it into a Markdown table).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from greenkd_utils.core.config import AugmentSettings, RunConfig, TemperatureSpec, TrainSettings
from greenkd_utils.core.losses import kd_loss
from greenkd_utils.core.models import create_model
from greenkd_utils.core.temperature import make_temperature
from greenkd_utils.energy.meter import EnergyMeter
from greenkd_utils.energy.report import EnergyReport
from greenkd_utils.runs.device_data import DeviceData
from greenkd_utils.runs.execution import nvidia_driver_version
from greenkd_utils.runs.lifecycle import begin
from greenkd_utils.runs.tasks.classification import ClassificationTask

SHAPES = {"cifar": (50_000, 32, 10), "tinyimagenet": (100_000, 64, 200)}
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


class PILImages(Dataset):
    """What a conventional pipeline does: one PIL image per sample, transformed in a worker."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, size: int):
        self.images, self.labels = images, labels
        self.transform = transforms.Compose(
            [
                transforms.RandomCrop(size, padding=4),
                transforms.RandomHorizontalFlip(),
                transforms.RandomRotation(15),
                transforms.ToTensor(),
                transforms.Normalize(MEAN, STD),
            ]
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


@dataclass
class Timing:
    images: int
    seconds: float
    energy_kwh: float
    energy_label: str
    # The GPU's own share (NVML), the figure docs/benchmarks.md reports per epoch; None off a GPU.
    gpu_energy_kwh: Optional[float] = None
    gpu_energy_source: Optional[str] = None
    gpu_energy_method: Optional[str] = None

    @classmethod
    def of(cls, images: int, seconds: float, report: EnergyReport) -> "Timing":
        gpu = report.components.get("gpu")
        return cls(images, seconds, report.energy_kwh, report.source,
                   gpu.energy_kwh if gpu else None, gpu.source if gpu else None, gpu.method if gpu else None)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def conventional_epoch(teacher, student, images_hwc, labels, batch_size, device, workers) -> Timing:
    loader = DataLoader(
        PILImages(images_hwc, labels, images_hwc.shape[1]),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    temperature = make_temperature("stochastic", low=2.0, high=20.0, seed=0)
    teacher.eval()
    student.train()
    seen = 0
    synchronize(device)
    with EnergyMeter(device=device) as meter:
        start = time.perf_counter()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.no_grad():
                t = teacher(x)
            loss = kd_loss("hkd", student(x), t, y, temperature.sample())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += y.numel()
        synchronize(device)
        seconds = time.perf_counter() - start
    return Timing.of(seen, seconds, meter.report)


def fast_epoch(teacher, student, images_u8, labels, batch_size, device, compile_models, warmup: bool) -> Timing:
    """The lifecycle's training phase (TrainingSteps.epoch) of a KD run whose data is ``images_u8``."""
    settings = TrainSettings(epochs=1, batch_size=batch_size, fast=True, compile=compile_models,
                             augment=AugmentSettings(crop_padding=4, flip=True, rotation_deg=15.0))
    num_classes, size = int(labels.max()) + 1, images_u8.shape[-1]
    mean, std = torch.tensor(MEAN, device=device), torch.tensor(STD, device=device)

    def on_device(n_images: int) -> DeviceData:
        return DeviceData(train=(images_u8[:n_images], labels[:n_images]), val=(images_u8[:0], labels[:0]),
                          test=(images_u8[:0], labels[:0]), mean=mean, std=std, num_classes=num_classes,
                          in_channels=3, image_size=size)

    teacher_config = RunConfig(role="teacher", dataset="cifar10", model="resnet18", train=settings)
    config = RunConfig(role="kd", dataset="cifar10", model="mobilenetv2", train=settings, loss="hkd",
                       temperature=TemperatureSpec.stochastic(2, 20), teacher=teacher_config)
    task = ClassificationTask(config, device, {}, store=None, data=on_device(len(labels)))
    task.teacher = teacher
    task.build_model = lambda *args: student  # the benchmark's own networks, already built
    temperature, _, steps = begin(task)

    def one_epoch(epoch: int) -> int:
        taus = temperature.for_epoch(epoch, task.steps_per_epoch, task.tau_batch_size, device)
        return steps.epoch(epoch, taus, lambda n: None)["seen"]

    if warmup:  # compile and autotune outside the timed epoch, on a few batches
        everything, task.data = task.data, on_device(min(len(labels), 4 * batch_size))
        one_epoch(0)
        task.data = everything
    synchronize(device)
    with EnergyMeter(device=device) as meter:
        start = time.perf_counter()
        seen = one_epoch(1)
        synchronize(device)
        seconds = time.perf_counter() - start
    return Timing.of(int(seen), seconds, meter.report)


def describe_environment(device: torch.device, args: argparse.Namespace) -> Dict[str, Any]:
    described: Dict[str, Any] = {
        "device_type": device.type,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "workers": args.workers,
        "compile": args.compile,
    }
    if device.type == "cuda":
        described["cudnn"] = torch.backends.cudnn.version()
        described["driver"] = nvidia_driver_version()
    return described


def write_json(path: Path, figures: Dict[str, Any]) -> None:
    # Written beside the target and renamed, so a reader never sees half a file.
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(figures, indent=2) + "\n")
    os.replace(partial, path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[128, 512])
    parser.add_argument("--images", type=int, default=None, help="images per epoch (default: the full shape)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--compile", action="store_true", help="torch.compile the fast path's models")
    parser.add_argument("--skip-conventional", action="store_true")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH",
                        help="also write every figure to this JSON file")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if (args.device == "auto" and torch.cuda.is_available()) else
                          ("cpu" if args.device == "auto" else args.device))
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or 'cpu'}"
          f" | torch {torch.__version__} | python {platform.python_version()} | workers {args.workers}"
          f" | compile {args.compile}")
    if device.type == "cuda":
        print(f"driver: {nvidia_driver_version() or 'unknown'}, CUDA {torch.version.cuda}")
    print(f"{'shape':<13}{'batch':>6}{'path':>14}{'images':>9}{'s/epoch':>10}{'images/s':>11}{'kWh/epoch':>12}  energy")
    figures: Dict[str, Any] = {
        "benchmark": "kd_epoch",
        "workload": "resnet18 teacher -> mobilenetv2 student, HKD, stochastic tau U[2, 20] per batch, synthetic data",
        "environment": describe_environment(device, args),
        "rows": [],
        "speedups": [],
    }
    for shape in args.shapes:
        full, size, classes = SHAPES[shape]
        n = min(args.images or full, full)
        rng = np.random.default_rng(0)
        images_hwc = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
        labels_np = rng.integers(0, classes, size=n)
        images_u8 = torch.from_numpy(images_hwc).permute(0, 3, 1, 2).contiguous().to(device)
        labels = torch.from_numpy(labels_np).to(device)
        for batch_size in args.batch_sizes:
            torch.manual_seed(0)
            teacher = create_model("resnet18", classes).to(device)
            student = create_model("mobilenetv2", classes).to(device)
            rows = []
            if not args.skip_conventional:
                rows.append(("conventional", conventional_epoch(teacher, student, images_hwc, labels_np,
                                                                batch_size, device, args.workers)))
            torch.manual_seed(0)
            student = create_model("mobilenetv2", classes).to(device)
            rows.append(("fast", fast_epoch(teacher, student, images_u8, labels, batch_size, device,
                                            args.compile, warmup=True)))
            for name, t in rows:
                print(f"{shape:<13}{batch_size:>6}{name:>14}{t.images:>9}{t.seconds:>10.2f}{t.images_per_s:>11.0f}"
                      f"{t.energy_kwh:>12.2e}  {t.energy_label}")
                figures["rows"].append({
                    "shape": shape, "batch_size": batch_size, "path": name,
                    # torch.compile only ever applies to the fast path, and only on CUDA (ExecutionPlan).
                    "compile": bool(args.compile and name == "fast" and device.type == "cuda"),
                    "images": t.images, "seconds": t.seconds, "images_per_s": t.images_per_s,
                    "energy_kwh": t.energy_kwh, "energy_source": t.energy_label,
                    "gpu_energy_kwh": t.gpu_energy_kwh, "gpu_energy_source": t.gpu_energy_source,
                    "gpu_energy_method": t.gpu_energy_method,
                })
            if len(rows) == 2:
                speedup = rows[1][1].images_per_s / rows[0][1].images_per_s
                print(f"{'':<19}speed-up (fast / conventional images per s): {speedup:.2f}x")
                figures["speedups"].append({"shape": shape, "batch_size": batch_size,
                                            "fast_over_conventional": speedup})
            if args.json is not None:
                write_json(args.json, figures)
            sys.stdout.flush()


if __name__ == "__main__":
    main()
