"""Run keys and stored records must survive any refactoring of the run code.

The keys below were computed from the profile files before the run lifecycle was unified; the records in
``tests/data/legacy_records`` were written by that code (smoke profile, CPU). A change to the config or run
code must never move a key or stop an old ``result.json`` from loading. A deliberate change to a profile file
moves that profile's keys: recompute them then.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from greenkd_utils.core.config import TemperatureSpec
from greenkd_utils.paper.experiments import setup
from greenkd_utils.paper.table6_dfkd import dfkd_config
from greenkd_utils.paper.table8_quantization import qat_config, student_config
from greenkd_utils.runs import lifecycle
from greenkd_utils.runs.record import RunResult
from greenkd_utils.runs.registry import task_for_config_dict
from greenkd_utils.runs.store import RunStore
from greenkd_utils.settings.detection import load_detection_profile

GOLDEN_KEYS = {
    "smoke/dfkd_deepinversion_stochastic": "e37828e29584947f",
    "smoke/dfkd_cmi_fixed4_s1": "9cf5aff01324de0d",
    "smoke/detection_teacher": "eebf67608a1d8ec0",
    "smoke/detection_student": "ddbdc0de22adf1f2",
    "smoke/detection_kd_hkd_stochastic": "09ac246040de581a",
    "smoke/detection_kd_dml_fixed4_s1": "6fa1cead8ce66e21",
    "smoke/qat": "21ebf267de490deb",
    "smoke/qat_student": "4a75d02e7400a6ab",
    "demo/dfkd_deepinversion_stochastic": "a5c2d82267cdffbd",
    "demo/dfkd_cmi_fixed4_s1": "2075b3c1a336b2f4",
    "demo/detection_teacher": "989e263e9dfb3839",
    "demo/detection_student": "ceee22b6d06cda09",
    "demo/detection_kd_hkd_stochastic": "369b3ede2844682b",
    "demo/detection_kd_dml_fixed4_s1": "07a6e2237377486a",
    "demo/qat": "84bffebc55ce3885",
    "demo/qat_student": "43b64c489ca049a6",
    "paper/dfkd_deepinversion_stochastic": "3c341996ed3d43f5",
    "paper/dfkd_cmi_fixed4_s1": "52fd993ebf4432f3",
    "paper/detection_teacher": "3a82a3a5a6537e2b",
    "paper/detection_student": "a351c4d382d17dd3",
    "paper/detection_kd_hkd_stochastic": "48d7fdfa9a8a85f3",
    "paper/detection_kd_dml_fixed4_s1": "031a6c951c309200",
    "paper/qat": "552f08c70ae424e9",
    "paper/qat_student": "a223a9698667c79f",
}

LEGACY = Path(__file__).parent / "data" / "legacy_records"


def _config(profile: str, which: str, tmp_path):
    if which.startswith("dfkd"):
        exp = setup(profile, notebook="table6_dfkd", results_dir=tmp_path, progress=False)
        dataset = exp.profile.datasets[0]
        if which == "dfkd_deepinversion_stochastic":
            return dfkd_config(exp, "deepinversion", dataset, 0, TemperatureSpec.stochastic())
        return dfkd_config(exp, "cmi", dataset, 1, TemperatureSpec.fixed(4))
    if which.startswith("detection"):
        prof = load_detection_profile(profile)
        return {
            "detection_teacher": prof.teacher_config,
            "detection_student": lambda: prof.student_config(0),
            "detection_kd_hkd_stochastic": lambda: prof.kd_config(0, "hkd"),
            "detection_kd_dml_fixed4_s1": lambda: prof.kd_config(1, "dml", TemperatureSpec.fixed(4)),
        }[which]()
    exp = setup(profile, notebook="table8_quantization", results_dir=tmp_path, progress=False)
    return qat_config(exp, exp.settings, 0) if which == "qat" else student_config(exp, exp.settings, 0)


@pytest.mark.parametrize("name", sorted(GOLDEN_KEYS))
def test_run_keys_are_unchanged(name, tmp_path):
    profile, which = name.split("/")
    assert _config(profile, which, tmp_path).key == GOLDEN_KEYS[name]


def _legacy(kind: str) -> dict:
    record = json.loads((LEGACY / f"{kind}.json").read_text())
    record.pop("integrity", None)  # the store's seal, not a field of the record
    return record


def test_legacy_classification_record_loads():
    stored = _legacy("kd")
    result = RunResult.from_dict(stored)
    assert result.key == stored["key"] == result.config.key
    assert result.test_accuracy == stored["test_accuracy"]
    assert result.energy.energy_kwh == pytest.approx(sum(c["energy_kwh"] for c in stored["energy"]["components"].values()))
    assert result.training_flops == stored["flops"]["training_flops"]
    assert result.tau["mode"] == "stochastic"


def test_legacy_dfkd_record_loads():
    stored = _legacy("dfkd")
    result = RunResult.from_dict(stored)
    assert result.key == stored["key"] == result.config.key
    assert result.test_accuracy == stored["test_accuracy"]
    assert result.extras["teacher_test_accuracy"] == stored["teacher_test_accuracy"]
    assert result.flops_of("synthesis") == stored["flops"]["synthesis_flops"]
    assert result.extras["pool"] == stored["pool"]
    assert result.energy_of("synthesis").energy_kwh == pytest.approx(stored["energy_synthesis"]["energy_kwh"])
    assert result.energy_of("synthesis").energy_kwh + result.energy_of("training").energy_kwh == pytest.approx(
        result.energy.energy_kwh
    )


def test_legacy_detection_record_loads():
    stored = _legacy("detection")
    result = RunResult.from_dict(stored)
    assert result.key == stored["key"] == result.config.key
    assert result.test_accuracy == result.extras["test_map_pct"] == stored["test_map_pct"]
    assert result.extras["test_metrics"] == stored["test_metrics"]
    assert result.val_accuracy == stored["val_map_pct"]
    assert result.training_flops == stored["flops"]["training_flops"]


def test_legacy_qat_record_loads():
    stored = _legacy("qat")
    result = RunResult.from_dict(stored)
    assert result.key == stored["key"] == result.config.key
    assert result.test_accuracy == stored["test_accuracy"]
    assert result.extras["fake_quant_test_accuracy"] == stored["fake_quant_test_accuracy"]
    assert result.extras["model_size"]["int8_bytes"] == stored["model_size"]["int8_bytes"]


@pytest.mark.parametrize("kind", ["kd", "dfkd", "detection", "qat"])
def test_legacy_records_load_through_the_store_without_training(kind, tmp_path, monkeypatch):
    """An earlier version's result.json, sealed in a store, is found by the lifecycle and never retrained."""
    stored = _legacy(kind)
    config = task_for_config_dict(stored["config"]).config_type.from_dict(stored["config"])
    assert config.key == stored["key"]
    store = RunStore(tmp_path)
    store.get_or_run(config, lambda run_dir: (store.save_model(run_dir, {}), dict(stored))[1])
    monkeypatch.setattr(lifecycle, "_live", lambda *args: pytest.fail("a stored run was trained again"))
    result = lifecycle.train(config, store, "cpu", progress=False)
    assert result.key == stored["key"] and result.config == config
    assert result.test_accuracy == stored.get("test_accuracy", stored.get("test_map_pct"))
    assert result.training_flops == stored["flops"]["training_flops"]
