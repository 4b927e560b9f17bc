"""The test-set predictions of finished runs: what Table 5 and Figure 4 are computed from.

The runs are the ones Table 1 trains (teacher, tuned KD, stochastic KD), taken
from the run store; nothing is trained here that Table 1 would not train too.
For the tuned baseline the model is the grid run chosen on validation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from greenkd_utils.runs.device_data import predict_logits, prepare_data
from greenkd_utils.runs.execution import resolve_device
from greenkd_utils.runs.record import RunResult

log = logging.getLogger(__name__)

COMPARED_METHODS = ("teacher", "student", "kd_tuned", "kd_stochastic")
"""The methods a comparison may ask for, in the order the paper's tables show them."""


@dataclass
class Predictions:
    """Logits of one model on the test split, with the true labels."""

    method: str
    seed: int
    model_name: str
    logits: np.ndarray  # (N, K) float32
    labels: np.ndarray  # (N,) int64
    class_names: List[str]

    @property
    def predicted(self) -> np.ndarray:
        return self.logits.argmax(axis=1)

    @property
    def probabilities(self) -> np.ndarray:
        """Softmax of the logits (tau = 1: the model's own output distribution)."""
        return torch.softmax(torch.from_numpy(self.logits), dim=1).numpy()

    @property
    def accuracy_pct(self) -> float:
        return float((self.predicted == self.labels).mean() * 100.0)


def method_runs(exp, dataset: str, seed: int, methods: Sequence[str] = ("teacher", "kd_tuned", "kd_stochastic"),
                loss: str = "hkd") -> Dict[str, RunResult]:
    """The finished run behind each method (cached, or trained as Table 1 would train it).

    ``kd_tuned`` is the grid run whose tau was chosen on the validation split.
    """
    unknown = [m for m in methods if m not in COMPARED_METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; valid: {', '.join(COMPARED_METHODS)}")
    runs: Dict[str, RunResult] = {}
    for method in methods:
        if method == "teacher":
            runs[method] = exp.teacher(dataset, seed)
        elif method == "student":
            runs[method] = exp.student(dataset, seed)
        elif method == "kd_tuned":
            runs[method] = exp.tuned(dataset, seed, loss).chosen
        else:
            runs[method] = exp.stochastic(dataset, seed, loss)
    return runs


def load_models(exp, runs: Dict[str, RunResult], device: Optional[str] = None) -> Dict[str, torch.nn.Module]:
    """The trained networks of ``runs`` in eval mode on ``device`` (default: the experiment's)."""
    target = resolve_device(device or exp.device)
    return {method: run.load_model(exp.store, target) for method, run in runs.items()}


def test_split(exp, run: RunResult, device: Optional[str] = None):
    """(uint8 images, labels, mean, std, class names) of the test split ``run`` was evaluated on."""
    data = prepare_data(run.config, resolve_device(device or exp.device), exp.data_root)
    images, labels = data.test
    return images, labels, data.mean, data.std, data.class_names


def predictions_of(exp, runs: Dict[str, RunResult], device: Optional[str] = None) -> Dict[str, Predictions]:
    """Test-set logits of every run (all runs of one profile share the test split)."""
    target = resolve_device(device or exp.device)
    models = load_models(exp, runs, str(target))
    out: Dict[str, Predictions] = {}
    for method, run in runs.items():
        images, labels, mean, std, class_names = test_split(exp, run, str(target))
        logits = predict_logits(models[method], images, mean, std)
        out[method] = Predictions(
            method=method,
            seed=run.config.seed,
            model_name=run.config.model,
            logits=logits.float().cpu().numpy(),
            labels=labels.cpu().numpy(),
            class_names=list(class_names),
        )
    return out
