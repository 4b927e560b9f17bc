"""Which settings each notebook reads, and where each of its knobs goes.

Every notebook is set up by one function (:func:`greenkd_utils.paper.experiments.setup`), which reads its
knobs here, the same way for all of them:

1. every value is parsed by :mod:`greenkd_utils.settings.knobs` (``seeds="0,1"`` is ``[0, 1]``; a bad value
   is refused, naming the knob);
2. a knob the notebook's family does not take is refused by name, with the knobs it takes;
3. each knob goes where it belongs: the classification profile (``configs/<profile>.yaml``: its teachers,
   schedules and energy constants), the settings of the notebook's family (detection, data-free KD, the
   extra tables, beyond the paper), or only the notebook: where it writes (``output_dir``), who trains its
   runs (``executor``, ``ray_address``) and what it shows (``loss``, ``seed``, ...).

The profile is always read: its device and energy constants serve every notebook of the profile, so they all
write to one run store and report CO2 alike.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

from greenkd_utils.settings import knobs
from greenkd_utils.settings.beyond import BEYOND_KNOBS, load_beyond_settings
from greenkd_utils.settings.data_free import DFKD_KNOBS, load_dfkd_settings
from greenkd_utils.settings.detection import DETECTION_KNOBS, load_detection_profile
from greenkd_utils.settings.extra_tables import SETTING_NAMES as EXTRA_TABLE_SETTINGS
from greenkd_utils.settings.extra_tables import load_settings, profile_overrides
from greenkd_utils.settings.profiles import Profile, load_profile, overridable_knobs

log = logging.getLogger(__name__)

# Where a notebook keeps its runs and finds its data; every notebook takes them.
PLACE_KNOBS = ("results_dir", "data_root")
# Where a notebook writes and who trains its runs; every notebook takes them, no setting reads them.
OUTPUT_KNOBS = ("output_dir", "executor", "ray_address")
# What the classification notebooks show of their runs; no setting reads them.
SHOWN_KNOBS = ("loss", "seed", "margin_pct", "min_inference_s", "inference_batch_size", "example_class",
               "gradcam_images", "gradcam_target")
# Profile knobs that a notebook with settings of its own passes to the profile: its teachers, their data and
# the energy constants (the students' schedule is the family's).
TEACHER_KNOBS = ("device", "teacher_epochs", "pue", "carbon_intensity_g_per_kwh", "train_subset", "test_subset",
                 "temperature_mode", "logit_standardization")


@dataclass(frozen=True)
class Family:
    """How the notebooks of one kind read their knobs: which go to the profile, which to the family's own
    settings (``read`` builds those), which only to the notebook."""

    profile_knobs: Tuple[str, ...]
    own_knobs: Tuple[str, ...]
    read: Callable[[Profile, str, Dict[str, Any]], Tuple[Any, Any]]  # (profile, notebook, own) -> (profile, settings)
    shown_knobs: Tuple[str, ...] = ()

    def accepted(self) -> Tuple[str, ...]:
        return tuple(sorted({"profile", *PLACE_KNOBS, *OUTPUT_KNOBS, *self.profile_knobs, *self.own_knobs,
                             *self.shown_knobs}))


def _classification(profile: Profile, notebook: str, own: Dict[str, Any]) -> Tuple[Any, Any]:
    return profile, None


def _detection(profile: Profile, notebook: str, own: Dict[str, Any]) -> Tuple[Any, Any]:
    detection = load_detection_profile(profile.name, **own)
    return dataclasses.replace(detection, pue=profile.pue,
                               carbon_intensity_g_per_kwh=profile.carbon_intensity_g_per_kwh), None


def _data_free(profile: Profile, notebook: str, own: Dict[str, Any]) -> Tuple[Any, Any]:
    return profile, load_dfkd_settings(profile.name, **own)


def _extra_table(profile: Profile, notebook: str, own: Dict[str, Any]) -> Tuple[Any, Any]:
    own = dict(own)
    datasets = own.pop("datasets", None)
    if datasets:  # these notebooks show one data set
        own["dataset"] = datasets[0]
        if len(datasets) > 1:
            log.info("%s shows one dataset: %s (of %s)", notebook, datasets[0], ", ".join(datasets))
    return profile, load_settings(profile, notebook, **own)


def _beyond(profile: Profile, notebook: str, own: Dict[str, Any]) -> Tuple[Any, Any]:
    return profile, load_beyond_settings(profile, **own)


FAMILIES: Dict[str, Family] = {
    "classification": Family(tuple(overridable_knobs()), (), _classification, SHOWN_KNOBS),
    "detection": Family(("device", "pue", "carbon_intensity_g_per_kwh"), DETECTION_KNOBS, _detection),
    "data_free": Family(TEACHER_KNOBS, DFKD_KNOBS, _data_free),
    "extra_tables": Family(TEACHER_KNOBS, ("datasets",) + tuple(n for n in EXTRA_TABLE_SETTINGS if n != "dataset"),
                           _extra_table),
    # The students of beyond the paper are those of Tables 1 and 4: their schedule and models are the profile's.
    "beyond": Family(("device", "epochs", "teacher_epochs", "tau_grid", "teacher_model", "student_model", "pue",
                      "carbon_intensity_g_per_kwh"), BEYOND_KNOBS, _beyond),
}

NOTEBOOK_FAMILIES: Dict[str, str] = {
    "00_start_here": "classification",
    "beyond_temperature_strategies": "beyond",
    # Reads whatever the store holds; its knobs are those of the notebooks whose command line it shares.
    "explore_runs": "classification",
    "figure1_carbon_curves": "classification",
    "figure3_temperature_and_batch": "extra_tables",
    "figure4_logits_gradcam_confusion": "classification",
    "table1_carbon_footprint": "classification",
    "table4_detection": "detection",
    "table4_kd_losses": "classification",
    "table5_metrics": "classification",
    "table6_dfkd": "data_free",
    "table7_teacher_student_pairs": "extra_tables",
    "table8_quantization": "extra_tables",
}


def family_of(notebook: Optional[str]) -> str:
    """The family of ``notebook``; a set-up for no notebook in particular is a classification one."""
    if notebook is None:
        return "classification"
    if notebook not in NOTEBOOK_FAMILIES:
        raise ValueError(f"unknown notebook {notebook!r}; valid: {', '.join(sorted(NOTEBOOK_FAMILIES))}")
    return NOTEBOOK_FAMILIES[notebook]


@dataclass(frozen=True)
class NotebookSetup:
    """What a notebook's knobs chose: the profile its experiment binds (the classification profile, or the
    detection profile with the classification profile's energy constants), the family's own settings (None
    for classification and detection), the device, where runs and data live, and every knob, parsed."""

    notebook: Optional[str]
    family: str
    profile: Any
    settings: Any
    device: str
    results_dir: Optional[str]
    data_root: Optional[str]
    knobs: Dict[str, Any]


def read_knobs(notebook: Optional[str], profile: str, **given) -> NotebookSetup:
    """Parse ``given`` (None: the profile's or the file's value), refuse a knob ``notebook``'s family does not
    take, and read the profile and the family's settings with the knobs that belong to each."""
    family_name = family_of(notebook)
    family = FAMILIES[family_name]
    values = knobs.coerce({"profile": profile, **given})
    unknown = sorted(set(values) - set(family.accepted()))
    if unknown:
        raise ValueError(f"unknown knob(s) {', '.join(unknown)} for {notebook or 'a classification experiment'}; "
                         f"valid: {', '.join(family.accepted())}")
    name = values["profile"]
    chosen = {k: values[k] for k in family.profile_knobs if values.get(k) is not None}
    defaults = profile_overrides(name, notebook) if family_name == "extra_tables" else {}
    base = load_profile(name, **{**defaults, **chosen})
    own = {k: values[k] for k in family.own_knobs if k in values}
    bound, settings = family.read(base, notebook, own)
    return NotebookSetup(notebook, family_name, bound, settings, base.device, values.get("results_dir"),
                         values.get("data_root"), values)
