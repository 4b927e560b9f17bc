"""Temperature strategies beyond the paper, side by side: what each one costs and what it buys.

The notebook ``beyond_temperature_strategies`` distils the profile's teacher into its student with HKD, on one
data set and several seeds, with each of these strategies (:data:`STRATEGIES`):

- ``tuned_grid``: one full fixed-tau run per grid value, tau chosen on validation (the paper's baseline;
  the runs of Tables 1 and 4);
- ``tuned_successive_halving``: the same grid searched by successive halving (:mod:`.successive_halving`);
- ``stochastic_per_batch``: tau ~ U[2, 20] per batch (the paper's method; the runs of Tables 1 and 4);
- ``stochastic_per_sample``: tau ~ U[2, 20] per sample;
- ``ctkd``: CTKD's learned global temperature (Li et al., AAAI 2023);
- ``logit_standardization``: z-scored logits at a fixed base tau (Sun et al., CVPR 2024);
- ``logit_standardization_stochastic``: z-scored logits with tau ~ U[2, 20] per batch.

One table row per strategy: test accuracy as the mean over seeds with a 95% t interval of that mean; energy,
CO2 and FLOPs per seed (mean over seeds) of everything the strategy trained, so a tuned row pays for its
whole grid or its whole halving. ``runs_trained`` is the number of training runs it needed per seed (a
successive-halving trial counts as one run, however early it stopped; its energy says how much it ran).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from scipy import stats

from greenkd_utils.analysis import plotting
from greenkd_utils.core.config import RunConfig, TemperatureSpec
from greenkd_utils.paper.experiments import hardware_of
from greenkd_utils.runs.plan import PlannedSearch
from greenkd_utils.runs.record import RunResult
from greenkd_utils.runs.successive_halving import HalvingResult, successive_halving_sweep
from greenkd_utils.runs.sweep import TunedResult
from greenkd_utils.settings.beyond import NOTEBOOK, STRATEGIES, BeyondSettings

LOSS = "hkd"
STRATEGY_LABELS = {
    "tuned_grid": "tuned tau, full grid",
    "tuned_successive_halving": "tuned tau, successive halving",
    "stochastic_per_batch": "stochastic tau per batch (the paper's)",
    "stochastic_per_sample": "stochastic tau per sample",
    "ctkd": "CTKD (learned global tau)",
    "logit_standardization": "logit standardization, fixed base tau",
    "logit_standardization_stochastic": "logit standardization, stochastic tau",
}
COLUMNS = (
    "strategy", "loss", "n_seeds", "accuracy_mean_pct", "ci_low_pct", "ci_high_pct", "energy_kwh",
    "energy_source", "co2_g", "training_gflops_millions", "flops_ratio_to_grid", "runs_trained", "hardware",
)
CONFIDENCE = 0.95


# ---------------------------------------------------------------------------------------------
# The runs of each strategy
# ---------------------------------------------------------------------------------------------
def kd_config(exp, settings: BeyondSettings, seed: int, temperature: TemperatureSpec,
              logit_standardization: bool = False) -> RunConfig:
    """An HKD config of the profile; ``Profile.kd_config``'s, so that shared runs keep the tables' keys."""
    config = exp.profile.kd_config(settings.dataset, seed, LOSS, temperature)
    return config.replace(logit_standardization=True) if logit_standardization else config


def run_strategy(exp, settings: BeyondSettings, strategy: str, seed: int) -> RunResult | TunedResult:
    """The (cached or freshly trained) result of ``strategy`` for one seed."""
    if strategy == "tuned_grid":
        return exp.tuned(settings.dataset, seed, LOSS, taus=settings.tau_grid)
    if strategy == "tuned_successive_halving":
        # The base of Experiment.tuned: the trials' full-length runs are the grid's runs.
        return successive_halving_sweep(exp.tuned_base(settings.dataset, seed, LOSS), settings.tau_grid, exp.store,
                                        exp.device, exp.data_root, exp.progress, settings.halving)
    return exp.run(strategy_config(exp, settings, strategy, seed))


def strategy_config(exp, settings: BeyondSettings, strategy: str, seed: int) -> RunConfig:
    """The one run of a single-run strategy (every strategy but the two tau searches)."""
    prof = exp.profile
    if strategy == "stochastic_per_batch":
        return exp.stochastic_config(settings.dataset, seed, LOSS)
    if strategy == "stochastic_per_sample":
        return kd_config(exp, settings, seed, TemperatureSpec.stochastic_per_sample(*prof.tau_range))
    if strategy == "ctkd":
        return kd_config(exp, settings, seed, TemperatureSpec.ctkd(curriculum_epochs=settings.ctkd_curriculum_epochs))
    if strategy == "logit_standardization":
        return kd_config(exp, settings, seed, TemperatureSpec.fixed(settings.ls_base_tau), True)
    if strategy == "logit_standardization_stochastic":
        return kd_config(exp, settings, seed, prof.stochastic(), True)
    raise ValueError(f"unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")


def needed_runs(exp, settings: BeyondSettings, plan) -> None:
    """Add the notebook's runs to ``plan``: every strategy's, except the rungs successive halving decides
    as it goes (noted as adaptive)."""
    for strategy in settings.strategies:
        for seed in settings.seeds:
            if strategy == "tuned_grid":
                plan.add_all(exp.tuned_configs(settings.dataset, seed, LOSS, taus=settings.tau_grid), NOTEBOOK)
            elif strategy == "tuned_successive_halving":
                plan.note_adaptive(f"{NOTEBOOK}: successive halving's truncated rungs ({settings.dataset}, seeds "
                                   f"{list(settings.seeds)}) depend on earlier rungs' results; the notebook trains them")
                grid = exp.tuned_configs(settings.dataset, seed, LOSS, taus=settings.tau_grid)
                plan.add_search(PlannedSearch(NOTEBOOK, f"successive halving, {settings.dataset} seed {seed}",
                                              grid, settings.halving))
            else:
                plan.add(strategy_config(exp, settings, strategy, seed), NOTEBOOK)


def runs_trained(result: RunResult | TunedResult) -> int:
    """Training runs a strategy needed for one seed: one per trial of a search, one for a single run."""
    if isinstance(result, HalvingResult):
        return result.n_trials
    if isinstance(result, TunedResult):
        return len(result.runs)
    return 1


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Tuple[float, float, float]:
    """Mean and the two-sided t interval of the mean; NaN bounds for a single value (no spread to estimate)."""
    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    sem = float(stats.sem(values))
    if sem == 0.0:
        return mean, mean, mean
    low, high = stats.t.interval(confidence, len(values) - 1, loc=mean, scale=sem)
    return mean, float(low), float(high)


def flops_ratios_to_grid(results: Dict[str, List[RunResult | TunedResult]]) -> Dict[str, List[float]]:
    """Per strategy and seed: its training FLOPs over the full grid's for the same seed (NaN without a grid)."""
    grid = results.get("tuned_grid")
    return {s: [r.training_flops / g.training_flops if grid else float("nan")
                for r, g in zip(per_seed, grid or per_seed)] for s, per_seed in results.items()}


