"""The spread behind the accuracy thresholds of the test-suite's headline tests: the same pinned settings as
the tests, over several seeds, under this process's CPU kernels (``ATEN_CPU_CAPABILITY``) and 1 torch thread.
Each test writes the measured range beside its threshold; rerun this when a headline setting changes.

    for c in default avx2 avx512; do ATEN_CPU_CAPABILITY=$c python benchmarks/test_threshold_spread.py; done
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from conftest import _full_digits  # noqa: E402
from test_dfkd import DEEPINVERSION, STUDENT, digits_config  # noqa: E402
from test_detection_training import headline_configs  # noqa: E402
from test_tasks_classification import HEADLINE  # noqa: E402

from greenkd_utils.core.config import TemperatureSpec  # noqa: E402
from greenkd_utils.runs.execution import cpu_capability  # noqa: E402
from greenkd_utils.runs.lifecycle import train as train_run  # noqa: E402
from greenkd_utils.runs.store import RunStore  # noqa: E402
from greenkd_utils.settings.profiles import load_profile  # noqa: E402


def engine_headline(seed: int, store: RunStore) -> dict:
    """tests/test_tasks_classification.py's headline (teacher, student, stochastic HKD; WRN-16-1, 4 epochs, all digits)."""
    profile = load_profile("smoke")
    kd = profile.kd_config("digits", seed=seed, loss="hkd", temperature=TemperatureSpec.stochastic(2, 20),
                           teacher_model="wrn16_1", student_model="wrn16_1")
    kd = _full_digits(kd.replace(train=HEADLINE, teacher=kd.teacher.replace(train=HEADLINE)))
    student = _full_digits(profile.student_config("digits", seed=seed, model="wrn16_1").replace(train=HEADLINE))
    runs = {name: train_run(c, store, device="cpu", progress=False)
            for name, c in (("teacher", kd.teacher), ("student", student), ("kd", kd))}
    return {"engine_teacher_test": runs["teacher"].test_accuracy, "engine_student_test": runs["student"].test_accuracy,
            "engine_kd_test": runs["kd"].test_accuracy, "engine_kd_val": runs["kd"].val_accuracy}


def dfkd_headline(seed: int, store: RunStore) -> dict:
    """tests/test_dfkd.py's headline (DeepInversion student from a WRN-16-1 teacher, all digits)."""
    result = train_run(digits_config(DEEPINVERSION, STUDENT, kd_steps=25, seed=seed), store, device="cpu",
                             progress=False)
    return {"dfkd_teacher_test": result.extras["teacher_test_accuracy"], "dfkd_student_test": result.test_accuracy}


def detection_headline(seed: int, store: RunStore) -> dict:
    """tests/test_detection_training.py's headline (SSD teacher, SSDLite KD student on generated shapes)."""
    teacher, kd = headline_configs(seed)
    result = train_run(kd, store, "cpu", progress=False)
    teacher_result = train_run(teacher, store, "cpu", progress=False)
    return {"detection_teacher_map": teacher_result.extras["test_map_pct"], "detection_kd_map": result.extras["test_map_pct"],
            "detection_loss_ratio": result.history[-1]["train_loss"] / result.history[0]["train_loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--only", nargs="+", default=["engine", "dfkd"], choices=["engine", "dfkd", "detection"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(tmp)
        for seed in args.seeds:
            row = {"cpu_capability": cpu_capability(), "seed": seed}
            for name in args.only:
                row.update({"engine": engine_headline, "dfkd": dfkd_headline,
                            "detection": detection_headline}[name](seed, store))
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
