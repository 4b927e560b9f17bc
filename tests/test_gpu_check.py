"""The GPU check without a GPU: it must say that nothing was measured, and its report must be well formed.

GPU time is scarce: these tests make sure a run of benchmarks/gpu_check.sh on a GPU is not lost to a script
error. The report is checked on made-up figures (the numbers below are fakes, not measurements).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    # Dataclasses look their module up by name while the class is created.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gpu_check():
    return load_benchmark("gpu_check")


def test_without_a_cuda_gpu_the_check_says_so_measures_nothing_and_fails(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    env.pop("OUT", None)
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(SCRIPT), str(out)], env=env, capture_output=True, text=True, timeout=300)
    said = done.stdout + done.stderr
    assert done.returncode == 2, said
    assert "no cuda gpu found" in said.lower(), said
    assert "nothing was measured" in said, said
    assert not (out / "gpu_check.md").exists() and not (out / "gpu_check.json").exists()


# --------------------------------------------------------------------------- the report, on fake figures
DEVICE = {"name": "Fake GPU 80GB", "count": 1, "memory_gib": 79.2, "compute_capability": "9.0",
          "bf16_supported": True, "driver": "555.42", "cuda": "12.4", "cudnn": 90100, "torch": "2.5.1",
          "python": "3.11.9", "greenkd": "0.1.0", "cpu_count": 16, "platform": "Linux", "cuda_visible_devices": None}


def kd_row(path, batch, seconds, gpu_kwh, compiled=False):
    images = 49_920 if batch == 128 else 49_664  # the last partial batch is dropped
    return {"shape": "cifar", "batch_size": batch, "path": path, "compile": compiled, "images": images,
            "seconds": seconds, "images_per_s": images / seconds, "energy_kwh": gpu_kwh * 1.5,
            "energy_source": "partly estimated", "gpu_energy_kwh": gpu_kwh, "gpu_energy_source": "measured",
            "gpu_energy_method": "NVML total-energy counter (GPU 0)"}


def kd_figures(rows, compile_models=False):
    environment = {"device_type": "cuda", "device": DEVICE["name"], "torch": "2.5.1", "cuda": "12.4",
                   "python": "3.11.9", "cpu_count": 16, "workers": 8, "compile": compile_models, "cudnn": 90100}
    return {"benchmark": "kd_epoch", "workload": "fake", "environment": environment, "rows": rows, "speedups": []}


def paper_figures():
    def run(title, model, epochs, accuracy, seconds, kwh, flops):
        return {"run": title, "name": title, "role": "kd", "model": model, "epochs": epochs, "batch_size": 128,
                "n_train": 4500, "n_val": 500, "n_test": 1000, "test_accuracy_pct": accuracy,
                "val_accuracy_pct": accuracy, "wall_time_s": seconds, "energy_kwh": kwh, "energy_kwh_pue": kwh * 1.67,
                "co2_g": kwh * 1.67 * 294, "energy_source": "partly estimated", "energy_label": "fake",
                "energy_components": {
                    "gpu": {"energy_kwh": kwh * 0.9, "source": "measured", "method": "NVML total-energy counter (GPU 0)"},
                    "cpu": {"energy_kwh": kwh * 0.1, "source": "estimated", "method": "TDP model"}},
                "training_flops": flops, "training_gflops_millions": flops / 1e15, "history": []}

    return {"profile": "paper", "overrides": {"epochs": 3, "teacher_epochs": 2, "seeds": [0]},
            "n_train_written": 5000, "n_test_written": 1000, "peak_gpu_memory_gib": 3.25,
            "runs": [run("teacher (cross-entropy)", "resnet18", 2, 61.5, 9.5, 2.0e-4, 6.2e12),
                     run("stochastic KD", "resnet18 -> mobilenetv2", 3, 87.5, 14.25, 3.0e-4, 5.1e12)]}


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" tests="3">
<testcase classname="tests.test_gpu" name="test_fast" time="2.5"/>
<testcase classname="tests.test_gpu" name="test_sync" time="1.0">{failure}</testcase>
<testcase classname="tests.test_gpu" name="test_nvml" time="2.0"/>
</testsuite></testsuites>"""


def fake_check(out: Path, statuses: dict, failing_test: bool = False, compiled: bool = True) -> Path:
    steps = out / "steps"
    steps.mkdir(parents=True)
    (steps / "device.json").write_text(json.dumps(DEVICE))
    (steps / "pytest_gpu.xml").write_text(JUNIT.format(failure='<failure message="boom">boom</failure>'
                                                       if failing_test else ""))
    (steps / "kd_epoch.json").write_text(json.dumps(kd_figures([
        kd_row("conventional", 128, 6.24, 1.5e-4), kd_row("fast", 128, 1.248, 4.25e-5),
        kd_row("conventional", 512, 5.0, 1.25e-4), kd_row("fast", 512, 0.8, 3.0e-5)])))
    if compiled:
        (steps / "kd_epoch_compile.json").write_text(json.dumps(kd_figures(
            [kd_row("fast", 128, 0.96, 3.5e-5, compiled=True)], compile_models=True)))
    (steps / "paper_run.json").write_text(json.dumps(paper_figures()))
    (steps / "status.tsv").write_text("".join(f"{name}\t{code}\t{seconds}\t{limit}\n"
                                              for name, (code, seconds, limit) in statuses.items()))
    return out


