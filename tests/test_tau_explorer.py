"""The tau explorer of the start-here notebook: softened outputs, each KD loss and its gradient against tau."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from greenkd_utils.analysis.notebook_display import WithStaticFallback
from greenkd_utils.analysis.tau_explorer import (
    PAPER_RANGE,
    TauExplorer,
    check_range,
    softened,
    tau_grid,
)
from greenkd_utils.paper import experiments as ex
from greenkd_utils.settings.notebook_parameters import executed_by_papermill

ALPHA = 0.95


def tiny_network(seed: int, classes: int = 10) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 8 * 8, classes))


@pytest.fixture(scope="module")
def explorer() -> TauExplorer:
    torch.manual_seed(0)
    x = torch.randn(1, 1, 8, 8)
    image = (torch.rand(8, 8) * 255).to(torch.uint8).numpy()
    return TauExplorer.from_models(tiny_network(1), tiny_network(2), x, 3, image, [str(c) for c in range(10)],
                                   caption="two tiny networks", alpha=ALPHA,
                                   taus=[1.0, 2.0, 4.0, 8.0, 10.0, 16.0, 20.0, 30.0])


def gradient(explorer, loss, tau):
    return float(explorer.curve(loss).set_index("tau").loc[tau, "gradient_norm"])


# -- softened outputs -------------------------------------------------------------------------------------
def test_softened_outputs_are_distributions_that_flatten_as_tau_grows():
    logits = torch.tensor([9.0, 5.0, 3.0, 1.0, -2.0])
    entropies = []
    for tau in (1.0, 2.0, 5.0, 20.0):
        p = softened(logits, tau)
        assert p.sum() == pytest.approx(1.0) and (p > 0).all()
        entropies.append(float(-(p * np.log(p)).sum()))
    assert entropies == sorted(entropies) and entropies[-1] < np.log(5)
    assert softened(logits, 1e6) == pytest.approx(np.full(5, 0.2), abs=1e-5)
    with pytest.raises(ValueError, match="tau must be > 0; got 0"):
        softened(logits, 0)


def test_a_bad_range_or_grid_is_refused_by_value():
    with pytest.raises(ValueError, match="0 < low < high; got low=5, high=5"):
        check_range(5, 5)
    with pytest.raises(ValueError, match="low=-1"):
        tau_grid(-1, 20)
    grid = tau_grid(1, 30, 5)
    assert grid[0] == pytest.approx(1) and grid[-1] == pytest.approx(30) and len(grid) == 5


# -- the losses and their gradients ---------------------------------------------------------------------------
def test_the_loss_values_are_those_of_the_kd_losses_weighted_by_alpha(explorer):
    s, t = explorer.student_logits.double().reshape(1, -1), explorer.teacher_logits.double().reshape(1, -1)
    for tau in (2.0, 8.0):
        p_t, log_p_t, log_p_s = F.softmax(t / tau, 1), F.log_softmax(t / tau, 1), F.log_softmax(s / tau, 1)
        kl = float((p_t * (log_p_t - log_p_s)).sum())
        expected = {"hkd": ALPHA * tau**2 * kl, "dml": ALPHA * kl,
                    "cmc": ALPHA * float(((s / tau - t / tau) ** 2).mean())}
        got = explorer.curves[explorer.curves["tau"] == tau].set_index("loss")["loss_value"]
        for loss, value in expected.items():
            assert got[loss] == pytest.approx(value, rel=1e-5), (loss, tau)
    ce = (1 - ALPHA) * float(F.cross_entropy(s, torch.tensor([explorer.label])))
    assert explorer.label_term["loss_value"] == pytest.approx(ce, rel=1e-5)


def test_cmc_gradient_shrinks_exactly_as_one_over_tau_squared(explorer):
    assert gradient(explorer, "cmc", 2.0) / gradient(explorer, "cmc", 20.0) == pytest.approx(100.0, rel=1e-6)
    assert gradient(explorer, "cmc", 1.0) / gradient(explorer, "cmc", 10.0) == pytest.approx(100.0, rel=1e-6)


def test_dml_shrinks_as_one_over_tau_squared_at_large_tau_and_hkd_stays_level(explorer):
    assert gradient(explorer, "dml", 10.0) / gradient(explorer, "dml", 20.0) == pytest.approx(4.0, rel=0.05)
    assert gradient(explorer, "dml", 16.0) / gradient(explorer, "dml", 30.0) == pytest.approx((30 / 16) ** 2,
                                                                                            rel=0.05)
    assert gradient(explorer, "hkd", 10.0) / gradient(explorer, "hkd", 20.0) == pytest.approx(1.0, abs=0.1)
    assert gradient(explorer, "hkd", 20.0) / gradient(explorer, "hkd", 30.0) == pytest.approx(1.0, abs=0.05)


def test_the_student_is_left_as_it_was():
    student, teacher = tiny_network(2), tiny_network(1)
    student.train()
    before = [p.detach().clone() for p in student.parameters()]
    TauExplorer.from_models(teacher, student, torch.randn(1, 1, 8, 8), 0, np.zeros((8, 8)), [], "t", taus=[2, 4])
    assert student.training
    assert all(torch.equal(a, b) for a, b in zip(before, student.parameters()))
    assert all(p.grad is None for p in student.parameters())


# -- what a stochastic range does ---------------------------------------------------------------------------
def test_range_summary_is_the_expectation_under_the_uniform_draw(explorer):
    summary = explorer.range_summary(*PAPER_RANGE).set_index("loss")
    assert summary.loc["cmc", "max_over_min"] == pytest.approx(100.0, rel=1e-3)
    assert summary.loc["hkd", "max_over_min"] < 1.5
    # g(tau) = g(1) / tau^2, so its mean over U[2, 20] is g(1) (1/2 - 1/20) / 18.
    g1 = gradient(explorer, "cmc", 1.0)
    assert summary.loc["cmc", "mean_gradient_norm"] == pytest.approx(g1 * (1 / 2 - 1 / 20) / 18, rel=1e-3)
    assert summary.loc["cmc", "mean_over_label_term"] == pytest.approx(
        summary.loc["cmc", "mean_gradient_norm"] / explorer.label_term["gradient_norm"])
    narrow = explorer.range_summary(2.0, 4.0).set_index("loss")
    assert narrow.loc["cmc", "max_over_min"] == pytest.approx(4.0, rel=1e-3)


def test_a_tau_outside_the_explored_grid_is_refused_naming_the_range(explorer):
    with pytest.raises(ValueError, match="tau 40 is outside the explored range; valid: 1 to 30"):
        explorer.at(40)
    with pytest.raises(ValueError, match="unknown loss 'kd'; valid: hkd, cmc, dml"):
        explorer.curve("kd")
    assert explorer.at(8.0).set_index("loss").loc["cmc", "gradient_norm"] == pytest.approx(
        gradient(explorer, "cmc", 8.0))


# -- the figure ------------------------------------------------------------------------------------------------
def test_the_figure_marks_the_chosen_tau_and_shades_the_range(explorer):
    import matplotlib.pyplot as plt

    fig = explorer.figure(tau=8.0, low=2.0, high=10.0)
    try:
        image, probs, loss_axis, grad_axis = fig.axes[:4]
        for ax in (loss_axis, grad_axis):
            marks = [line for line in ax.lines if list(line.get_xdata()) == [8.0, 8.0]]
            assert marks, "no vertical line at the chosen tau"
            labels = ax.get_legend_handles_labels()[1]
            assert "stochastic U[2, 10]" in labels and "tau = 8" in labels
        heights = [bar.get_height() for bar in probs.patches]
        expected = [*softened(explorer.teacher_logits, 8.0), *softened(explorer.student_logits, 8.0)]
        assert heights == pytest.approx(expected)
        assert "two tiny networks" in fig._suptitle.get_text() and "CMC x25" in fig._suptitle.get_text()
    finally:
        plt.close(fig)
    first, moved = explorer.png(4.0), explorer.png(6.0)
    assert first.startswith(b"\x89PNG") and first != moved


# -- the widget's fallback and papermill ----------------------------------------------------------------------
def test_the_widget_output_carries_its_static_picture():
    import ipywidgets as widgets

    slider = widgets.FloatSlider()
    bundle = WithStaticFallback(slider, b"\x89PNG fake", text="tau explorer")._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == slider.model_id
    assert base64.b64decode(bundle["image/png"]) == b"\x89PNG fake"
    assert bundle["text/plain"] == "tau explorer"
    with pytest.raises(ValueError, match="needs the PNG bytes"):
        WithStaticFallback(slider, b"")


def test_papermill_is_recognised_by_its_injected_cell():
    assert executed_by_papermill({"In": ["", 'profile = "demo"', '# Parameters\nprofile = "smoke"\n', "x"]})
    assert not executed_by_papermill({"In": ["", 'profile = "demo"', 'profile = "smoke"', "x"]})
    assert not executed_by_papermill({})


# -- a real pair from the store ------------------------------------------------------------------------------
def test_a_real_teacher_and_student_from_the_store(tmp_path):
    exp = ex.setup("smoke", notebook="00_start_here", results_dir=str(tmp_path / "results"), progress=False)
    teacher, student = exp.teacher("digits", 0), exp.stochastic("digits", 0, "hkd")
    explorer = TauExplorer.from_runs(exp, teacher, student, image_index=3, taus=[1.0, 2.0, 20.0])
    assert explorer.caption == ("profile smoke: teacher wrn16_1 -> student wrn16_1 (one pair, seed 0), "
                                "digits test image 3")
    assert exp.models_note() == "teacher wrn16_1 -> student wrn16_1"
    images, labels = _test_split(exp, student)
    assert explorer.label == int(labels[3]) and explorer.image.shape == (8, 8)
    assert (explorer.image == images[3, 0].numpy()).all()
    model = teacher.load_model(exp.store, "cpu")
    assert explorer.teacher_logits == pytest.approx(_logits(model, exp, student, 3), abs=1e-5)
    assert gradient(explorer, "cmc", 2.0) / gradient(explorer, "cmc", 20.0) == pytest.approx(100.0, rel=1e-6)
    with pytest.raises(ValueError, match="image_index 10000 is not a test image; valid: 0 to 99"):
        TauExplorer.from_runs(exp, teacher, student, image_index=10000)


def _test_split(exp, run):
    from greenkd_utils.runs.device_data import prepare_data

    data = prepare_data(run.config, torch.device("cpu"), exp.data_root)
    return data.test


def _logits(model, exp, run, index):
    from greenkd_utils.core.augment import standardize
    from greenkd_utils.runs.device_data import prepare_data

    data = prepare_data(run.config, torch.device("cpu"), exp.data_root)
    x = standardize(data.test[0][index:index + 1].float() / 255.0, data.mean, data.std)
    with torch.no_grad():
        return model(x).reshape(-1)
