"""The GPU check's Python steps and its report; ``benchmarks/gpu_check.sh`` runs them, each under a time limit.

    bash benchmarks/gpu_check.sh [OUT_DIR]                  # the whole check (under 8 minutes on one H100)

    python benchmarks/gpu_check.py device --out OUT_DIR     # describe the GPU; exit 2 when there is none
    python benchmarks/gpu_check.py paper-run --out OUT_DIR  # a short paper-profile KD run on synthetic CIFAR-10
    python benchmarks/gpu_check.py report --out OUT_DIR     # gpu_check.json + gpu_check.md from OUT_DIR/steps/

Every step leaves its figures in ``OUT_DIR/steps/`` (``device.json``, ``pytest_gpu.xml``, ``kd_epoch.json``,
``kd_epoch_compile.json``, ``paper_run.json``) and the shell script appends each step's exit status, duration
and time limit to ``OUT_DIR/steps/status.tsv``. ``report`` gathers all of it into ``gpu_check.json`` (the raw
figures) and ``gpu_check.md`` (tables in the shape of docs/benchmarks.md); a step that failed, timed out or
never ran shows up as such, and its figures as "not measured". ``report`` exits 0 only if every step passed.

The paper-profile run trains a teacher and a stochastic-tau KD student through the library's public API
(``experiments.setup(profile="paper")``) on a small CIFAR-10 data root written in the real pickle format, so
the real loader, the fast path, the energy meter and the FLOP count all run as they would on CIFAR-10. The
synthetic images are learnable (one coarse colour pattern per class, plus noise), so accuracy shows that
training works; it is not comparable with any CIFAR-10 figure.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import pickle
import platform
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

NO_CUDA_EXIT = 2
NO_TORCH_EXIT = 3

NO_CUDA_MESSAGE = "No CUDA GPU found: nothing was measured."

# Steps in the order gpu_check.sh runs them, with what each is called in the report.
STEP_TITLES = {
    "device": "CUDA device",
    "pytest_gpu": "CUDA tests (`pytest -m gpu`)",
    "kd_epoch": "KD epoch benchmark (`benchmarks/kd_epoch.py`)",
    "paper_run": "paper-profile KD run (synthetic CIFAR-10)",
    "kd_epoch_compile": "KD epoch benchmark with torch.compile",
}
TIMED_OUT_EXITS = (124, 137)
NOT_MEASURED = "not measured"

REPO_ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# Step: the device
# ---------------------------------------------------------------------------------------------
def describe_cuda_device(torch) -> Dict[str, Any]:
    import greenkd_utils
    from greenkd_utils.runs.execution import nvidia_driver_version

    properties = torch.cuda.get_device_properties(0)
    return {
        "name": torch.cuda.get_device_name(0),
        "count": torch.cuda.device_count(),
        "memory_gib": properties.total_memory / 2**30,
        "compute_capability": f"{properties.major}.{properties.minor}",
        "bf16_supported": bool(torch.cuda.is_bf16_supported()),
        "driver": nvidia_driver_version(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "greenkd": greenkd_utils.__version__,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def step_device(out_dir: Path) -> int:
    try:
        import torch
    except ImportError as error:
        print(f"torch cannot be imported by {sys.executable} ({error}).")
        return NO_TORCH_EXIT
    if not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        print(f"{NO_CUDA_MESSAGE} (torch {torch.__version__}, built for CUDA {torch.version.cuda}, "
              f"sees no device; CUDA_VISIBLE_DEVICES={visible!r})")
        return NO_CUDA_EXIT
    device = describe_cuda_device(torch)
    write_json(steps_dir(out_dir) / "device.json", device)
    print(f"CUDA GPU: {device['name']} ({device['memory_gib']:.0f} GiB, compute capability "
          f"{device['compute_capability']}), driver {device['driver'] or 'unknown'}, CUDA {device['cuda']}, "
          f"cuDNN {device['cudnn']}, torch {device['torch']}, Python {device['python']}")
    return 0


# ---------------------------------------------------------------------------------------------
# Step: a short paper-profile run
# ---------------------------------------------------------------------------------------------
def write_synthetic_cifar10(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """A CIFAR-10 data root (``root/cifar-10-batches-py``) in the official pickle format, with learnable images.

    Each class is a coarse 4x4 colour pattern blown up to 32x32, and every image is its class pattern plus
    Gaussian noise: random crops, flips and small rotations keep it recognisable, so a few epochs learn it.
    """
    import numpy as np

    if n_train < 5 or n_test < 1:
        raise ValueError(f"need at least 5 training images (one per batch file) and 1 test image; "
                         f"got {n_train}, {n_test}")
    rng = np.random.default_rng(seed)
    classes = 10
    coarse = rng.uniform(40.0, 215.0, size=(classes, 3, 4, 4)).astype(np.float32)
    patterns = np.kron(coarse, np.ones((1, 1, 8, 8), dtype=np.float32))

    def draw(n: int) -> Tuple[np.ndarray, List[int]]:
        labels = rng.integers(0, classes, size=n)
        noise = rng.standard_normal(size=(n, 3, 32, 32), dtype=np.float32) * 40.0
        images = np.clip(patterns[labels] + noise, 0, 255).astype(np.uint8)
        return images.reshape(n, 3 * 32 * 32), [int(v) for v in labels]

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def dump(name: str, record: Dict[bytes, Any]) -> None:
        # Protocol 2 and bytes keys: what the official (Python 2) files hold, so the real reader is exercised.
        with open(folder / name, "wb") as handle:
            pickle.dump(record, handle, protocol=2)

    per_file = [n_train // 5 + (1 if i < n_train % 5 else 0) for i in range(5)]
    for i, n in enumerate(per_file, start=1):
        rows, labels = draw(n)
        dump(f"data_batch_{i}", {b"batch_label": f"synthetic training batch {i} of 5".encode(),
                                 b"labels": labels, b"data": rows,
                                 b"filenames": [f"synthetic_{i}_{j}.png".encode() for j in range(n)]})
    rows, labels = draw(n_test)
    dump("test_batch", {b"batch_label": b"synthetic testing batch", b"labels": labels, b"data": rows,
                        b"filenames": [f"synthetic_test_{j}.png".encode() for j in range(n_test)]})
    dump("batches.meta", {b"label_names": [f"pattern{k}".encode() for k in range(classes)],
                          b"num_cases_per_batch": per_file[0], b"num_vis": 3 * 32 * 32})
    return root


def describe_run(result, role_title: str, plan) -> Dict[str, Any]:
    """The figures of one finished run, as the report shows them."""
    energy = result.energy
    config = result.config
    return {
        "run": role_title,
        "name": result.name,
        "role": config.role,
        "model": config.model if config.role != "kd" else f"{config.teacher.model} -> {config.model}",
        "loss": config.loss,
        "temperature": config.temperature.short() if config.temperature is not None else None,
        "epochs": config.train.epochs,
        "batch_size": config.train.batch_size,
        "n_train": result.data["n_train"],
        "n_val": result.data["n_val"],
        "n_test": result.data["n_test"],
        "test_accuracy_pct": result.test_accuracy,
        "val_accuracy_pct": result.val_accuracy,
        "wall_time_s": result.wall_time_s,
        "energy_kwh": energy.energy_kwh,
        "energy_kwh_pue": energy.energy_kwh_pue,
        "co2_g": energy.co2_g,
        "pue": energy.pue,
        "carbon_intensity_g_per_kwh": energy.carbon_intensity_g_per_kwh,
        "energy_source": energy.source,
        "energy_label": energy.label(),
        "energy_components": {name: {"energy_kwh": c.energy_kwh, "source": c.source, "method": c.method}
                              for name, c in energy.components.items()},
        "training_flops": result.training_flops,
        "training_gflops_millions": result.training_gflops_millions,
        "flop_definition": result.flops.get("definition"),
        "execution": {"autocast": str(plan.autocast_dtype).replace("torch.", "") if plan.autocast_dtype else None,
                      "channels_last": plan.channels_last, "fused_optimizer": plan.fused_optimizer,
                      "compile": plan.compile},
        "device": result.device,
        "history": [{k: h[k] for k in ("epoch", "train_loss", "train_accuracy", "val_accuracy", "test_accuracy",
                                       "energy_kwh", "wall_time_s")} for h in result.history],
    }


def step_paper_run(out_dir: Path, n_train: int, n_test: int, epochs: int, teacher_epochs: int, seed: int,
                   device_name: str = "cuda") -> int:
    import torch

    from greenkd_utils.runs.execution import ExecutionPlan
    from greenkd_utils.paper.experiments import setup

    device = torch.device(device_name)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(NO_CUDA_MESSAGE)
        return NO_CUDA_EXIT
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="greenkd-gpu-check-") as scratch:
        data_root = write_synthetic_cifar10(Path(scratch) / "data", n_train, n_test, seed=seed)
        experiment = setup(profile="paper", results_dir=Path(scratch) / "results", data_root=data_root,
                           device=str(device), progress=False, datasets=["cifar10"], seeds=[seed],
                           epochs=epochs, teacher_epochs=teacher_epochs)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        teacher = experiment.teacher("cifar10", seed)
        student = experiment.stochastic("cifar10", seed, "hkd")
        runs = [
            describe_run(teacher, "teacher (cross-entropy)",
                         ExecutionPlan.for_run(teacher.config.train, device)),
            describe_run(student, f"stochastic KD (HKD, {student.config.temperature.short()} per batch)",
                         ExecutionPlan.for_run(student.config.train, device)),
        ]
        figures = {
            "profile": "paper",
            "dataset": "synthetic CIFAR-10 (3x32x32, 10 classes, one colour pattern per class plus noise), "
                       "written in the CIFAR-10 pickle format and read by greenkd_utils.core.data",
            "overrides": {"epochs": epochs, "teacher_epochs": teacher_epochs, "seeds": [seed]},
            "n_train_written": n_train,
            "n_test_written": n_test,
            "runs": runs,
            "peak_gpu_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
            "step_wall_time_s": time.perf_counter() - started,
        }
    write_json(steps_dir(out_dir) / "paper_run.json", figures)
    for run in runs:
        print(f"{run['run']}: {run['epochs']} epochs, test accuracy {run['test_accuracy_pct']:.1f}%, "
              f"{run['wall_time_s']:.1f} s, {run['energy_label']}, "
              f"{run['training_gflops_millions']:.3g} GFLOPs (M)")
    return 0


# ---------------------------------------------------------------------------------------------
# Step: the report
# ---------------------------------------------------------------------------------------------
def steps_dir(out_dir: Path) -> Path:
    path = Path(out_dir) / "steps"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(partial, path)


def read_json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def step_status(exit_code: Optional[int]) -> str:
    if exit_code is None:
        return "skipped"
    if exit_code == 0:
        return "passed"
    if exit_code in TIMED_OUT_EXITS:
        return "timed out"
    return "failed"


def read_status(path: Path) -> List[Dict[str, Any]]:
    """``status.tsv``: one line per step, ``name<TAB>exit code or 'skipped'<TAB>seconds<TAB>time limit s``."""
    steps = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return steps
    for line in lines:
        fields = line.rstrip("\n").split("\t")
        if len(fields) < 4 or not fields[0]:
            continue
        name, code, seconds, limit = fields[:4]
        exit_code = int(code) if code.lstrip("-").isdigit() else None
        steps.append({
            "name": name,
            "title": STEP_TITLES.get(name, name),
            "status": step_status(exit_code),
            "exit_code": exit_code,
            "seconds": float(seconds) if seconds else None,
            "time_limit_s": float(limit) if limit else None,
            "log": f"logs/{name}.log",
        })
    return steps


def parse_junit(path: Path) -> Optional[Dict[str, Any]]:
    """Counts and the failing test ids from pytest's ``--junitxml`` file."""
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError):
        return None
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failing, skipped, cases = [], [], []
    for case in root.iter("testcase"):
        test_id = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome = "passed"
        for child in case:
            if child.tag == "failure":
                outcome = "failed"
            elif child.tag == "error":
                outcome = "errors"
            elif child.tag == "skipped" and outcome == "passed":
                outcome = "skipped"
        counts[outcome] += 1
        cases.append({"test": test_id, "outcome": outcome, "seconds": float(case.get("time") or 0.0)})
        if outcome in ("failed", "errors"):
            failing.append(test_id)
        elif outcome == "skipped":
            skipped.append(test_id)
    return {"total": sum(counts.values()), **counts, "failing": failing, "skipped_tests": skipped, "cases": cases}


