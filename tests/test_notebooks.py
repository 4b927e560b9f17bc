"""Every notebook runs headlessly at the smoke profile and writes what it promises.

The notebooks share one run store for the whole module, as they do in run_all.sh,
so a teacher trained by one notebook is reused by the next.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import torch
from notebook_runner import execute, smoke_dirs

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return smoke_dirs(tmp_path_factory.mktemp("smoke"))


# -- the notebooks as committed ---------------------------------------------------------------
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} is committed with outputs: clear them"
            assert cell.execution_count is None, f"{path.name} is committed with execution counts"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_has_a_parameters_cell_with_profile_first(path):
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    assert tagged[0].source.splitlines()[0].startswith('profile = "demo"')
    assert nb.metadata["kernelspec"]["name"] == "greenkd"


def test_notebook_prose_names_only_notebooks_that_exist():
    existing = {p.name for p in NOTEBOOKS}
    for path in NOTEBOOKS:
        prose = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown")
        named = set(re.findall(r"[A-Za-z0-9_]+\.ipynb", prose))
        assert named <= existing, f"{path.name} names notebooks that do not exist: {sorted(named - existing)}"


def test_every_notebook_is_smoke_tested():
    test_sources = "\n".join(p.read_text() for p in (REPO / "tests").glob("test_*.py"))
    untested = [p.stem for p in NOTEBOOKS if p.stem not in SMOKE_CHECKS and f'execute("{p.stem}"' not in test_sources]
    assert not untested, f"notebooks without a smoke test: {untested}"


# -- executing them at the smoke profile ---------------------------------------------------------
def check_start_here(out: Path):
    assert (out / "start_here_softmax_temperature.png").stat().st_size > 0
    assert (out / "start_here_stochastic_run.pdf").stat().st_size > 0
    # Under papermill the tau explorer draws its static figure, saved and shown, and offers no widget.
    for suffix in (".png", ".pdf"):
        assert (out / "start_here_tau_explorer").with_suffix(suffix).stat().st_size > 0
    executed = nbformat.read(out / "00_start_here.ipynb", as_version=4)
    explorer = next(c for c in executed.cells if "TauExplorer.from_runs" in c.source)
    assert [o.output_type for o in explorer.outputs] == ["display_data"]
    assert "image/png" in explorer.outputs[0].data
    assert not any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in explorer.outputs)


def check_explore_runs(out: Path):
    # The module's store holds the start-here notebook's teacher and student by now (SMOKE_CHECKS run in order).
    listing = pd.read_csv(out / "explore_runs_store.csv")
    assert {"teacher", "kd_stochastic"} <= set(listing["method"])
    assert set(listing["profile"]) == {"smoke"} and set(listing["energy_source"]) == {"estimated"}
    assert "(estimated)" in (out / "explore_runs_store.md").read_text()
    assert (out / "explore_runs_first_run.png").stat().st_size > 0
    provenance = pd.read_csv(out / "explore_runs_first_run_provenance.csv").set_index("field")["value"]
    assert provenance["executor"] == "local" and provenance["torch threads"] == "1"
    assert "version: torch" in provenance.index


def check_table1(out: Path):
    table = pd.read_csv(out / "table1.csv")
    assert list(table["method"]) == ["teacher", "student", "kd_tuned", "kd_stochastic"]
    assert table["accuracy_pct"].between(0, 100).all()
    assert (table["n_seeds"] == 2).all()
    assert (table["energy_kwh"] > 0).all() and (table["co2_g"] > 0).all()
    assert set(table["energy_source"]) <= {"measured", "estimated", "partly estimated"}
    tuned = table.set_index("method").loc["kd_tuned"]
    stochastic = table.set_index("method").loc["kd_stochastic"]
    # The tuned row pays for its whole grid (2 taus in the smoke profile): twice the training FLOPs.
    assert tuned["training_gflops_millions"] == pytest.approx(2 * stochastic["training_gflops_millions"], rel=1e-6)
    comparison = pd.read_csv(out / "table1_vs_paper.csv")
    assert {"ours", "paper", "difference", "paper_dataset"} <= set(comparison.columns)
    assert comparison["paper"].notna().all()
    assert (out / "table1.png").is_file() and (out / "table1.pdf").is_file()
    assert "PUE" in (out / "table1.md").read_text()


def check_table4(out: Path):
    table = pd.read_csv(out / "table4.csv")
    assert set(table["loss"]) == {"hkd", "cmc", "dml"}
    assert len(table) == 6 and set(table["method"]) == {"kd_tuned", "kd_stochastic"}
    assert table["accuracy_pct"].between(0, 100).all()
    assert (table["accuracy_pct_std"] >= 0).all()
    ratios = pd.read_csv(out / "table4_energy_ratio.csv")
    assert (ratios["flops_ratio_tuned_over_stochastic"].round(6) == 2.0).all()
    comparison = pd.read_csv(out / "table4_vs_paper.csv")
    assert set(comparison["metric"]) == {"accuracy_pct", "training_gflops_millions", "energy_kwh_pue", "co2_g"}
    assert (out / "table4_digits.png").is_file()
    summary = json.loads((out / "table4_kd_losses.summary.json").read_text())
    assert summary["profile"] == "smoke" and summary["pue"] == 1.67
    # Every row says what trained it: this CPU's kernels, one torch thread (what every CPU run uses).
    capability = str(torch.backends.cpu.get_cpu_capability()).lower()
    assert set(table["hardware"]) == {f"{capability}, 1 thread"}
    assert summary["runs_hardware"] == [f"{capability}, 1 thread"]
    # The sensitivity table: the verdict's columns plus the variant, each convention the paper leaves open.
    verdict = pd.read_csv(out / "table4_verdict.csv")
    sensitivity = pd.read_csv(out / "table4_sensitivity.csv")
    assert list(sensitivity.columns) == ["variant", *verdict.columns]
    variants = dict(zip(sensitivity["variant"], sensitivity["loss"]))
    assert variants["cmc_on_softmax_probabilities"] == "cmc_softmax"
    assert variants["cmc_summed_over_classes"] == "cmc_sum"
    primary = sensitivity[sensitivity["variant"].str.startswith("primary")].drop(columns="variant")
    pd.testing.assert_frame_equal(primary.reset_index(drop=True), verdict, check_dtype=False)
    assert sensitivity["variant"].str.startswith("tuned grid restricted to the stochastic range {2, 4}").sum() == 3
    assert set(sensitivity["verdict"]) <= {"equivalent", "better", "worse", "inconclusive"}


SMOKE_CHECKS = {
    "00_start_here": check_start_here,
    "explore_runs": check_explore_runs,
    "table1_carbon_footprint": check_table1,
    "table4_kd_losses": check_table4,
}


@pytest.mark.notebook
@pytest.mark.parametrize("name", sorted(SMOKE_CHECKS))
def test_notebook_runs_at_smoke_profile(name, dirs):
    out = execute(name, dirs)
    SMOKE_CHECKS[name](out)


@pytest.mark.notebook
def test_unknown_parameter_is_an_error(dirs):
    import papermill as pm

    with pytest.raises(pm.PapermillExecutionError, match="unknown profile"):
        execute("table1_carbon_footprint", dirs, profile="nonsense")
