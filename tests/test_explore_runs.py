"""What a run store holds, as the explore-runs notebook lists it, filters it and shows one run."""

from __future__ import annotations

import pandas as pd
import pytest
from notebook_runner import execute

from greenkd_utils.analysis import run_explorer
from greenkd_utils.core.config import TemperatureSpec
from greenkd_utils.paper import experiments as ex
from greenkd_utils.paper.explore_runs import LISTING, PROVENANCE, RUN_VIEWS, StoreContents, write_static_views
from greenkd_utils.runs.execution import hardware_label


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    """A smoke store with a teacher, a student, a fixed-tau and two stochastic-tau KD runs (seeds 0 and 1)."""
    root = tmp_path_factory.mktemp("explore")
    exp = ex.setup("smoke", notebook="explore_runs", results_dir=str(root / "results"), progress=False)
    exp.teacher("digits", 0)
    exp.student("digits", 0)
    exp.run(exp.profile.kd_config("digits", 0, "dml", TemperatureSpec.fixed(4.0)))
    exp.stochastic("digits", 0, "hkd")
    exp.stochastic("digits", 1, "hkd")
    return exp


def test_every_run_is_listed_with_what_a_person_filters_on(filled):
    table = run_explorer.runs_table(filled.store)
    assert list(table.columns) == list(run_explorer.COLUMNS)
    assert len(table) == 6  # the two stochastic runs have one teacher each (seed 0 and seed 1)
    rows = {(r.method, r.loss, r.seed): r for r in table.itertuples()}
    assert set(rows) == {("teacher", "ce", 0), ("teacher", "ce", 1), ("student", "ce", 0), ("kd_fixed", "dml", 0),
                         ("kd_stochastic", "hkd", 0), ("kd_stochastic", "hkd", 1)}
    assert rows[("kd_fixed", "dml", 0)].tau == "fixed 4"
    assert rows[("kd_stochastic", "hkd", 1)].tau == "stochastic U[2, 20]"
    assert set(table["profile"]) == {"smoke"} and set(table["dataset"]) == {"digits"}
    assert set(table["executor"]) == {"local"} and set(table["energy_source"]) == {"estimated"}
    for record in filled.store.finished_records():
        row = table[table["key"] == record["key"]].iloc[0]
        assert row["accuracy_pct"] == pytest.approx(record["test_accuracy"])
        assert row["energy_kwh"] == pytest.approx(record["energy"]["energy_kwh"])
        assert row["hardware"] == hardware_label(record["hardware"])
    assert run_explorer.energy_note(table) == "energy_kwh: device energy of each run before PUE (estimated)"


def test_the_co2_column_follows_the_notebooks_constants(filled):
    once = StoreContents.of(filled).table
    doubled = ex.setup("smoke", notebook="explore_runs", results_dir=str(filled.store.root), pue=2 * filled.pue,
                       progress=False)
    twice = StoreContents.of(doubled).table
    assert (twice["co2_g"] / once["co2_g"]).to_numpy() == pytest.approx(2.0)
    assert (twice["energy_kwh"] == once["energy_kwh"]).all()


def test_filters_keep_the_matching_runs_and_refuse_by_name(filled):
    table = run_explorer.runs_table(filled.store)
    choices = run_explorer.filter_choices(table)
    assert list(choices) == list(run_explorer.FILTERS)
    assert choices["method"] == [run_explorer.ALL, "kd_fixed", "kd_stochastic", "student", "teacher"]
    assert choices["seed"] == [run_explorer.ALL, 0, 1]
    assert len(run_explorer.filter_runs(table, method=run_explorer.ALL, seed=None)) == 6
    stochastic = run_explorer.filter_runs(table, method="kd_stochastic", loss="hkd")
    assert sorted(stochastic["seed"]) == [0, 1]
    assert run_explorer.filter_runs(table, method="teacher", seed=1)["name"].tolist() == ["teacher_digits_wrn16_1_s1"]
    assert run_explorer.filter_runs(table, method="student", loss="hkd").empty
    with pytest.raises(ValueError, match="cannot filter runs by colour; valid: profile, dataset, loss, method, seed"):
        run_explorer.filter_runs(table, colour="red")
    with pytest.raises(ValueError, match="no run has method 'kd_tuned'; valid: \\(all\\), kd_fixed"):
        run_explorer.filter_runs(table, method="kd_tuned")


def test_one_run_says_how_many_seeds_of_its_setting_the_store_holds(filled):
    table = run_explorer.runs_table(filled.store)
    stochastic = table[table["method"] == "kd_stochastic"].iloc[0]
    assert run_explorer.seeds_of_setting(table, stochastic["key"]) == 2
    caption = run_explorer.run_caption(table, stochastic["key"])
    assert caption.startswith("profile smoke: kd_digits_wrn16_1-to-wrn16_1_hkd_tauU2,20_s")
    assert "2 seeds of this setting in the store" in caption
    fixed = table[table["method"] == "kd_fixed"].iloc[0]
    assert "(kd_fixed dml fixed 4; seed 0, 1 seed of this setting" in run_explorer.run_caption(table, fixed["key"])
    with pytest.raises(ValueError, match="no run with key 'nope' in this store"):
        run_explorer.run_caption(table, "nope")


