"""Tests for greenkd_utils.energy.report: the arithmetic of energy reports and what their labels say."""

from __future__ import annotations

import pytest

from greenkd_utils.energy.report import DEFAULT_PUE, ComponentEnergy, EnergyReport


def _report(**components: tuple) -> EnergyReport:
    return EnergyReport(
        duration_s=10.0,
        components={
            name: ComponentEnergy(name, kwh, source, method)
            for name, (kwh, source, method) in components.items()
        },
    )


def test_total_and_add_sum_components_and_merge_sources():
    a = _report(cpu=(1.0, "measured", "RAPL package counter"), gpu=(2.0, "measured", "NVML total-energy counter (GPU 0)"))
    b = _report(cpu=(0.5, "estimated", "TDP model: x"), dram=(0.25, "estimated", "RSS model: y"))
    t = EnergyReport.total([a, b])
    assert t.duration_s == 20.0
    assert t.components["cpu"].energy_kwh == 1.5 and t.components["cpu"].source == "estimated"
    assert t.components["cpu"].method == "RAPL package counter + TDP model: x"
    assert t.components["gpu"].source == "measured" and t.components["gpu"].energy_kwh == 2.0
    assert t.energy_kwh == 3.75 and t.source == "partly estimated"
    assert list(t.components) == ["gpu", "cpu", "dram"]
    assert (a + b) == t
    assert sum([a, b]) == t
    assert EnergyReport.total([a, a]).components["cpu"].method == "RAPL package counter"


def test_total_rejects_mismatched_constants():
    a = _report(cpu=(1.0, "estimated", "m"))
    with pytest.raises(ValueError, match="constants"):
        a + a.with_constants(pue=1.0)
    with pytest.raises(ValueError, match="constants"):
        EnergyReport.total([a, a.with_constants(carbon_intensity_g_per_kwh=50.0)])
    with pytest.raises(ValueError):
        EnergyReport.total([])


def test_with_constants_rederives_without_touching_energy():
    r = _report(cpu=(2.0, "estimated", "m"))
    s = r.with_constants(pue=1.0, carbon_intensity_g_per_kwh=100.0)
    assert s.energy_kwh == 2.0 and s.energy_kwh_pue == 2.0 and s.co2_g == 200.0
    assert r.pue == DEFAULT_PUE and r.co2_g == 2.0 * 1.67 * 294.0
    assert r.with_constants(pue=2.0).carbon_intensity_g_per_kwh == 294.0


def test_label_and_sources():
    r = _report(cpu=(0.0012, "estimated", "TDP model: process CPU time x 12 W per core"))
    assert r.label().startswith("0.0012 kWh (estimated: cpu TDP model) x PUE 1.67 x 294 g/kWh")
    mixed = _report(gpu=(1.0, "measured", "NVML total-energy counter (GPU 0)"), cpu=(1.0, "estimated", "TDP model: x"))
    assert mixed.source == "partly estimated"
    assert "gpu NVML total-energy counter, cpu TDP model [estimated]" in mixed.label()
    assert _report(gpu=(1.0, "measured", "m")).source == "measured"


def test_component_validation():
    with pytest.raises(ValueError):
        ComponentEnergy("cpu", 1.0, "guessed", "m")
    with pytest.raises(ValueError):
        ComponentEnergy("cpu", -1.0, "measured", "m")