ALL_PASSED = {"device": (0, 4, 90), "pytest_gpu": (0, 75, 150), "kd_epoch": (0, 52, 120),
              "paper_run": (0, 41, 120), "kd_epoch_compile": (0, 170, 233)}


def table(markdown: str, first_header: str):
    """The rows of the Markdown table whose header starts with ``first_header``, split into cells."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def test_report_of_a_passing_check(gpu_check, tmp_path):
    out = fake_check(tmp_path / "out", ALL_PASSED)
    figures = gpu_check.gather(out, budget_s=460)
    json_path, md_path = gpu_check.write_report(figures, out)
    markdown = md_path.read_text()
    assert json.loads(json_path.read_text()) == figures
    assert figures["passed"] and figures["device"] == DEVICE
    assert figures["tests"]["passed"] == 3 and figures["tests"]["failing"] == []

    assert markdown.startswith("### GPU check: Fake GPU 80GB")
    for text in ("driver 555.42", "CUDA 12.4", "cuDNN 90100", "torch 2.5.1", "every step passed"):
        assert text in markdown, text
    steps = table(markdown, "step")
    assert len(steps) == 2 + 5 and all(len(row) == 4 for row in steps)
    assert steps[3] == ["CUDA tests (`pytest -m gpu`)", "passed: 3 passed, 0 failed, 0 errors, 0 skipped", "75", "150"]

    # The KD-epoch table keeps docs/benchmarks.md's columns and adds the compiled fast path.
    kd = table(markdown, "device")
    assert kd[0][:8] == ["device", "shape", "batch", "images/epoch", "conventional s/epoch", "fast s/epoch",
                         "speed-up", "fast GPU kWh/epoch"]
    assert all(len(row) == len(kd[0]) for row in kd)
    assert kd[2] == ["Fake GPU 80GB", "cifar", "128", "49,920", "6.24", "1.25", "5.00x", "4.25e-05", "0.96",
                     "6.50x", "3.50e-05"]
    assert kd[3][:8] == ["Fake GPU 80GB", "cifar", "512", "49,664", "5.00", "0.80", "6.25x", "3.00e-05"]
    assert kd[3][8:] == ["not measured"] * 3  # batch 512 was not compiled in this fake run
    assert "NVML total-energy counter (GPU 0) (measured)" in markdown

    paper = table(markdown, "run")
    assert paper[0] == ["run", "model", "epochs", "test accuracy %", "wall s", "device kWh", "energy source",
                        "GPU kWh", "training GFLOPs (M)"]
    assert paper[3] == ["stochastic KD", "resnet18 -> mobilenetv2", "3", "87.5", "14.2", "3.00e-04",
                        "partly estimated", "2.70e-04 (measured: NVML total-energy counter (GPU 0))", "0.0051"]
    assert "5,000 training and 1,000 test images" in markdown and "Peak GPU memory 3.2 GiB" in markdown
    assert gpu_check.step_report(out, 460) == 0


def test_report_of_a_check_with_failed_timed_out_and_missing_steps(gpu_check, tmp_path):
    statuses = {"device": (0, 4, 90), "pytest_gpu": (1, 80, 150), "kd_epoch": (0, 52, 120),
                "kd_epoch_compile": (124, 200, 200)}  # paper_run never got its turn
    out = fake_check(tmp_path / "out", statuses, failing_test=True, compiled=False)
    (out / "steps" / "paper_run.json").unlink()
    figures = gpu_check.gather(out)
    markdown = gpu_check.render_markdown(figures)
    assert not figures["passed"]
    by_name = {step["name"]: step["status"] for step in figures["steps"]}
    assert by_name == {"device": "passed", "pytest_gpu": "failed", "kd_epoch": "passed",
                       "kd_epoch_compile": "timed out", "paper_run": "skipped"}
    assert "NOT every step passed" in markdown
    assert "failed: 2 passed, 1 failed, 0 errors, 0 skipped" in markdown
    assert "Failing CUDA tests: `tests.test_gpu::test_sync`." in markdown
    kd = table(markdown, "device")
    assert kd[2][8:] == ["not measured"] * 3
    assert "Not measured (the paper-profile step left no figures)." in markdown
    assert gpu_check.step_report(out, None) == 1


def test_report_before_any_step_ran(gpu_check, tmp_path):
    figures = gpu_check.gather(tmp_path / "empty")
    markdown = gpu_check.render_markdown(figures)
    assert not figures["passed"] and figures["device"] is None
    assert {step["status"] for step in figures["steps"]} == {"skipped"}
    assert "Device: not recorded" in markdown


def test_kd_epoch_json_is_what_the_report_reads(gpu_check, tmp_path):
    kd_epoch = load_benchmark("kd_epoch")
    out = tmp_path / "out"
    kd_epoch.main(["--device", "cpu", "--images", "8", "--shapes", "cifar", "--batch-sizes", "4", "--workers", "0",
                   "--json", str(out / "steps" / "kd_epoch.json")])
    written = json.loads((out / "steps" / "kd_epoch.json").read_text())
    assert [row["path"] for row in written["rows"]] == ["conventional", "fast"]
    assert all(row["images"] == 8 and row["seconds"] > 0 and row["gpu_energy_kwh"] is None for row in written["rows"])
    assert written["speedups"][0]["batch_size"] == 4
    kd = table(gpu_check.render_markdown(gpu_check.gather(out)), "device")
    assert kd[2][1:4] == ["cifar", "4", "8"] and kd[2][4] != "not measured" and kd[2][6].endswith("x")
