"""docs/teaching.md quotes the committed demo outputs: each number is read here from its file and must appear in the
text as written, and a number the text adds without a check fails the test."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from greenkd_utils.analysis.verdict import CONFIDENCE
from greenkd_utils.settings.profiles import load_profile

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "teaching.md"
DEMO = REPO / "figures" / "demo"


@pytest.fixture(scope="module")
def text() -> str:
    return DOC.read_text()


@pytest.fixture(scope="module")
def quoted() -> dict:
    """Each number the plan quotes, as it is written, from the committed output it is read from."""
    verdict = pd.read_csv(DEMO / "table4_verdict.csv").set_index("loss")
    scale = pd.read_csv(DEMO / "table4_loss_scale.csv").set_index(["loss", "tau"])["gradient_norm"]
    table1 = pd.read_csv(DEMO / "table1.csv").set_index("method")
    ratio = pd.read_csv(DEMO / "table1_energy_ratio.csv").iloc[0]
    sensitivity = pd.read_csv(DEMO / "table4_sensitivity.csv")
    restricted = sensitivity[sensitivity["variant"].str.startswith("tuned grid restricted")].set_index("loss")
    numbers = {}
    for loss in ("hkd", "cmc", "dml"):
        row = verdict.loc[loss]
        numbers[f"{loss} tuned"] = f"{row['tuned_mean_pct']:.1f}%"
        numbers[f"{loss} stochastic"] = f"{row['stochastic_mean_pct']:.1f}%"
        numbers[f"{loss} difference"] = f"{row['difference_pct']:.2f}" if loss == "hkd" else f"{row['difference_pct']:.1f}"
        numbers[f"{loss} restricted"] = (f"{restricted.loc[loss, 'difference_pct']:.2f}" if loss == "hkd"
                                         else f"{restricted.loc[loss, 'difference_pct']:.1f}")
        numbers[f"{loss} grad 2"] = f"{scale[(loss, 2.0)]:.3g}"
        numbers[f"{loss} grad 20"] = f"{scale[(loss, 20.0)]:.3g}"
    numbers["hkd ci"] = f"{verdict.loc['hkd', 'ci_low_pct']:.2f} to {verdict.loc['hkd', 'ci_high_pct']:.2f}"
    numbers["ci level"] = f"{100 * CONFIDENCE:.0f}% interval"
    numbers["cmc shrink"] = f"{scale[('cmc', 2.0)] / scale[('cmc', 20.0)]:.0f} times smaller"
    numbers["dml shrink"] = f"{scale[('dml', 2.0)] / scale[('dml', 20.0)]:.1f} times smaller"
    numbers["margin"] = f"+-{verdict['margin_pct'].iloc[0]:g}-point margin"
    numbers["seeds"] = f"{int(verdict['n_seeds'].iloc[0])} seeds"
    stochastic, tuned, teacher = table1.loc["kd_stochastic"], table1.loc["kd_tuned"], table1.loc["teacher"]
    numbers["stochastic kWh"] = f"{stochastic['energy_kwh']:.2e} kWh per seed"
    for phase in ("training", "evaluation", "checkpoints"):
        numbers[f"{phase} share"] = f"{100 * stochastic[f'energy_{phase}_kwh'] / stochastic['energy_kwh']:.0f}%"
    numbers["tuned kWh"] = f"{tuned['energy_kwh']:.2e} kWh per seed"
    numbers["teacher kWh"] = f"{teacher['energy_kwh']:.2e} kWh per seed"
    numbers["energy ratio"] = f"{ratio['energy_ratio_tuned_over_stochastic']:.1f} times"
    numbers["flops ratio"] = f"{ratio['flops_ratio_tuned_over_stochastic']:.1f} times the FLOPs"
    numbers["grid size"] = f"grid has {int(ratio['grid_size'])}"
    return numbers


def test_every_quoted_number_is_the_committed_one(text, quoted):
    missing = {name: value for name, value in quoted.items() if value not in text}
    assert not missing, f"docs/teaching.md does not quote these as the committed outputs have them: {missing}"


def test_no_result_is_quoted_without_a_check(text, quoted):
    # Every decimal number and every percentage in the text is one of the checked quotations.
    checked = " ".join(quoted.values())
    found = set(re.findall(r"-?\d+\.\d+(?:e-?\d+)?%?|\d+%", text))
    unchecked = sorted(n for n in found if n not in checked)
    assert not unchecked, f"docs/teaching.md quotes numbers no test reads from figures/demo: {unchecked}"


def test_the_facts_behind_the_words(text):
    verdict = pd.read_csv(DEMO / "table4_verdict.csv")
    assert set(verdict["verdict"]) == {"worse"} and "`worse`" in text
    table4 = pd.read_csv(DEMO / "table4.csv")
    for loss in ("cmc", "dml"):
        chosen = table4[(table4["loss"] == loss) & (table4["method"] == "kd_tuned")]["tau"].iloc[0]
        assert set(chosen.split(": ")[1].split(", ")) == {"1"}, chosen  # "chose tau = 1 on every one of the 20 seeds"
    assert "chose tau = 1 on every one of the 20 seeds" in text
    scale = pd.read_csv(DEMO / "table4_loss_scale.csv").set_index(["loss", "tau"])["gradient_norm"]
    assert abs(scale[("hkd", 20.0)] / scale[("hkd", 2.0)] - 1) < 0.1  # "HKD ... (level)"
    table1 = pd.read_csv(DEMO / "table1.csv").set_index("method")
    shares = table1["energy_training_kwh"] / table1["energy_kwh"]
    assert (shares > 0.5).all()  # "Training dominates every row of the table."
    assert table1.loc["teacher", "energy_kwh"] > table1.loc["kd_tuned", "energy_kwh"]  # "more than the whole grid"
    assert set(table1["energy_source"]) == {"estimated"} and "**estimated**" in text
    profile = load_profile("demo")
    assert (profile.teacher_model, profile.student_model) == ("wrn16_1", "cnn_small")
    assert "a WRN-16-1 teacher and a small CNN student" in text
    assert list(profile.tau_grid) == [1, 2, 4, 8, 16] and "{1, 2, 4, 8, 16}" in text
    assert tuple(profile.tau_range) == (2.0, 20.0)


def test_the_timings_are_those_of_the_manifest(text):
    manifest = json.loads((DEMO / "manifest.json").read_text())
    assert manifest["hardware"]["logical_cores"] == 2 and "2-core CPU" in text
    assert manifest["total_duration_s"] < 30 * 60 and "under 30 minutes in all" in text
    durations = {n["notebook"]: n["duration_s"] for n in manifest["notebooks"]}
    assert durations["runs (ray executor)"] < 25 * 60 and "training the runs under 25 minutes" in text
    taught = set(re.findall(r"`([a-z0-9_]+)\.ipynb`", text))
    assert {"00_start_here", "table1_carbon_footprint", "table4_kd_losses"} <= taught
    # Notebooks the manifest timed (a notebook added after the committed run is timed at the next one).
    timed = {name: durations[name] for name in taught if name in durations}
    assert timed and all(seconds < 40 for seconds in timed.values()), timed
    assert "under 40 seconds each" in text


def test_the_plan_fills_45_minutes_and_names_notebooks_that_exist(text):
    rows = re.findall(r"^\| (\d+)-(\d+) \|", text, flags=re.MULTILINE)
    spans = [(int(a), int(b)) for a, b in rows]
    assert spans[0][0] == 0 and spans[-1][1] == 45
    assert all(b == c for (_, b), (c, _) in zip(spans, spans[1:])), spans
    for name in re.findall(r"`([a-z0-9_]+\.ipynb)`", text):
        assert (REPO / "notebooks" / name).is_file(), name
