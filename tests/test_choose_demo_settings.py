"""The demo's setting is chosen on validation accuracy of baselines, never on test accuracy."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "choose_demo_settings.py"


def _script():
    spec = importlib.util.spec_from_file_location("choose_demo_settings", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _baselines(val, test):
    """Per-seed accuracies of teacher, student alone and tuned HKD on the validation and the test split."""
    names = ("teacher", "student", "tuned_hkd")
    return {**{f"val_{n}": v for n, v in zip(names, val)}, **{f"test_{n}": t for n, t in zip(names, test)}}


def test_candidates_are_ranked_on_validation_and_test_never_decides():
    script = _script()
    candidates = {
        # On test, "a" looks best (KD gains 5 points); on validation it gains 1: validation must rank it last
        # among the valid ones.
        "a": _baselines(val=([97, 97], [93, 93], [94, 94]), test=([97, 97], [90, 90], [95, 95])),
        "b": _baselines(val=([97, 97], [93, 93], [96, 96]), test=([97, 97], [93, 93], [93, 93])),
        # The teacher leads by less than MIN_TEACHER_LEAD on validation: not a distillation setting.
        "c": _baselines(val=([94, 94], [93, 93], [99, 99]), test=([99, 99], [90, 90], [99, 99])),
    }
    assert script.rank_on_validation(candidates) == ["b", "a", "c"]
    # Changing only test accuracies never changes the ranking.
    for values in candidates.values():
        for key in [k for k in values if k.startswith("test_")]:
            values[key] = [100 - v for v in values[key]]
    assert script.rank_on_validation(candidates) == ["b", "a", "c"]
