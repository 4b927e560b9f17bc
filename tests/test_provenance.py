"""Every number says where it came from: the CPU model, torch's CPU kernels (instruction set) and threads, or
the GPU, in every run record and in the manifest; and one thread setting for a CPU run wherever it trains."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from greenkd_utils.paper.experiments import hardware_of
from greenkd_utils.paper.manifest import hardware
from greenkd_utils.runs import execution, lifecycle
from greenkd_utils.runs.store import RunStore
from greenkd_utils.runs.lifecycle import train as train_run
from greenkd_utils.settings.profiles import load_profile


def _model_name_from_proc() -> str:
    with open("/proc/cpuinfo") as info:
        return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))


def _tiny_student(seed: int = 0):
    smoke = load_profile("smoke")
    config = smoke.student_config("digits", seed)
    return config.replace(train=dataclasses.replace(config.train, epochs=1))


@pytest.fixture
def threads_seen(monkeypatch):
    """The torch thread count in force while each run trained (read inside the lifecycle's training)."""
    seen = []
    real_live = lifecycle._live

    def spy(task, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return real_live(task, *args, **kwargs)

    monkeypatch.setattr(lifecycle, "_live", spy)
    return seen


def test_a_record_names_the_cpu_its_kernels_and_threads(tmp_path, threads_seen, monkeypatch):
    monkeypatch.delenv(execution.CPU_THREADS_ENV, raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # what a JupyterLab kernel has on a 2-core machine: torch's default
    try:
        result = train_run(_tiny_student(), RunStore(tmp_path), device="cpu", progress=False)
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    hw = result.hardware
    assert hw["cpu_model"] == _model_name_from_proc() and hw["cpu_model"]
    assert hw["cpu_capability"] == str(torch.backends.cpu.get_cpu_capability()).lower()
    # The run trained with one thread whatever the kernel had, and said so; the kernel's setting is restored.
    assert threads_seen == [1] and hw["torch_threads"] == 1 and after == 2
    assert f"{hw['cpu_capability']} kernels" in result.device
    # The record keeps it through the store.
    again = train_run(_tiny_student(), RunStore(tmp_path), device="cpu", progress=False)
    assert again.hardware == hw


def test_the_thread_count_is_one_setting_for_every_entry_point(tmp_path, threads_seen, monkeypatch):
    monkeypatch.setenv(execution.CPU_THREADS_ENV, "2")
    result = train_run(_tiny_student(seed=1), RunStore(tmp_path), device="cpu", progress=False)
    assert threads_seen == [2] and result.hardware["torch_threads"] == 2
    monkeypatch.setenv(execution.CPU_THREADS_ENV, "two")
    with pytest.raises(ValueError, match="GREENKD_CPU_THREADS.*'two'"):
        execution.cpu_threads()


def test_a_run_under_another_instruction_set_says_so(tmp_path):
    """ATEN_CPU_CAPABILITY=default (no vector kernels) exists on every x86 CPU: the record must name it."""
    code = (
        "import dataclasses, json, sys\n"
        "from greenkd_utils.runs.store import RunStore\n"
        "from greenkd_utils.runs.lifecycle import train as train_run\n"
        "from greenkd_utils.settings.profiles import load_profile\n"
        "c = load_profile('smoke').student_config('digits', 0)\n"
        "r = train_run(c.replace(train=dataclasses.replace(c.train, epochs=1)), RunStore(sys.argv[1]), device='cpu', progress=False)\n"
        "print(json.dumps(r.hardware))\n"
    )
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default", "GREENKD_CPU_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True,
                         timeout=300, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1])["cpu_capability"] == "default"


def test_the_manifest_names_the_cpu_kernels_and_threads(monkeypatch):
    monkeypatch.setenv(execution.CPU_THREADS_ENV, "3")
    hw = hardware()
    assert hw["cpu_model"] == _model_name_from_proc()
    assert hw["cpu_capability"] == str(torch.backends.cpu.get_cpu_capability()).lower()
    assert hw["torch_threads"] == 3 and hw["cpu_count"] == os.cpu_count()


def test_a_table_row_that_mixes_capabilities_or_threads_says_so():
    avx2_1 = SimpleNamespace(hardware={"cpu_capability": "avx2", "torch_threads": 1})
    avx2_2 = SimpleNamespace(hardware={"cpu_capability": "avx2", "torch_threads": 2})
    default_1 = SimpleNamespace(hardware={"cpu_capability": "default", "torch_threads": 1})
    assert hardware_of([avx2_1, avx2_1]) == "avx2, 1 thread"
    assert hardware_of([avx2_1, avx2_2]) == "mixed: avx2, 1 thread; avx2, 2 threads"
    assert hardware_of([avx2_1, default_1]) == "mixed: avx2, 1 thread; default, 1 thread"
    assert hardware_of([avx2_1, SimpleNamespace(hardware={})]) == "mixed: avx2, 1 thread; unrecorded"
