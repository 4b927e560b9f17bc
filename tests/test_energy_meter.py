"""Tests for greenkd_utils.energy.meter: what the meter reports from each source, and how it falls back.

No GPU, RAPL or network is needed: RAPL is faked as a folder of energy_uj
files, NVML and carbontracker by replacing the factories the meter calls.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import logging
import math
import os
import time
from pathlib import Path

import pytest

from greenkd_utils.energy import meter as meter_module
from greenkd_utils.energy import report, sensors
from greenkd_utils.energy.meter import EnergyMeter
from greenkd_utils.energy.report import (
    DEFAULT_CARBON_INTENSITY,
    DEFAULT_PUE,
    JOULES_PER_KWH,
    EnergyReport,
)

FAST = 0.02  # sampling interval for tests, in seconds


def _busy(seconds: float) -> None:
    end = time.process_time() + seconds
    x = 0
    while time.process_time() < end:
        x += 1


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    # The real machine's sensors must not leak into a test: no RAPL, no NVML,
    # no carbontracker unless a test installs a fake.
    monkeypatch.setattr(meter_module, "POWERCAP_ROOT", str(tmp_path / "no-powercap"))
    monkeypatch.setattr(meter_module, "open_carbontracker_cpu", lambda root: None)
    monkeypatch.setattr(meter_module, "open_carbontracker_gpu", lambda position: None)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    report._warned.clear()

# --------------------------------------------------------------------------- the estimate on this machine


def test_cpu_meter_estimates_cpu_and_dram():
    with EnergyMeter(sample_interval_s=FAST) as meter:
        _busy(0.5)
    r = meter.report
    assert r.duration_s > 0.4
    assert set(r.components) == {"cpu", "dram"}
    cpu, dram = r.components["cpu"], r.components["dram"]
    assert cpu.source == "estimated" and cpu.method.startswith("TDP model")
    assert "12 W per core" in cpu.method
    # 0.5 s of one busy core at 12 W is ~6 J; allow for interpreter overhead.
    assert 4.0 < cpu.energy_kwh * JOULES_PER_KWH < 20.0
    assert dram.source == "estimated" and dram.energy_kwh > 0 and "0.3725 W per GiB" in dram.method
    assert r.source == "estimated"
    assert r.energy_kwh_pue == r.energy_kwh * DEFAULT_PUE
    assert r.co2_g == r.energy_kwh_pue * DEFAULT_CARBON_INTENSITY
    assert r.pue == 1.67 and r.carbon_intensity_g_per_kwh == 294.0


def test_cpu_device_has_no_gpu_component():
    with EnergyMeter(device="cpu", sample_interval_s=FAST) as meter:
        pass
    assert "gpu" not in meter.report.components


def test_snapshot_is_monotone_while_running():
    with EnergyMeter(sample_interval_s=FAST) as meter:
        snaps = []
        for _ in range(4):
            _busy(0.05)
            snaps.append(meter.snapshot())
    energies = [s.energy_kwh for s in snaps] + [meter.report.energy_kwh]
    durations = [s.duration_s for s in snaps] + [meter.report.duration_s]
    assert energies == sorted(energies) and energies[-1] > energies[0]
    assert durations == sorted(durations)
    assert meter.snapshot() is meter.report  # after exit, the final report


def test_exception_propagates_and_report_is_set():
    meter = EnergyMeter(sample_interval_s=FAST)
    with pytest.raises(KeyError, match="boom"):
        with meter:
            raise KeyError("boom")
    assert meter.report is not None and "cpu" in meter.report.components
    assert not meter._thread.is_alive()


def test_background_thread_is_a_daemon_and_stops():
    meter = EnergyMeter(sample_interval_s=FAST)
    with meter:
        assert meter._thread.daemon and meter._thread.is_alive()
    assert not meter._thread.is_alive()


def test_custom_constants_flow_through():
    with EnergyMeter(pue=1.2, carbon_intensity_g_per_kwh=100.0, cpu_watts_per_core=5.0, sample_interval_s=FAST) as m:
        _busy(0.1)
    assert m.report.pue == 1.2 and m.report.co2_g == m.report.energy_kwh * 1.2 * 100.0
    assert "5 W per core" in m.report.components["cpu"].method


# --------------------------------------------------------------------------- report arithmetic


def test_dict_round_trip_through_json():
    with EnergyMeter(sample_interval_s=FAST) as meter:
        _busy(0.05)
    d = json.loads(json.dumps(meter.report.to_dict()))
    assert d["co2_g"] == meter.report.co2_g and d["source"] == "estimated"
    assert EnergyReport.from_dict(d) == meter.report


# --------------------------------------------------------------------------- RAPL


def _rapl_domain(root: Path, entry: str, name: str, uj: int, max_uj: int = 1_000_000_000) -> Path:
    d = root / entry
    d.mkdir(parents=True)
    (d / "name").write_text(name + "\n")
    (d / "energy_uj").write_text(f"{uj}\n")
    (d / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return d


def _write_atomic(path: Path, text: str) -> None:
    # The sampling thread may read at any moment; never let it see a half-written file.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_fake_rapl_tree_is_measured_with_wraparound(tmp_path):
    root = tmp_path / "powercap"
    pkg = _rapl_domain(root, "intel-rapl:0", "package-0", 999_000_000)
    dram = _rapl_domain(root, "intel-rapl:0:2", "dram", 5_000_000)
    _rapl_domain(root, "intel-rapl:0:0", "core", 0)   # inside the package: must not count twice
    _rapl_domain(root, "intel-rapl:1", "psys", 0)     # whole platform: must not count
    with EnergyMeter(sample_interval_s=FAST, powercap_root=str(root)) as meter:
        # The package counter wraps at 1e9 uJ: 999 J -> 1 J later is +2 J.
        _write_atomic(pkg / "energy_uj", "1000000\n")
        _write_atomic(dram / "energy_uj", "5500000\n")
        time.sleep(5 * FAST)
    cpu, dr = meter.report.components["cpu"], meter.report.components["dram"]
    assert cpu.source == "measured" and dr.source == "measured"
    assert cpu.energy_kwh == pytest.approx(2.0 / 3.6e6)
    assert dr.energy_kwh == pytest.approx(0.5 / 3.6e6)
    assert "whole socket" in cpu.method and cpu.method.startswith("RAPL package counter")
    assert meter.report.source == "measured"


def test_rapl_without_dram_domain_estimates_dram(tmp_path):
    root = tmp_path / "powercap"
    _rapl_domain(root, "intel-rapl:0", "package-0", 0)
    with EnergyMeter(sample_interval_s=FAST, powercap_root=str(root)) as meter:
        pass
    assert meter.report.components["cpu"].source == "measured"
    assert meter.report.components["dram"].source == "estimated"
    assert meter.report.source == "partly estimated"


def test_unreadable_rapl_falls_back_with_one_warning(tmp_path, caplog):
    root = tmp_path / "powercap"
    d = _rapl_domain(root, "intel-rapl:0", "package-0", 0)
    (d / "energy_uj").unlink()
    (d / "energy_uj").mkdir()  # opening a folder fails even for root
    with caplog.at_level(logging.WARNING, logger="greenkd_utils.energy"):
        for _ in range(2):
            with EnergyMeter(sample_interval_s=FAST, powercap_root=str(root)) as meter:
                pass
    assert meter.report.components["cpu"].source == "estimated"
    assert sum("not readable" in rec.getMessage() for rec in caplog.records) == 1


def test_rapl_failing_mid_run_downgrades_to_estimate(tmp_path):
    root = tmp_path / "powercap"
    pkg = _rapl_domain(root, "intel-rapl:0", "package-0", 0)
    with EnergyMeter(sample_interval_s=FAST, powercap_root=str(root)) as meter:
        assert meter.snapshot().components["cpu"].source == "measured"
        (pkg / "energy_uj").unlink()
        time.sleep(3 * FAST)
    cpu = meter.report.components["cpu"]
    assert cpu.source == "estimated" and cpu.method.startswith("TDP model")


# --------------------------------------------------------------------------- NVML (faked)


class FakeNvml:
    """Stands in for sensors.NvmlDevice: an energy counter in mJ and a power reading."""

    def __init__(self, start_mj=1_000_000.0, counter=True, watts=100.0):
        self.mj = start_mj
        self.counter = counter
        self.watts = watts
        self.closed = False
        self.fail = False

    def total_energy_mj(self):
        if not self.counter:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        if self.fail:
            raise RuntimeError("GPU is lost")
        return self.mj

    def power_w(self):
        if self.fail:
            raise RuntimeError("GPU is lost")
        return self.watts

    def close(self):
        self.closed = True


def _fake_nvml(monkeypatch, fake):
    opened = []

    def open_device(index):
        opened.append(index)
        return fake

    monkeypatch.setattr(meter_module, "open_nvml_device", open_device)
    return opened


def test_gpu_measured_from_nvml_counter_difference(monkeypatch):
    fake = FakeNvml()
    opened = _fake_nvml(monkeypatch, fake)
    with EnergyMeter(device="cuda:0", sample_interval_s=FAST) as meter:
        fake.mj += 7.2e6  # 7.2 kJ = 0.002 kWh
    gpu = meter.report.components["gpu"]
    assert gpu.source == "measured" and gpu.method == "NVML total-energy counter (GPU 0)"
    assert gpu.energy_kwh == pytest.approx(7.2e6 / 3.6e9)
    assert opened == [0] and fake.closed
    assert meter.report.components["cpu"].source == "estimated"
    assert meter.report.source == "partly estimated"


def test_gpu_index_respects_cuda_visible_devices(monkeypatch):
    opened = _fake_nvml(monkeypatch, FakeNvml())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    with EnergyMeter(device="cuda:1", sample_interval_s=FAST) as meter:
        pass
    assert opened == [1] and meter.report.components["gpu"].method.endswith("(GPU 1)")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-5f3c")  # UUIDs: identity, documented
    assert sensors.nvml_index_for(1) == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    assert sensors.nvml_index_for(0) == 2


def test_gpu_without_counter_integrates_power_samples(monkeypatch):
    _fake_nvml(monkeypatch, FakeNvml(counter=False, watts=360.0))
    with EnergyMeter(device="cuda", sample_interval_s=FAST) as meter:
        time.sleep(0.3)
    r = meter.report
    gpu = r.components["gpu"]
    assert gpu.source == "measured" and gpu.method.startswith("NVML power sampled")
    assert gpu.energy_kwh == pytest.approx(360.0 * r.duration_s / 3.6e6, rel=0.05)


def test_gpu_counter_failure_falls_back_to_power(monkeypatch):
    fake = FakeNvml(watts=50.0)
    _fake_nvml(monkeypatch, fake)
    with EnergyMeter(device="cuda:0", sample_interval_s=FAST) as meter:
        time.sleep(3 * FAST)
        fake.counter = False
        time.sleep(3 * FAST)
    assert meter.report.components["gpu"].method.startswith("NVML power sampled")


def test_gpu_total_failure_is_extrapolated_and_never_raises(monkeypatch):
    fake = FakeNvml()
    _fake_nvml(monkeypatch, fake)
    with EnergyMeter(device="cuda:0", sample_interval_s=FAST) as meter:
        fake.mj += 3.6e6
        time.sleep(3 * FAST)
        fake.fail = True
        time.sleep(3 * FAST)
    gpu = meter.report.components["gpu"]
    assert gpu.source == "estimated" and "extrapolated" in gpu.method
    assert gpu.energy_kwh >= 3.6e6 / 3.6e9


def test_nvml_unavailable_means_no_gpu_component(monkeypatch):
    def broken(index):
        raise RuntimeError("NVML Shared Library Not Found")

    monkeypatch.setattr(meter_module, "open_nvml_device", broken)
    with EnergyMeter(device="cuda:0", sample_interval_s=FAST) as meter:
        pass
    assert "gpu" not in meter.report.components and "cpu" in meter.report.components


def test_real_nvml_absent_leaves_the_gpu_out_and_still_meters_the_cpu(caplog):
    # The real NVML adapter, on a machine without an NVIDIA driver: it must fail softly, costing only the GPU line.
    try:
        sensors.open_nvml_device(0).close()
    except Exception:
        pass
    else:
        pytest.skip("this machine has an NVIDIA driver")
    with caplog.at_level(logging.WARNING, logger="greenkd_utils.energy"):
        with EnergyMeter(device="cuda:0", sample_interval_s=FAST) as meter:
            _busy(0.05)
    assert set(meter.report.components) == {"cpu", "dram"}
    assert meter.report.components["cpu"].energy_kwh > 0 and meter.report.source == "estimated"
    assert [r.getMessage() for r in caplog.records if "cannot open NVML for GPU 0" in r.getMessage()], caplog.text


# --------------------------------------------------------------------------- carbontracker


def _carbontracker_pue_constants() -> set:
    """PUE_* values in carbontracker/constants.py, read without importing it."""
    spec = importlib.util.find_spec("carbontracker")
    path = Path(spec.origin).parent / "constants.py"
    values = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            if any(isinstance(t, ast.Name) and t.id.startswith("PUE") for t in node.targets):
                values.add(float(node.value.value))
    assert values, "carbontracker's PUE constants were not found"
    return values


class FakeCarbontrackerCpu:
    provides = ("cpu", "dram")

    def __init__(self):
        self.closed = False

    def power_w(self):
        return {"cpu": 40.0, "dram": 4.0}

    def close(self):
        self.closed = True


def test_carbontracker_components_serve_without_their_pue(monkeypatch):
    fake_cpu = FakeCarbontrackerCpu()
    monkeypatch.setattr(meter_module, "open_carbontracker_cpu", lambda root: fake_cpu)
    _fake_nvml(monkeypatch, FakeNvml(counter=False, watts=1.0))

    class FakeCtGpu:
        def power_w(self):
            return 200.0

        def close(self):
            pass

    monkeypatch.setattr(meter_module, "open_carbontracker_gpu", lambda position: FakeCtGpu())
    with EnergyMeter(device="cuda:0", sample_interval_s=FAST) as meter:
        time.sleep(0.3)
    r = meter.report
    for name, watts in (("cpu", 40.0), ("dram", 4.0), ("gpu", 200.0)):
        c = r.components[name]
        assert c.source == "measured" and c.method.startswith("carbontracker"), c
        assert c.energy_kwh == pytest.approx(watts * r.duration_s / 3.6e6, rel=0.05)
    assert fake_cpu.closed
    assert r.energy_kwh_pue == r.energy_kwh * DEFAULT_PUE
    assert r.co2_g == r.energy_kwh * DEFAULT_PUE * DEFAULT_CARBON_INTENSITY
    ratio = r.energy_kwh_pue / r.energy_kwh
    for pue in _carbontracker_pue_constants():
        assert not math.isclose(ratio, pue, rel_tol=1e-6)
        assert str(pue) not in json.dumps(r.to_dict())


def test_nvml_counter_is_preferred_over_carbontracker_gpu_sampling(monkeypatch):
    # carbontracker only samples GPU power; a working energy counter is exact.
    fake = FakeNvml()
    _fake_nvml(monkeypatch, fake)
    sampled = []

    class FakeCtGpu:
        def power_w(self):
            sampled.append(1)
            return 200.0

        def close(self):
            pass

    monkeypatch.setattr(meter_module, "open_carbontracker_gpu", lambda position: FakeCtGpu())
    with EnergyMeter(device="cuda:0", sample_interval_s=FAST) as meter:
        fake.mj += 3.6e3
        time.sleep(3 * FAST)
    assert meter.report.components["gpu"].method == "NVML total-energy counter (GPU 0)"
    assert meter.report.components["gpu"].energy_kwh == pytest.approx(1e-6)
    assert sampled  # still running, as the backup


def test_use_carbontracker_false_skips_it(monkeypatch):
    monkeypatch.setattr(meter_module, "open_carbontracker_cpu", lambda root: FakeCarbontrackerCpu())
    with EnergyMeter(sample_interval_s=FAST, use_carbontracker=False) as meter:
        pass
    assert meter.report.components["cpu"].method.startswith("TDP model")
