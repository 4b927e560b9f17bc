"""Table 4 (classification): HKD, CMC and DML, each with a tuned tau (grid) and with the stochastic tau."""

from __future__ import annotations

from typing import Iterable, Optional

import pandas as pd

from greenkd_utils.paper.experiments import Experiment, check_losses, summarise


def table4(exp: Experiment, losses: Optional[Iterable[str]] = None) -> pd.DataFrame:
    """Table 4: HKD, CMC and DML, each tuned (grid) vs stochastic, per dataset."""
    check_losses(exp, losses or exp.profile.losses)
    rows = []
    for dataset in exp.profile.datasets:
        for loss in losses or exp.profile.losses:
            for method in ("kd_tuned", "kd_stochastic"):
                results = [
                    exp.tuned(dataset, s, loss) if method == "kd_tuned" else exp.stochastic(dataset, s, loss)
                    for s in exp.profile.seeds
                ]
                rows.append(summarise(exp, results, dataset=dataset, loss=loss, method=method))
    return pd.DataFrame(rows)


def needed_runs(exp: Experiment, plan, losses: Optional[Iterable[str]] = None) -> None:
    """Add the runs of :func:`table4` (its verdicts and loss-scale study use the same runs) to ``plan``."""
    losses = list(losses or exp.profile.losses)
    check_losses(exp, losses)
    for dataset in exp.profile.datasets:
        for loss in losses:
            for seed in exp.profile.seeds:
                for method in ("kd_tuned", "kd_stochastic"):
                    plan.add_all(exp.method_configs(method, dataset, seed, loss), "table4_kd_losses")