def gather(out_dir: Path, budget_s: Optional[float] = None) -> Dict[str, Any]:
    """Everything the steps left in ``out_dir/steps``, as one JSON-ready dict."""
    steps_path = Path(out_dir) / "steps"
    steps = read_status(steps_path / "status.tsv")
    tests = parse_junit(steps_path / "pytest_gpu.xml")
    ran = {s["name"] for s in steps}
    for name in STEP_TITLES:  # a step missing from status.tsv never ran (the script was stopped before it)
        if name not in ran:
            steps.append({"name": name, "title": STEP_TITLES[name], "status": "skipped", "exit_code": None,
                          "seconds": None, "time_limit_s": None, "log": None})
    return {
        "check": "greenkd GPU check (benchmarks/gpu_check.sh)",
        "generated_at": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "budget_s": budget_s,
        "total_s": sum(s["seconds"] or 0.0 for s in steps),
        "passed": bool(steps) and all(s["status"] == "passed" for s in steps),
        "device": read_json(steps_path / "device.json"),
        "steps": steps,
        "tests": tests,
        "kd_epoch": read_json(steps_path / "kd_epoch.json"),
        "kd_epoch_compile": read_json(steps_path / "kd_epoch_compile.json"),
        "paper_run": read_json(steps_path / "paper_run.json"),
    }


