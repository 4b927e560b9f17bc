"""Tests for greenkd_utils.analysis.predictions (picking runs) and Figure 4's output distribution of one image."""

from __future__ import annotations

import numpy as np
import pytest

from greenkd_utils.analysis import predictions as pr
from greenkd_utils.paper import figure4_logits_gradcam_confusion as figure4


def make(method, logits, labels):
    return pr.Predictions(method, 0, "wrn16_1", np.asarray(logits, np.float32), np.asarray(labels), ["a", "b", "c"])


def test_first_index_of_class():
    labels = np.array([1, 0, 2, 2, 0])
    assert figure4.first_index_of_class(labels, 2) == 2
    with pytest.raises(ValueError, match="classes present"):
        figure4.first_index_of_class(labels, 7)


def test_output_distribution_is_a_softmax_per_method():
    preds = {
        "teacher": make("teacher", [[0.0, 0.0, 0.0], [5.0, 0.0, 0.0]], [2, 0]),
        "kd_stochastic": make("kd_stochastic", [[0.0, 3.0, 1.0], [1.0, 2.0, 3.0]], [2, 0]),
    }
    table = figure4.output_distributions(preds, 0)
    assert len(table) == 6 and (table["true_class"] == "c").all()
    sums = table.groupby("method")["probability"].sum()
    assert np.allclose(sums, 1.0)
    teacher = table[table["method"] == "teacher"]
    assert np.allclose(teacher["probability"], 1 / 3)
    top = table[(table["method"] == "kd_stochastic") & table["is_prediction"]]
    assert top["class_name"].tolist() == ["b"]
    assert preds["teacher"].accuracy_pct == 50.0


def test_unknown_method_is_an_error():
    with pytest.raises(ValueError, match="valid: teacher"):
        pr.method_runs(None, "digits", 0, methods=("qat",))
