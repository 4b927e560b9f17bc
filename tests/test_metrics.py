"""Tests for greenkd_utils.analysis.metrics: Table 5's metrics against a hand-made confusion matrix."""

from __future__ import annotations

import numpy as np
import pytest

from greenkd_utils.analysis import metrics
from greenkd_utils.analysis.predictions import Predictions
from greenkd_utils.paper import table5_metrics as table5

# Rows: true class, columns: predicted class. 10 images, 3 classes, 6 correct.
HAND_MADE = np.array(
    [
        [3, 1, 0],
        [0, 2, 2],
        [1, 0, 1],
    ]
)


def labels_from_confusion(matrix: np.ndarray):
    y_true, y_pred = [], []
    for i, j in np.ndindex(matrix.shape):
        y_true += [i] * int(matrix[i, j])
        y_pred += [j] * int(matrix[i, j])
    return np.array(y_true), np.array(y_pred)


def test_metrics_of_the_hand_made_matrix():
    y_true, y_pred = labels_from_confusion(HAND_MADE)
    got = metrics.classification_metrics(y_true, y_pred)
    # Worked by hand, per class (TP, FP, FN, TN): c0 (3, 1, 1, 5), c1 (2, 1, 2, 5), c2 (1, 2, 1, 6).
    expected = {
        "accuracy_pct": 60.0,
        "precision": (3 / 4 + 2 / 3 + 1 / 3) / 3,
        "recall": (3 / 4 + 2 / 4 + 1 / 2) / 3,
        "f1": (3 / 4 + 4 / 7 + 2 / 5) / 3,
        "specificity": (5 / 6 + 5 / 6 + 6 / 8) / 3,
        "prevalence": (4 / 10 + 4 / 10 + 2 / 10) / 3,
        # p_o = 0.6, p_e = 0.4*0.4 + 0.4*0.3 + 0.2*0.3 = 0.34
        "kappa": (0.6 - 0.34) / (1 - 0.34),
    }
    assert set(got) == set(metrics.METRICS)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name


def test_per_class_counts_of_the_hand_made_matrix():
    y_true, y_pred = labels_from_confusion(HAND_MADE)
    table = metrics.per_class_metrics(y_true, y_pred)
    assert table[["tp", "fp", "fn", "tn"]].values.tolist() == [[3, 1, 1, 5], [2, 1, 2, 5], [1, 2, 1, 6]]
    assert table["specificity"].tolist() == pytest.approx([5 / 6, 5 / 6, 3 / 4])
    assert table["support"].tolist() == [4, 4, 2]


def test_a_class_never_seen_still_counts_when_labels_are_given():
    y_true, y_pred = np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1])
    assert metrics.classification_metrics(y_true, y_pred)["precision"] == 1.0
    # Class 2 has no image and no prediction: precision/recall 0 by convention, prevalence 0.
    with_missing = metrics.classification_metrics(y_true, y_pred, labels=[0, 1, 2])
    assert with_missing["precision"] == pytest.approx(2 / 3)
    assert with_missing["prevalence"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("num_classes", [3, 10])
def test_closed_forms_match_sklearn_on_a_balanced_test_set(num_classes):
    rng = np.random.default_rng(0)
    y_true = np.repeat(np.arange(num_classes), 50)
    y_pred = np.where(rng.random(y_true.size) < 0.85, y_true, rng.integers(0, num_classes, y_true.size))
    got = metrics.classification_metrics(y_true, y_pred)
    accuracy = got["accuracy_pct"] / 100
    assert got["specificity"] == pytest.approx(metrics.balanced_specificity(accuracy, num_classes), abs=1e-12)
    assert got["kappa"] == pytest.approx(metrics.balanced_kappa(accuracy, num_classes), abs=1e-12)
    assert got["prevalence"] == pytest.approx(1 / num_classes, abs=1e-12)


def test_the_papers_specificity_and_prevalence_do_not_follow_from_one_vs_rest():
    table = table5.paper_consistency(num_classes=10)
    assert list(table["method"]) == ["teacher", "kd_tuned", "kd_stochastic"]
    assert (table["one_vs_rest_specificity"] > 0.99).all()
    assert (table["paper_specificity"] <= 0.95).all()
    assert (table["one_vs_rest_prevalence"] == 0.1).all() and (table["paper_prevalence"] == 0.09).all()
    # Table 5's two student accuracies are Table 1's, swapped.
    students = table.set_index("method").loc[["kd_tuned", "kd_stochastic"]]
    assert students["table5_accuracy_pct"].tolist() == students["table1_accuracy_pct"].tolist()[::-1]


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="one length"):
        metrics.classification_metrics([0, 1], [0])
    with pytest.raises(ValueError, match="fraction"):
        metrics.balanced_specificity(95.0, 10)
    with pytest.raises(ValueError, match="normalize"):
        metrics.confusion_matrices({}, normalize="rows")


def fake_predictions(method: str, seed: int, y_true, y_pred, k: int = 3) -> Predictions:
    logits = np.eye(k, dtype=np.float32)[np.asarray(y_pred)] * 5.0
    return Predictions(method, seed, "wrn16_1", logits, np.asarray(y_true), [str(c) for c in range(k)])


def test_metrics_table_averages_over_seeds():
    y_true, y_pred = labels_from_confusion(HAND_MADE)
    seeds = [
        {"teacher": fake_predictions("teacher", 0, y_true, y_true), "kd_stochastic": fake_predictions("kd_stochastic", 0, y_true, y_pred)},
        {"teacher": fake_predictions("teacher", 1, y_true, y_true), "kd_stochastic": fake_predictions("kd_stochastic", 1, y_true, y_true)},
    ]
    table = table5.metrics_table(seeds, "digits")
    assert list(table["method"]) == ["teacher", "kd_stochastic"]
    row = table.set_index("method").loc["kd_stochastic"]
    assert row["accuracy_pct"] == pytest.approx(80.0)
    assert row["accuracy_pct_std"] == pytest.approx(np.std([60.0, 100.0], ddof=1))
    assert table.set_index("method").loc["teacher", "kappa"] == 1.0
    assert (table["n_seeds"] == 2).all()


def test_confusion_matrices_and_long_table():
    y_true, y_pred = labels_from_confusion(HAND_MADE)
    preds = {"kd_tuned": fake_predictions("kd_tuned", 0, y_true, y_pred)}
    assert (metrics.confusion_matrices(preds)["kd_tuned"] == HAND_MADE).all()
    rows = metrics.confusion_matrices(preds, normalize="true")["kd_tuned"].sum(axis=1)
    assert rows == pytest.approx(np.ones(3))
    long = metrics.confusion_long(preds)
    assert len(long) == 9 and long["count"].sum() == 10
