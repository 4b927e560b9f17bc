"""The one way a settings file becomes settings: every YAML in ``greenkd_utils/configs/`` (a profile, or the
settings of a notebook family: data-free KD, detection, the extra tables, beyond the paper) is read here, with
the same rules for every notebook's overrides:

- the profile must be one of :data:`~greenkd_utils.settings.knobs.PROFILES`, and every override name one the
  caller accepts, else a ValueError names the bad value and the valid choices;
- values are parsed by :mod:`greenkd_utils.settings.knobs` (``seeds="0,1"`` is ``(0, 1)``, a bad value is an
  error naming the knob), and an override left at None keeps the file's value;
- the knobs every notebook shares mean the same everywhere: ``epochs`` and ``lr`` are the students',
  ``teacher_epochs`` the teachers', ``carbon_intensity_g_per_kwh`` and ``pue`` the energy constants.
"""

from __future__ import annotations

import copy
from importlib import resources
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import yaml

from greenkd_utils.settings import knobs
from greenkd_utils.settings.knobs import PROFILES


def read_config(name: str) -> Dict[str, Any]:
    """The packaged ``greenkd_utils/configs/<name>.yaml`` (a profile, or a notebook family's settings)."""
    text = resources.files("greenkd_utils").joinpath("configs", f"{name}.yaml").read_text()
    return yaml.safe_load(text) or {}


def load_section(profile: str, overrides: Mapping[str, Any], valid: Sequence[str], what: str,
                 family: Optional[str] = None) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``(section, overrides)``: a private copy of ``profile``'s settings (``configs/<profile>.yaml``, or the
    ``profile`` section of ``configs/<family>.yaml``) and the parsed overrides that are not None."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; valid: {', '.join(PROFILES)}")
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(f"unknown {what}(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    parsed = {k: v for k, v in knobs.coerce(dict(overrides)).items() if v is not None}
    section = read_config(profile) if family is None else (read_config(family).get(profile) or {})
    return copy.deepcopy(section), parsed


def apply_overrides(section: Dict[str, Any], overrides: Mapping[str, Any],
                    nested: Mapping[str, Tuple[str, str]] = ()) -> Dict[str, Any]:
    """``section`` with ``overrides`` set: a knob in ``nested`` goes to ``section[outer][inner]`` (``epochs`` ->
    ``student_train.epochs``), any other to ``section[knob]``."""
    nested = dict(nested)
    for knob, value in overrides.items():
        if knob in nested:
            outer, inner = nested[knob]
            # A copy, not an update: YAML anchors may make two sections the same dict.
            section[outer] = {**section.get(outer, {}), inner: value}
        else:
            section[knob] = value
    return section


# The student/teacher schedule knobs of every profile-like section (classification and detection profiles).
SCHEDULE_KNOBS = {
    "epochs": ("student_train", "epochs"),
    "lr": ("student_train", "lr"),
    "teacher_epochs": ("teacher_train", "epochs"),
}