def strategy_results(exp, settings: BeyondSettings) -> Dict[str, List[RunResult | TunedResult]]:
    """Every strategy's result for every seed, strategy by strategy."""
    return {s: [run_strategy(exp, settings, s, seed) for seed in settings.seeds] for s in settings.strategies}


def summary_table(exp, settings: BeyondSettings,
                  results: Optional[Dict[str, List[RunResult | TunedResult]]] = None) -> pd.DataFrame:
    """One row per strategy, with exactly the :data:`COLUMNS`."""
    results = results if results is not None else strategy_results(exp, settings)
    ratios = flops_ratios_to_grid(results)
    rows = []
    for strategy, per_seed in results.items():
        accuracy, low, high = mean_interval([r.test_accuracy for r in per_seed])
        energies = [exp.energy(r.energy) for r in per_seed]
        rows.append({
            "strategy": strategy,
            "loss": LOSS,
            "n_seeds": len(per_seed),
            "accuracy_mean_pct": accuracy,
            "ci_low_pct": low,
            "ci_high_pct": high,
            "energy_kwh": float(np.mean([e.energy_kwh for e in energies])),
            "energy_source": "/".join(sorted({e.source for e in energies})),
            "co2_g": float(np.mean([e.co2_g for e in energies])),
            "training_gflops_millions": float(np.mean([r.training_gflops_millions for r in per_seed])),
            "flops_ratio_to_grid": float(np.mean(ratios[strategy])),  # the mean of the per-seed ratios
            "runs_trained": float(np.mean([runs_trained(r) for r in per_seed])),
            "hardware": hardware_of(per_seed),
        })
    return pd.DataFrame(rows, columns=list(COLUMNS))


