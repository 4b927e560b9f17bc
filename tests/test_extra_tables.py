"""Tests for the settings and table helpers behind Tables 7 and 8 and Figure 3 (no training)."""

from __future__ import annotations

import pandas as pd
import pytest

from greenkd_utils.paper import figure3_temperature_and_batch as temperature_study
from greenkd_utils.paper import table7_teacher_student_pairs as pairs
from greenkd_utils.paper.experiments import setup
from greenkd_utils.paper.extra_tables import compare_with_paper_dataset
from greenkd_utils.settings.extra_tables import NOTEBOOKS, load_settings
from greenkd_utils.settings.knobs import PROFILES
from greenkd_utils.settings.profiles import load_profile


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_every_profile_has_settings_for_every_notebook(profile, notebook):
    settings = load_settings(load_profile(profile), notebook)
    assert settings.seeds and settings.tau_grid
    assert settings.paper_dataset in {"cifar10", "tinyimagenet"}


def test_settings_fall_back_to_the_profile_and_take_overrides():
    demo = load_profile("demo")
    figure3 = load_settings(demo, "figure3_temperature_and_batch")
    # Figure 3 must reuse Table 1's runs: the profile's seeds, grid and epochs, untouched.
    assert figure3.seeds == demo.seeds and figure3.tau_grid == demo.tau_grid and figure3.epochs is None
    assert figure3.student_changes() == {}
    assert len(figure3.batch_sizes) >= 4
    table7 = load_settings(demo, "table7_teacher_student_pairs", seeds=[3, 4], epochs=2, tau_grid=None)
    assert table7.seeds == (3, 4) and table7.epochs == 2 and len(table7.tau_grid) >= 3
    assert table7.student_changes() == {"epochs": 2, "lr": table7.lr} and table7.lr > 0
    paper = load_settings(load_profile("paper"), "table7_teacher_student_pairs")
    assert paper.dataset == "tinyimagenet" and paper.epochs is None and len(paper.tau_grid) == 20


def test_bad_settings_name_the_valid_choices():
    demo = load_profile("demo")
    with pytest.raises(ValueError, match="valid: table7"):
        load_settings(demo, "table9")
    with pytest.raises(ValueError, match="valid: .*epochs"):
        load_settings(demo, "table8_quantization", epoch=3)
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        load_settings(demo, "table8_quantization", epochs=0)


def test_kd_configs_keep_the_profile_teacher():
    """Changing the student's epochs must not change the teacher (it is shared with Table 1)."""
    demo = load_profile("demo")
    settings = load_settings(demo, "table7_teacher_student_pairs")
    config = demo.kd_config("digits", 0, "hkd", teacher_model="resnet18", student_model="shufflenetv2",
                            **settings.student_changes())
    assert config.teacher.key == demo.teacher_config("digits", 0, model="resnet18").key
    assert config.train.epochs == settings.epochs


def _row(pair, teacher, student, method, acc, kwh, gflops, grid):
    return dict(dataset="digits", pair=pair, teacher=teacher, student=student, loss="hkd", method=method,
                accuracy_pct=acc, energy_kwh=kwh, energy_kwh_pue=kwh * 1.67, co2_g=kwh * 1.67 * 294,
                training_gflops_millions=gflops, grid_size=grid)


def test_stochastic_vs_tuned_and_the_paper_comparison():
    table = pd.DataFrame([
        _row("resnet18 -> resnet18", "resnet18", "resnet18", "kd_tuned", 90.0, 3.0, 6.0, 3),
        _row("resnet18 -> resnet18", "resnet18", "resnet18", "kd_stochastic", 91.0, 1.0, 2.0, 1),
    ])
    ratios = pairs.stochastic_vs_tuned(table)
    assert ratios.iloc[0]["accuracy_difference_pct"] == pytest.approx(1.0)
    assert ratios.iloc[0]["energy_ratio_tuned_over_stochastic"] == pytest.approx(3.0)
    comparison = compare_with_paper_dataset(
        table, "table7", pairs.TABLE7_METRICS, "tinyimagenet", keys=("pair", "method"),
        extra_match=("teacher", "student", "loss"),
    )
    acc = comparison[(comparison["metric"] == "accuracy_pct") & (comparison["method"] == "kd_tuned")].iloc[0]
    assert acc["paper"] == pytest.approx(63.69)  # the paper's strong -> strong tuned row
    assert acc["dataset"] == "digits" and acc["paper_dataset"] == "tinyimagenet"
    assert acc["difference"] == pytest.approx(90.0 - 63.69)


def test_claims_measure_spreads():
    tau = pd.DataFrame({
        "temperature": ["fixed", "fixed", "tuned", "stochastic"], "tau": [1.0, 4.0, float("nan"), float("nan")],
        "tau_label": ["", "", "chosen on validation: 4", "U[2, 20] per batch"],
        "accuracy_pct": [80.0, 90.0, 90.0, 89.0], "accuracy_pct_std": [1.0, 1.0, 1.0, 0.5],
    })
    batch = pd.DataFrame({"batch_size": [16, 32, 64, 128], "accuracy_pct": [88.0, 89.0, 89.5, 87.0],
                          "accuracy_pct_std": [1.0, 0.0, 1.0, 2.0]})
    claims = temperature_study.claims(tau, batch).set_index("our_measure")["ours"].tolist()
    assert claims == pytest.approx([10.0, -1.0, 2.5, 1.0])


def test_setup_applies_profile_overrides_only_where_configured(tmp_path):
    exp = setup("smoke", notebook="table7_teacher_student_pairs", results_dir=tmp_path, seeds=[1])
    assert exp.profile.train_subset == 100 and exp.profile.teacher_train["epochs"] == 1
    assert exp.settings.seeds == (1,)
    exp = setup("smoke", notebook="figure3_temperature_and_batch", results_dir=tmp_path)
    assert exp.profile == load_profile("smoke")  # Figure 3 shares Table 1's runs: the profile untouched
    exp = setup("demo", notebook="table7_teacher_student_pairs", results_dir=tmp_path, teacher_epochs=3, pue=1.2)
    assert exp.profile.teacher_train["epochs"] == 3 and exp.pue == 1.2
    with pytest.raises(ValueError, match="unknown profile"):
        setup("nonsense", notebook="table7_teacher_student_pairs", results_dir=tmp_path)
