"""The settings of the notebook ``beyond_temperature_strategies`` per profile (``configs/beyond.yaml``).

Every strategy distils the profile's teacher into its student with HKD on one data set; the full-grid tuned
and the per-batch stochastic rows are the very runs Tables 1 and 4 train, so only the data set and the seeds
here differ from those tables, plus the few settings of the strategies beyond the paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

from greenkd_utils.runs.successive_halving import HalvingSettings
from greenkd_utils.settings.loader import load_section
from greenkd_utils.settings.profiles import Profile

NOTEBOOK = "beyond_temperature_strategies"
STRATEGIES = (
    "tuned_grid",
    "tuned_successive_halving",
    "stochastic_per_batch",
    "stochastic_per_sample",
    "ctkd",
    "logit_standardization",
    "logit_standardization_stochastic",
)


@dataclass(frozen=True)
class BeyondSettings:
    """What the notebook trains at a profile (``configs/beyond.yaml``), with the notebook's overrides."""

    dataset: str  # one: the table has no data-set column
    seeds: Tuple[int, ...]
    tau_grid: Tuple[float, ...]  # the profile's: the grid and successive-halving rows search the same taus
    ls_base_tau: float = 2.0  # the fixed tau of the logit-standardization row (the z-scored logits' scale)
    halving_min_epochs: int = 1
    halving_reduction_factor: int = 3
    ctkd_curriculum_epochs: int = 10  # epochs over which CTKD's adversarial weight rises from 0 to 1
    strategies: Tuple[str, ...] = STRATEGIES

    def __post_init__(self):
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown:
            raise ValueError(f"unknown strateg{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))}; "
                             f"valid: {', '.join(STRATEGIES)}")
        if not self.seeds:
            raise ValueError(f"{NOTEBOOK} needs at least one seed")
        if not self.tau_grid:
            raise ValueError(f"{NOTEBOOK} needs a tau grid with at least one value")
        if not self.ls_base_tau > 0:
            raise ValueError(f"ls_base_tau must be > 0; got {self.ls_base_tau}")

    @property
    def halving(self) -> HalvingSettings:
        return HalvingSettings(self.halving_min_epochs, self.halving_reduction_factor)

    def describe(self) -> str:
        return (f"{self.dataset}, seeds {list(self.seeds)}, tau grid {[float(t) for t in self.tau_grid]}, "
                f"logit standardization base tau {self.ls_base_tau:g}, successive halving from "
                f"{self.halving_min_epochs} epoch(s) by a factor {self.halving_reduction_factor}, CTKD curriculum "
                f"{self.ctkd_curriculum_epochs} epochs")


# What configs/beyond.yaml may set, per profile.
SETTING_NAMES = ("dataset", "seeds", "ls_base_tau", "halving_min_epochs", "halving_reduction_factor",
                 "ctkd_curriculum_epochs")
# What a caller may override: the file's settings (the data set through ``datasets``) and the strategies shown.
BEYOND_KNOBS = ("datasets", "seeds", "ls_base_tau", "halving_min_epochs", "halving_reduction_factor",
                "ctkd_curriculum_epochs", "strategies")


def load_beyond_settings(profile: Profile, **overrides) -> BeyondSettings:
    """The notebook's settings at ``profile`` (its tau grid is the profile's) with ``overrides``
    (:data:`BEYOND_KNOBS`; None keeps the file's value, an unknown name raises).

    ``datasets`` names one data set (the table has no data-set column).
    """
    raw, overrides = load_section(profile.name, overrides, BEYOND_KNOBS, "setting", family="beyond")
    unknown = sorted(set(raw) - set(SETTING_NAMES))
    if unknown:
        raise ValueError(f"configs/beyond.yaml [{profile.name}] has unknown setting(s) {', '.join(unknown)}; "
                         f"valid: {', '.join(SETTING_NAMES)}")
    datasets = overrides.pop("datasets", None)
    if datasets is not None:
        if len(datasets) != 1:
            raise ValueError(f"{NOTEBOOK} compares strategies on one data set; got datasets={datasets}")
        raw["dataset"] = datasets[0]
    strategies = overrides.pop("strategies", None)
    raw.update(overrides)
    return BeyondSettings(
        dataset=str(raw.get("dataset") or profile.datasets[0]),
        seeds=tuple(int(s) for s in (raw.get("seeds") or profile.seeds)),
        tau_grid=tuple(float(t) for t in profile.tau_grid),
        ls_base_tau=float(raw.get("ls_base_tau", 2.0)),
        halving_min_epochs=int(raw.get("halving_min_epochs", 1)),
        halving_reduction_factor=int(raw.get("halving_reduction_factor", 3)),
        ctkd_curriculum_epochs=int(raw.get("ctkd_curriculum_epochs", 10)),
        strategies=tuple(strategies) if strategies is not None else STRATEGIES,
    )