def per_seed_table(exp, settings: BeyondSettings,
                   results: Dict[str, List[RunResult | TunedResult]]) -> pd.DataFrame:
    """One row per strategy and seed: accuracies, the tau a search chose, and the epochs each one trained."""
    ratios = flops_ratios_to_grid(results)
    rows = []
    for strategy, per_seed in results.items():
        for seed, r, ratio in zip(settings.seeds, per_seed, ratios[strategy]):
            searched = isinstance(r, TunedResult)
            rows.append({
                "strategy": strategy,
                "seed": seed,
                "test_accuracy_pct": r.test_accuracy,
                "val_accuracy_pct": r.val_accuracy,
                "chosen_tau": r.chosen_tau if searched else np.nan,
                "epochs_trained": r.epochs_trained if searched else len(r.history),
                "runs_trained": runs_trained(r),
                "taus_stopped_early": len(r.pruned_taus) if isinstance(r, HalvingResult) else 0,
                "energy_kwh": exp.energy(r.energy).energy_kwh,
                "training_gflops_millions": r.training_gflops_millions,
                "flops_ratio_to_grid": ratio,
                "teacher_passes": r.teacher_passes if isinstance(r, HalvingResult) else np.nan,
            })
    return pd.DataFrame(rows)


def smart_baseline_vs_stochastic(results: Dict[str, List[RunResult | TunedResult]], exp=None,
                                 baseline: str = "tuned_successive_halving",
                                 method: str = "stochastic_per_batch") -> pd.DataFrame:
    """The smart tuned baseline against the paper's stochastic tau, seed by seed (paired): the accuracy
    difference (baseline - method, points) and the energy and FLOP ratios (baseline / method), each as the
    mean over seeds with its 95% t interval."""
    if baseline not in results or method not in results:
        return pd.DataFrame()
    pairs = list(zip(results[baseline], results[method]))
    energy = (lambda r: exp.energy(r.energy).energy_kwh) if exp is not None else (lambda r: r.energy.energy_kwh)
    rows = []
    for quantity, values in (
        ("accuracy_difference_pct", [b.test_accuracy - m.test_accuracy for b, m in pairs]),
        ("energy_ratio", [energy(b) / energy(m) for b, m in pairs]),
        ("flops_ratio", [b.training_flops / m.training_flops for b, m in pairs]),
    ):
        mean, low, high = mean_interval(values)
        rows.append({"baseline": baseline, "method": method, "quantity": quantity, "n_seeds": len(pairs),
                     "mean": mean, "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows)


def describe_comparison(comparison: pd.DataFrame) -> str:
    """One sentence per quantity of :func:`smart_baseline_vs_stochastic`, intervals included."""
    if comparison.empty:
        return "successive halving or the per-batch stochastic tau is not among the strategies shown"
    rows = comparison.set_index("quantity")
    n = int(rows["n_seeds"].iloc[0])
    acc, energy, flops = rows.loc["accuracy_difference_pct"], rows.loc["energy_ratio"], rows.loc["flops_ratio"]
    return (f"successive halving minus stochastic tau: {acc['mean']:+.2f} points of test accuracy "
            f"(95% CI {acc['ci_low']:+.2f} to {acc['ci_high']:+.2f}, {n} seeds, paired); it costs "
            f"{energy['mean']:.1f}x the energy (95% CI {energy['ci_low']:.1f}-{energy['ci_high']:.1f}x) and "
            f"{flops['mean']:.1f}x the training FLOPs (95% CI {flops['ci_low']:.1f}-{flops['ci_high']:.1f}x)")


# ---------------------------------------------------------------------------------------------
# The figure
# ---------------------------------------------------------------------------------------------
def pareto_front(table: pd.DataFrame, cost: str = "energy_kwh", value: str = "accuracy_mean_pct") -> pd.Series:
    """True for the rows no other row beats: none costs at most as much and is at least as accurate, and
    strictly better in one of the two."""
    c, v = table[cost].to_numpy(float), table[value].to_numpy(float)
    dominated = [
        bool(np.any((c <= c[i]) & (v >= v[i]) & ((c < c[i]) | (v > v[i])))) for i in range(len(table))
    ]
    return pd.Series([not d for d in dominated], index=table.index)


def strategy_color(strategy: str) -> str:
    """Tables 1 and 4's colours for the rows they share, distinct colour-blind-safe hues for the others."""
    shared = {"tuned_grid": "kd_tuned", "stochastic_per_batch": "kd_stochastic"}
    if strategy in shared:
        return plotting.method_color(shared[strategy])
    palette = sns.color_palette("colorblind", 10).as_hex()
    own = {"tuned_successive_halving": 4, "stochastic_per_sample": 7, "ctkd": 6, "logit_standardization": 9,
           "logit_standardization_stochastic": 0}
    return palette[own.get(strategy, 5)]


def plot_accuracy_vs_energy(table: pd.DataFrame, title: str, comparison: Optional[pd.DataFrame] = None):
    """Test accuracy (95% interval of the mean as error bars) against energy per seed (log scale), with the
    Pareto front (the strategies nothing else beats on both) joined and ringed, and under it the paired
    comparison of successive halving with the stochastic tau (:func:`smart_baseline_vs_stochastic`)."""
    plotting.use_style()
    fig, ax = plt.subplots(figsize=(8, 5))
    front = pareto_front(table)
    for row in table.itertuples(index=False):
        low, high = row.ci_low_pct, row.ci_high_pct
        yerr = None if np.isnan(low) else [[row.accuracy_mean_pct - low], [high - row.accuracy_mean_pct]]
        marker = "s" if row.strategy.startswith("tuned") else "o"  # squares pay for a search, circles for one run
        ax.errorbar(row.energy_kwh, row.accuracy_mean_pct, yerr=yerr, marker=marker, ms=7, capsize=3, ls="none",
                    color=strategy_color(row.strategy), label=STRATEGY_LABELS.get(row.strategy, row.strategy))
    on_front = table[front].sort_values("energy_kwh")
    ax.plot(on_front["energy_kwh"], on_front["accuracy_mean_pct"], color="black", lw=1, ls="--", zorder=0,
            label="Pareto front")
    ax.scatter(on_front["energy_kwh"], on_front["accuracy_mean_pct"], s=220, facecolors="none",
               edgecolors="black", linewidths=1.2, zorder=3)
    ax.set_xscale("log")
    lows = table["ci_low_pct"].fillna(table["accuracy_mean_pct"])
    highs = table["ci_high_pct"].fillna(table["accuracy_mean_pct"])
    ax.set_ylim(max(0.0, float(lows.min()) - 3), min(100.0, float(highs.max()) + 3))
    source = "/".join(plotting.energy_sources(table))
    ax.set(xlabel=f"energy per seed (kWh, device, before PUE; {source})",
           ylabel=f"test accuracy (%), mean and {CONFIDENCE:.0%} interval", title=title)
    ax.legend(fontsize=8, loc="best")
    if comparison is not None and not comparison.empty:
        fig.text(0.01, 0.005, describe_comparison(comparison), fontsize=7, wrap=True, va="bottom")
        fig.tight_layout(rect=(0, 0.07, 1, 1))
    else:
        fig.tight_layout()
    return fig


def table_note(exp, settings: BeyondSettings, table: pd.DataFrame) -> str:
    return (
        f"Profile {exp.profile.name}: {exp.profile.teacher_model} -> {exp.profile.student_model}, HKD, "
        f"{settings.describe()}. Accuracy: mean over {len(settings.seeds)} seed(s) and the {CONFIDENCE:.0%} t "
        f"interval of the mean. Energy, CO2 and GFLOPs (M) per seed of everything the strategy trained (a search "
        f"pays for all its runs, cached or not). Energy source: {', '.join(sorted(set(table['energy_source'])))}. "
        f"{exp.constants_note()}."
    )
