"""Tables 7 and 8 and Figure 3 run at the smoke profile and write what they promise.

The three notebooks share one run store (as in run_all.sh), so the ResNet18 teacher
Table 7 trains is the one Table 8 distils from.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from notebook_runner import execute, smoke_dirs

from greenkd_utils.settings.extra_tables import load_settings
from greenkd_utils.settings.profiles import load_profile

pytestmark = pytest.mark.notebook


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return smoke_dirs(tmp_path_factory.mktemp("smoke4b"))


@pytest.fixture(scope="module", autouse=True)
def one_thread_kernels():
    """The kernels papermill starts use one intra-op thread, as conftest.py does for this process:
    ResNet18 steps with two OpenMP threads on two busy cores ran 5-10x slower than with one."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        patch.setenv("MKL_NUM_THREADS", "1")
        yield


def _energy_ok(table: pd.DataFrame) -> None:
    assert (table["energy_kwh"] > 0).all() and (table["co2_g"] > 0).all()
    assert (table["energy_kwh_pue"] > table["energy_kwh"]).all()
    assert set(table["energy_source"]) <= {"measured", "estimated", "partly estimated"}


def test_table7_teacher_student_pairs(dirs):
    out = execute("table7_teacher_student_pairs", dirs)
    table = pd.read_csv(out / "table7.csv")
    assert len(table) == 8
    pairs = set(zip(table["teacher"], table["student"]))
    assert pairs == {(t, s) for t in ("shufflenetv2", "resnet18") for s in ("shufflenetv2", "resnet18")}
    assert table.groupby(["teacher", "student"])["method"].apply(set).map(lambda m: m == {"kd_tuned", "kd_stochastic"}).all()
    assert table["accuracy_pct"].between(0, 100).all()
    _energy_ok(table)
    grid = len(load_settings(load_profile("smoke"), "table7_teacher_student_pairs").tau_grid)
    ratios = pd.read_csv(out / "table7_stochastic_vs_tuned.csv")
    # The tuned row pays for its grid: exactly grid x the FLOPs of the stochastic run of the same pair.
    assert np.allclose(ratios["flops_ratio_tuned_over_stochastic"], grid, rtol=1e-6)
    # A ResNet18 student costs more FLOPs than a ShuffleNetV2 student, whatever the teacher.
    stoch = table[table["method"] == "kd_stochastic"].set_index(["teacher", "student"])["training_gflops_millions"]
    assert stoch[("resnet18", "resnet18")] > stoch[("resnet18", "shufflenetv2")]
    comparison = pd.read_csv(out / "table7_vs_paper.csv")
    assert len(comparison) == 8 * 4
    assert comparison["paper"].notna().all() and set(comparison["paper_dataset"]) == {"tinyimagenet"}
    assert (comparison["dataset"] == "digits").all()
    assert (out / "table7.png").is_file() and (out / "table7.pdf").is_file()
    assert "PUE" in (out / "table7.md").read_text()


def test_table8_quantization(dirs):
    out = execute("table8_quantization", dirs)
    table = pd.read_csv(out / "table8.csv")
    assert list(table["method"]) == ["student", "qat", "kd_tuned", "kd_stochastic"]
    assert table["accuracy_pct"].between(0, 100).all()
    _energy_ok(table)
    sizes = table.set_index("method")["model_size_mb"]
    # int8 weights take a quarter of fp32 ones; scales, zero points and float biases keep it a bit above.
    assert 3.0 < sizes["student"] / sizes["qat"] < 4.5
    qat = pd.read_csv(out / "table8_qat_model_size.csv")
    assert (qat["int8_model_mb"] < qat["fp32_model_mb"]).all()
    assert qat["int8_accuracy_pct"].between(0, 100).all()
    comparison = pd.read_csv(out / "table8_vs_paper.csv")
    assert comparison["paper"].notna().all() and set(comparison["paper_dataset"]) == {"cifar10"}
    assert (out / "table8.png").is_file()
    # No deprecation chatter from torch.ao.quantization in the executed notebook.
    executed = json.loads((out / "table8_quantization.ipynb").read_text())
    text = "".join(
        "".join(o.get("text", "")) for c in executed["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
    )
    assert "deprecated" not in text and "quant_min" not in text and "quantize_per_tensor" not in text


def test_figure3_temperature_and_batch(dirs):
    out = execute("figure3_temperature_and_batch", dirs)
    settings = load_settings(load_profile("smoke"), "figure3_temperature_and_batch")
    taus = pd.read_csv(out / "figure3_accuracy_vs_tau.csv")
    fixed = taus[taus["temperature"] == "fixed"]
    assert sorted(fixed["tau"]) == sorted(settings.tau_grid)
    assert (taus["temperature"] == "stochastic").sum() == 1 and (taus["temperature"] == "tuned").sum() == 1
    tuned = taus[taus["temperature"] == "tuned"].iloc[0]
    # The tuned row pays for the whole grid: its FLOPs are the sum of the fixed-tau rows'.
    assert tuned["training_gflops_millions"] == pytest.approx(fixed["training_gflops_millions"].sum(), rel=1e-6)
    assert fixed["chosen_on_validation_by_n_seeds"].sum() == len(settings.seeds)
    batch = pd.read_csv(out / "figure3_accuracy_vs_batch_size.csv")
    assert batch["batch_size"].nunique() >= 4
    assert list(batch["batch_size"]) == list(settings.batch_sizes)
    assert batch["accuracy_pct"].between(0, 100).all()
    claims = pd.read_csv(out / "figure3_vs_paper_claims.csv")
    assert set(claims["panel"]) == {"a", "b"} and claims["ours"].notna().all()
    assert (out / "figure3.png").is_file() and (out / "figure3.pdf").is_file()
