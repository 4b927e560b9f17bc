"""Table 4's detection column runs at the smoke profile and writes what it promises."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from notebook_runner import execute, smoke_dirs

pytestmark = pytest.mark.notebook


@pytest.fixture(scope="module", autouse=True)
def one_thread_kernels():
    """The kernel papermill starts uses one intra-op thread, as conftest.py does for this process: on two
    busy cores, two OpenMP threads made the detectors' steps many times slower."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        patch.setenv("MKL_NUM_THREADS", "1")
        yield


def test_table4_detection(tmp_path):
    out = execute("table4_detection", smoke_dirs(tmp_path))

    table = pd.read_csv(out / "table4_detection.csv")
    assert list(table["method"]) == ["teacher"] + ["kd_tuned", "kd_stochastic"] * 3
    assert list(table["loss"]) == ["ssd", "hkd", "hkd", "cmc", "cmc", "dml", "dml"]
    assert list(table["model"]) == ["vgg16_ssd"] + ["mobilenetv2_ssdlite"] * 6
    assert table["map_pct"].between(0, 100).all() and (table["map_pct_std"] >= 0).all()
    assert (table["energy_kwh"] > 0).all() and (table["co2_g"] > 0).all()
    assert (table["energy_kwh_pue"] > table["energy_kwh"]).all()
    assert set(table["energy_source"]) <= {"measured", "estimated", "partly estimated"}
    kd = table[table["method"] != "teacher"]
    assert set(kd.loc[kd["method"] == "kd_tuned", "grid_size"]) == {2}  # smoke grid: tau in {2, 4}
    assert kd.loc[kd["method"] == "kd_stochastic", "tau"].str.contains("U\\[2, 20\\]").all()

    ratios = pd.read_csv(out / "table4_detection_energy_ratio.csv")
    assert sorted(ratios["loss"]) == ["cmc", "dml", "hkd"]
    # Every run of a sweep sees the same images and the teacher once per image: FLOPs scale with the grid.
    assert ratios["flops_ratio_tuned_over_stochastic"].tolist() == pytest.approx([2.0] * 3)
    assert (ratios["energy_ratio_tuned_over_stochastic"] > 1.0).all()

    comparison = pd.read_csv(out / "table4_detection_vs_paper.csv")
    assert set(comparison["paper_dataset"]) == {"voc"}
    hkd_tuned_map = comparison[(comparison["loss"] == "hkd") & (comparison["method"] == "kd_tuned") & (comparison["metric"] == "map_pct")]
    assert hkd_tuned_map["paper"].tolist() == [65.45]
    assert set(comparison["metric"]) == {"map_pct", "training_gflops_millions", "energy_kwh_pue", "co2_g"}

    for name in ("table4_detection", "table4_detection_examples"):
        assert (out / f"{name}.png").stat().st_size > 0 and (out / f"{name}.pdf").stat().st_size > 0
    summary = json.loads((out / "table4_detection.summary.json").read_text())
    assert summary["profile"] == "smoke" and summary["tables"]["table4_detection"]["energy_kwh_per_seed_sum_of_rows"] > 0
    assert "VOC07 11-point" in (out / "table4_detection.md").read_text()