# -- Markdown ----------------------------------------------------------------------------------
def _number(value: Optional[float], fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return NOT_MEASURED
    return format(value, fmt)


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def _device_line(device: Optional[Dict[str, Any]]) -> str:
    if not device:
        return "Device: not recorded (the device step did not finish)."
    return (f"{device['name']} ({device['memory_gib']:.0f} GiB, compute capability {device['compute_capability']}), "
            f"driver {device.get('driver') or 'unknown'}, CUDA {device['cuda']}, cuDNN {device['cudnn']}, "
            f"torch {device['torch']}, Python {device['python']}, {device['cpu_count']} CPU cores, "
            f"greenkd {device['greenkd']}.")


def _step_result(step: Dict[str, Any], tests: Optional[Dict[str, Any]]) -> str:
    result = step["status"]
    if step["name"] == "pytest_gpu" and tests is not None:
        result += (f": {tests['passed']} passed, {tests['failed']} failed, {tests['errors']} errors, "
                   f"{tests['skipped']} skipped")
    return result


def _kd_rows(figures: Dict[str, Any]) -> List[List[str]]:
    """One row per (shape, batch) in docs/benchmarks.md's columns, plus the compiled fast path."""
    eager = (figures.get("kd_epoch") or {}).get("rows", [])
    compiled = (figures.get("kd_epoch_compile") or {}).get("rows", [])
    environment = (figures.get("kd_epoch") or figures.get("kd_epoch_compile") or {}).get("environment", {})
    device = environment.get("device") or (figures.get("device") or {}).get("name") or NOT_MEASURED

    def find(rows, shape, batch, path):
        return next((r for r in rows if r["shape"] == shape and r["batch_size"] == batch and r["path"] == path), None)

    keys = []
    for row in eager + compiled:
        key = (row["shape"], row["batch_size"])
        if key not in keys:
            keys.append(key)
    table = []
    for shape, batch in keys:
        conventional = find(eager, shape, batch, "conventional")
        fast = find(eager, shape, batch, "fast")
        fast_compiled = find(compiled, shape, batch, "fast")

        def seconds(row):
            return _number(row["seconds"] if row else None, ".2f")

        def speedup(row):
            if row is None or conventional is None:
                return NOT_MEASURED
            return f"{row['images_per_s'] / conventional['images_per_s']:.2f}x"

        def gpu_kwh(row):
            if row is None or row.get("gpu_energy_kwh") is None:
                return NOT_MEASURED
            flag = "" if row.get("gpu_energy_source") == "measured" else f" ({row.get('gpu_energy_source')})"
            return f"{row['gpu_energy_kwh']:.2e}{flag}"

        images = next((r["images"] for r in (conventional, fast, fast_compiled) if r), None)
        table.append([device, shape, str(batch), f"{images:,}" if images else NOT_MEASURED, seconds(conventional),
                      seconds(fast), speedup(fast), gpu_kwh(fast), seconds(fast_compiled), speedup(fast_compiled),
                      gpu_kwh(fast_compiled)])
    return table


def _energy_methods(rows: Iterable[Dict[str, Any]]) -> List[str]:
    methods = []
    for row in rows:
        method = row.get("gpu_energy_method")
        if method:
            text = f"{method} ({row.get('gpu_energy_source')})"
            if text not in methods:
                methods.append(text)
    return methods


def render_markdown(figures: Dict[str, Any]) -> str:
    device = figures.get("device")
    title = device["name"] if device else "no device recorded"
    lines = [f"### GPU check: {title}", ""]
    verdict = "every step passed" if figures.get("passed") else "NOT every step passed (see the steps below)"
    lines += [f"`bash benchmarks/gpu_check.sh`, {figures.get('generated_at', '')}: {verdict}. "
              + _device_line(device), ""]

    tests = figures.get("tests")
    lines += _table(["step", "result", "s", "time limit s"], [
        [s["title"], _step_result(s, tests)]
        + ["-" if value is None or s["status"] == "skipped" else f"{value:.0f}"
           for value in (s["seconds"], s["time_limit_s"])]
        for s in figures.get("steps", [])
    ])
    if tests and tests.get("failing"):
        lines += ["", "Failing CUDA tests: " + ", ".join(f"`{t}`" for t in tests["failing"]) + "."]
    if tests and tests.get("skipped_tests"):
        lines += ["", "Skipped CUDA tests: " + ", ".join(f"`{t}`" for t in tests["skipped_tests"]) + "."]

    lines += ["", "#### One KD epoch (`benchmarks/kd_epoch.py`)", ""]
    kd_rows = _kd_rows(figures)
    if kd_rows:
        environment = (figures.get("kd_epoch") or figures.get("kd_epoch_compile") or {}).get("environment", {})
        workers = environment.get("workers")
        lines += ["ResNet18 teacher -> MobileNetV2 student, HKD, stochastic tau, synthetic data in the paper's "
                  f"shapes; conventional: DataLoader + PIL transforms ({workers} workers), fp32; fast: "
                  "the run lifecycle's training phase (bf16 autocast, channels_last, fused SGD); speed-up in images/s over the "
                  "conventional loop. GPU kWh per epoch before PUE.", ""]
        lines += _table(["device", "shape", "batch", "images/epoch", "conventional s/epoch", "fast s/epoch",
                         "speed-up", "fast GPU kWh/epoch", "fast + compile s/epoch", "speed-up with compile",
                         "fast + compile GPU kWh/epoch"], kd_rows)
        rows = (figures.get("kd_epoch") or {}).get("rows", []) + (figures.get("kd_epoch_compile") or {}).get("rows", [])
        methods = _energy_methods(rows)
        if methods:
            lines += ["", "GPU energy: " + "; ".join(methods) + "."]
    else:
        lines += [f"{NOT_MEASURED.capitalize()} (the benchmark steps left no figures)."]

    lines += ["", "#### A short paper-profile run (synthetic CIFAR-10)", ""]
    paper = figures.get("paper_run")
    if paper and paper.get("runs"):
        overrides = paper.get("overrides", {})
        lines += [f"`experiments.setup(profile=\"paper\", epochs={overrides.get('epochs')}, "
                  f"teacher_epochs={overrides.get('teacher_epochs')})` on {paper['n_train_written']:,} training and "
                  f"{paper['n_test_written']:,} test images of synthetic CIFAR-10 (one colour pattern per class "
                  "plus noise, read through the real CIFAR-10 loader). Accuracy only shows that training works; it "
                  "is not comparable with CIFAR-10 figures. kWh are device energy before PUE."
                  + (f" Peak GPU memory {paper['peak_gpu_memory_gib']:.1f} GiB."
                     if paper.get("peak_gpu_memory_gib") is not None else ""), ""]
        table = []
        for run in paper["runs"]:
            gpu = run.get("energy_components", {}).get("gpu")
            table.append([
                run["run"], run["model"], str(run["epochs"]), _number(run["test_accuracy_pct"], ".1f"),
                _number(run["wall_time_s"], ".1f"), _number(run["energy_kwh"], ".2e"), run["energy_source"],
                f"{gpu['energy_kwh']:.2e} ({gpu['source']}: {gpu['method']})" if gpu else NOT_MEASURED,
                _number(run["training_gflops_millions"], ".3g"),
            ])
        lines += _table(["run", "model", "epochs", "test accuracy %", "wall s", "device kWh", "energy source",
                         "GPU kWh", "training GFLOPs (M)"], table)
    else:
        lines += [f"{NOT_MEASURED.capitalize()} (the paper-profile step left no figures)."]
    return "\n".join(lines) + "\n"


def write_report(figures: Dict[str, Any], out_dir: Path) -> Tuple[Path, Path]:
    out_dir = Path(out_dir)
    json_path, md_path = out_dir / "gpu_check.json", out_dir / "gpu_check.md"
    write_json(json_path, figures)
    partial = md_path.with_name(md_path.name + ".partial")
    partial.write_text(render_markdown(figures))
    os.replace(partial, md_path)
    return json_path, md_path


def step_report(out_dir: Path, budget_s: Optional[float]) -> int:
    figures = gather(out_dir, budget_s)
    json_path, md_path = write_report(figures, out_dir)
    print(md_path.read_text())
    print(f"wrote {md_path} and {json_path}")
    return 0 if figures["passed"] else 1


# ---------------------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("device", "paper-run", "report"):
        sub = commands.add_parser(name)
        sub.add_argument("--out", type=Path, required=True, help="the check's output folder")
        if name == "paper-run":
            sub.add_argument("--train-images", type=int, default=5000)
            sub.add_argument("--test-images", type=int, default=1000)
            sub.add_argument("--epochs", type=int, default=3, help="KD student epochs")
            sub.add_argument("--teacher-epochs", type=int, default=2)
            sub.add_argument("--seed", type=int, default=0)
            sub.add_argument("--device", default="cuda", help="cuda (the check), or cpu for a tiny trial run")
        if name == "report":
            sub.add_argument("--budget-s", type=float, default=None, help="the time budget the check ran under")
    args = parser.parse_args(argv)
    if args.command == "device":
        return step_device(args.out)
    if args.command == "paper-run":
        return step_paper_run(args.out, args.train_images, args.test_images, args.epochs, args.teacher_epochs,
                              args.seed, args.device)
    return step_report(args.out, args.budget_s)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))  # greenkd_utils from this checkout, installed or not
    sys.exit(main())