def test_provenance_names_versions_hardware_threads_and_executor(filled):
    contents = StoreContents.of(filled)
    key = contents.table["key"].iloc[0]
    run = contents.run(key)
    facts = dict(zip(*run_explorer.provenance(run).to_dict("list").values()))
    for name, version in run.versions.items():
        assert facts[f"version: {name}"] == version
    assert facts["torch threads"] == str(run.hardware["torch_threads"])
    assert facts["CPU"] == run.hardware["cpu_model"] and facts["GPU"] == "none"
    assert facts["executor"] == "local"
    assert facts["energy"].startswith("estimated: cpu estimated")
    with pytest.raises(ValueError, match="no run with key 'nope'"):
        contents.run("nope")


def test_the_views_of_a_run(filled):
    import matplotlib.pyplot as plt

    contents = StoreContents.of(filled)
    for method in ("kd_stochastic", "kd_fixed", "teacher"):
        key = contents.table[contents.table["method"] == method]["key"].iloc[0]
        run = contents.run(key)
        fig = run_explorer.run_figure(run, contents.caption(key))
        try:
            curves, taus, energy = fig.axes[:3]
            test_line = next(line for line in curves.lines if line.get_label() == "test accuracy")
            assert list(test_line.get_ydata()) == [h["test_accuracy"] for h in run.history]
            phases = [t.get_text() for t in energy.get_xticklabels()]
            assert phases[0] == "training\n(estimated)" and len(phases) == len(run.energy_by_phase)
            heights = [bar.get_height() for bar in energy.patches]
            assert sum(heights) == pytest.approx(run.energy.energy_kwh, rel=1e-6)
            if method == "kd_stochastic":
                assert taus.get_title() == f"{run.tau['count']} batches: stochastic U[2, 20]"
            elif method == "kd_fixed":
                assert [list(line.get_xdata()) for line in taus.lines] == [[4.0, 4.0]]
            else:
                assert "trained on labels only" in taus.texts[0].get_text()
            assert fig._suptitle.get_text() == contents.caption(key)
        finally:
            plt.close(fig)
    assert contents.views_png(key).startswith(b"\x89PNG")


def test_the_static_views_are_written_for_the_first_run(filled, tmp_path):
    contents = StoreContents.of(filled)
    views = write_static_views(filled, contents, tmp_path)
    assert views.first_key == contents.table["key"].iloc[0] and views.message == ""
    assert {p.name for p in views.paths} == {f"{LISTING}.csv", f"{LISTING}.md", f"{RUN_VIEWS}.png", f"{RUN_VIEWS}.pdf",
                                              f"{PROVENANCE}.csv", f"{PROVENANCE}.md"}
    listing = pd.read_csv(tmp_path / f"{LISTING}.csv")
    assert len(listing) == 6 and listing["key"].tolist() == contents.table["key"].tolist()
    assert "(estimated)" in (tmp_path / f"{LISTING}.md").read_text()
    provenance = (tmp_path / f"{PROVENANCE}.md").read_text()
    assert provenance.startswith(f"Provenance of {contents.caption(views.first_key)}") and "executor" in provenance


def test_an_empty_store_says_how_to_fill_it(tmp_path):
    exp = ex.setup("smoke", notebook="explore_runs", results_dir=str(tmp_path / "empty"), progress=False)
    contents = StoreContents.of(exp)
    assert contents.empty and list(contents.table.columns) == list(run_explorer.COLUMNS)
    views = write_static_views(exp, contents, tmp_path / "out")
    assert views.first_key is None and [p.name for p in views.paths] == [f"{LISTING}.csv", f"{LISTING}.md"]
    assert f"The run store {exp.store.root} holds no finished run yet" in views.message
    assert f"./run_all.sh --profile smoke --results-dir {exp.store.root}" in views.message
    assert "notebooks/00_start_here.ipynb" in views.message


def test_run_methods_of_every_kind_of_run():
    assert run_explorer.run_method({"role": "teacher"}, "classification") == "teacher"
    assert run_explorer.run_method({"role": "kd", "temperature": {"mode": "ctkd"}}, "detection") == "kd_ctkd"
    assert run_explorer.run_method({"synthesis": {"method": "cmi"}}, "data_free_kd") == "data_free_cmi"
    assert run_explorer.run_method({"role": "student"}, "qat") == "qat"
    assert run_explorer.tau_label({"mode": None}) == ""
    assert run_explorer.tau_label({"mode": "stochastic_per_sample", "low": 2.0, "high": 20.0}) == \
        "stochastic_per_sample U[2, 20]"


@pytest.mark.notebook
def test_the_notebook_on_an_empty_store(tmp_path):
    dirs = {"results": tmp_path / "results", "out": tmp_path / "figures"}
    out = execute("explore_runs", dirs)
    assert pd.read_csv(out / f"{LISTING}.csv").empty
    executed = (out / "explore_runs.ipynb").read_text()
    assert "holds no finished run yet" in executed and "Nothing to show yet." in executed
    assert not (out / f"{RUN_VIEWS}.png").exists()


def test_run_all_renders_the_store_listing_after_every_other_notebook(monkeypatch, tmp_path):
    from greenkd_utils.paper import render

    order = []
    monkeypatch.setattr(render, "render_one", lambda notebook, *args, **kw: (order.append(notebook.stem)
                                                                            or (notebook.stem, 0.0, "ok")))
    names = ["explore_runs", "00_start_here", "beyond_temperature_strategies", "table1_carbon_footprint"]
    render.render([tmp_path / f"{n}.ipynb" for n in names], tmp_path, [], tmp_path / "timings.tsv", "local")
    assert order[-1] == "explore_runs" and sorted(order) == sorted(names)
