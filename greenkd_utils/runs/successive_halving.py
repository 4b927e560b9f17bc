"""A cheaper tuned baseline: successive halving over the tau grid instead of training every grid value in full.

Each grid value is one Optuna trial (a ``GridSampler`` over the taus): a fixed-tau KD run trained epoch by
epoch that reports its validation accuracy after every epoch to Optuna's ``SuccessiveHalvingPruner``. At
each rung (``min_epochs`` x ``reduction_factor``^k epochs) a trial goes on only if its validation accuracy is
in the top 1/``reduction_factor`` of the trials that reached that rung so far; otherwise it stops there.
The winner is chosen on validation among the trials that ran to full length, as in the grid
(:func:`~greenkd_utils.runs.sweep.choose_on_validation`), and its accuracy is that run's test accuracy.

No work twice. Training up to rung k < the full length is a run of its own, the *truncated* config
(:func:`truncated`: the full run's schedule, milestones and warm-up included, with ``epochs`` = k): its own key
in the run store, numerically the first k epochs of the full run. A truncated run keeps its final training
state (:data:`RESUME_STATE_FILE`), and the next rung starts from it, as an interrupted run resumes from its
checkpoint: the same weights, optimiser state, lr schedule, random generator and cached teacher outputs. A
trial that survives the last truncated rung continues the same way into the full-length config, through the
ordinary lifecycle: that run, cached and resumable like any, is the number the trial reports. Its key is the
grid's run for that tau, so the two searches share it: the continuation gives the same weights and accuracy as
a run trained from its first epoch, and whichever search comes first trains it.

What the teacher costs. Without augmentation the teacher's outputs on the training images never change; a
run computes them once, keeps them with its checkpoint, and every later rung of the trial (and its
continuation) reuses them, so a trial pays one teacher pass. With augmentation every step forwards the teacher
on its own batch; nothing is reused, and each rung pays for the steps it trains.

The bill. A trial costs what its furthest run's record says: that record covers every epoch before it (and
its one teacher pass), whether it continued the earlier rungs or was trained from its first epoch by the
grid. The earlier rungs of a trial are therefore never billed beside it, and the search costs the same
whichever order the notebooks ran in. :func:`expected_search` projects that cost before any training.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from greenkd_utils.core.config import RunConfig, TemperatureSpec
from greenkd_utils.runs.lifecycle import train as train_run
from greenkd_utils.runs.record import RunResult
from greenkd_utils.runs.store import CHECKPOINT_FILE, RunStore, atomic_write_bytes
from greenkd_utils.runs.sweep import TunedResult, check_tau_search, choose_on_validation

log = logging.getLogger(__name__)

# A truncated run's last checkpoint, kept after it finishes so that the next rung can continue from it.
RESUME_STATE_FILE = "resume_state.pt"

# History entries that only the training that produced a record can have written.
_TRAINING_FINGERPRINT = ("epoch", "samples_seen", "energy_kwh", "wall_time_s")


@dataclass(frozen=True)
class HalvingSettings:
    """Rungs at ``min_epochs`` x ``reduction_factor``^k epochs (below the run's length), then the full run."""

    min_epochs: int = 1  # the first rung: every trial trains at least this many epochs
    reduction_factor: int = 3  # rungs grow by this factor, and 1 in this many trials goes on at each
    seed: int = 0  # the order in which the grid sampler visits the taus

    def __post_init__(self):
        if int(self.min_epochs) < 1:
            raise ValueError(f"min_epochs must be >= 1; got {self.min_epochs}")
        if int(self.reduction_factor) < 2:
            raise ValueError(f"reduction_factor must be >= 2; got {self.reduction_factor}")
        object.__setattr__(self, "min_epochs", int(self.min_epochs))
        object.__setattr__(self, "reduction_factor", int(self.reduction_factor))

    def rungs(self, epochs: int) -> Tuple[int, ...]:
        """The epochs at which a trial is compared with the others, ending with the full ``epochs``."""
        out, rung = [], self.min_epochs
        while rung < epochs:
            out.append(rung)
            rung *= self.reduction_factor
        return tuple(out) + (int(epochs),)


def truncated(config: RunConfig, epochs: int) -> RunConfig:
    """The first ``epochs`` epochs of ``config``: the same schedule (warm-up, milestones) stopped early.

    The learning rate of a step depends on the step, the warm-up and the milestones, never on the run's
    length, so this run is numerically the first ``epochs`` epochs of ``config``; its key differs.
    """
    if not 1 <= epochs <= config.train.epochs:
        raise ValueError(f"a truncated run needs 1 <= epochs <= {config.train.epochs}; got {epochs}")
    return config.replace(train=dataclasses.replace(config.train, epochs=int(epochs)))


@dataclass
class HalvingTrial:
    """One grid value's trial: its runs, its validation accuracy per epoch, and where it stopped."""

    tau: float
    runs: List[RunResult] = field(default_factory=list)  # one per rung reached, in rung order
    val_accuracy_per_epoch: List[float] = field(default_factory=list)  # percent, one per epoch trained
    pruned: bool = False  # stopped by the pruner before the full length

    stopped_at_epoch = property(lambda self: len(self.val_accuracy_per_epoch))

    @property
    def billed_runs(self) -> List[RunResult]:
        """The run this trial pays for: its furthest, whose record covers every epoch before it."""
        return self.runs[-1:]


def continues(longer: RunResult, shorter: RunResult) -> bool:
    """Whether ``longer`` was trained on from ``shorter``'s final state: its first epochs are ``shorter``'s own
    records, measured times and energies included, which a run trained on its own cannot repeat."""
    n = len(shorter.history)
    if len(longer.history) < n:
        return False
    return all(
        all(a.get(k) == b.get(k) for k in _TRAINING_FINGERPRINT) for a, b in zip(longer.history[:n], shorter.history)
    )


@dataclass
class HalvingResult(TunedResult):
    """A :class:`TunedResult` whose ``runs`` are the run each trial pays for (its furthest, in trial order) and
    whose ``chosen`` is the full-length run of the tau chosen on validation."""

    trials: List[HalvingTrial] = field(default_factory=list)
    rungs: Tuple[int, ...] = ()
    settings: HalvingSettings = field(default_factory=HalvingSettings)

    grid = property(lambda self: [t.tau for t in self.trials])
    n_trials = property(lambda self: len(self.trials))
    pruned_taus = property(lambda self: [t.tau for t in self.trials if t.pruned])

    @property
    def all_runs(self) -> List[RunResult]:
        """Every run of every trial, in trial and rung order (``runs`` keeps each trial's furthest)."""
        return [run for t in self.trials for run in t.runs]

    @property
    def teacher_passes(self) -> int:
        """Passes of the teacher over the training set that the bill counts (one per trial without augmentation)."""
        return sum(int(r.flops.get("teacher_passes", 0)) for r in self.runs)


class _KeepFinalState(RunStore):
    """``root``'s run store, except that the run ``keep`` keeps its last checkpoint when it finishes."""

    def __init__(self, root: str | os.PathLike, keep: RunConfig):
        super().__init__(root)
        self._keep = keep.key

    def get_or_run(self, config, train):
        if config.key != self._keep:
            return super().get_or_run(config, train)

        def train_and_keep(run_dir: Path):
            record = train(run_dir)
            # The store deletes a finished run's checkpoint; the next rung starts from this one.
            checkpoint = Path(run_dir) / CHECKPOINT_FILE
            if checkpoint.is_file():
                os.replace(checkpoint, Path(run_dir) / RESUME_STATE_FILE)
            return record

        return super().get_or_run(config, train_and_keep)


def _continue_from(previous: Optional[RunConfig], config: RunConfig, store: RunStore) -> None:
    """Seed ``config``'s checkpoint with ``previous``'s final state, so that training resumes after it."""
    if previous is None or store.is_finished(config):
        return
    state = store.run_dir(previous) / RESUME_STATE_FILE
    if not state.is_file():
        return
    with store.lock(config):
        target = store.run_dir(config) / CHECKPOINT_FILE
        if store.is_finished(config) or target.exists():  # a run of its own, or an interrupted one: resume that
            return
        atomic_write_bytes(target, state.read_bytes())
        log.info("%s continues from the %d-epoch run", config.name, previous.train.epochs)


def _drop_resume_state(config: RunConfig, store: RunStore) -> None:
    (store.run_dir(config) / RESUME_STATE_FILE).unlink(missing_ok=True)


@contextlib.contextmanager
def _quiet_optuna(optuna) -> Iterator[None]:
    # Optuna logs a line per trial; the runs' own progress bars and logs say more.
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


def _import_optuna():
    try:
        import optuna
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("successive halving needs Optuna: pip install optuna") from err
    return optuna


def search(taus: Sequence[float], epochs: int, settings: HalvingSettings,
           advance: Callable[[float, int], Sequence[float]]) -> Dict[float, Tuple[List[float], bool]]:
    """Successive halving over ``taus`` with Optuna: ``advance(tau, rung)`` trains (or loads) the trial of
    ``tau`` up to ``rung`` epochs and gives its validation accuracy after each of its epochs so far. Per tau:
    the accuracies the pruner saw, and whether it stopped early. The training search and its projection
    (:func:`expected_search`) both run this, so that they prune alike."""
    optuna = _import_optuna()
    rungs = settings.rungs(epochs)
    seen: Dict[float, Tuple[List[float], bool]] = {}

    def run_trial(trial) -> float:
        tau = float(trial.suggest_categorical("tau", list(taus)))
        values: List[float] = []
        seen[tau] = (values, False)
        for rung in rungs:
            for value in list(advance(tau, rung))[len(values):]:
                values.append(float(value))
                trial.report(float(value), step=len(values))
                # A finished full-length run has nothing left to save: pruning it would only drop its result.
                if len(values) < epochs and trial.should_prune():
                    seen[tau] = (values, True)
                    raise optuna.TrialPruned()
        return values[-1]

    with _quiet_optuna(optuna):
        study = optuna.create_study(
            direction="maximize",
            sampler=optuna.samplers.GridSampler({"tau": list(taus)}, seed=settings.seed),
            pruner=optuna.pruners.SuccessiveHalvingPruner(
                min_resource=rungs[0], reduction_factor=settings.reduction_factor, min_early_stopping_rate=0
            ),
        )
        study.optimize(run_trial, n_trials=len(taus))
    return seen


def successive_halving_sweep(
    base: RunConfig,
    taus: Iterable[float],
    store: RunStore,
    device="auto",
    data_root=None,
    progress: bool = True,
    settings: HalvingSettings = HalvingSettings(),
    train: Callable[..., RunResult] = train_run,
) -> HalvingResult:
    """Successive halving over fixed taus of ``base`` (a KD config); cached runs are loaded, never retrained.

    Every trial's full-length config is ``base`` with a fixed tau: the run :func:`~greenkd_utils.runs.sweep.tuned_sweep`
    trains for that tau. ``train`` is the function that trains or loads one run (the lifecycle's ``train``).
    """
    check_tau_search(base)
    taus = [float(t) for t in taus]
    if not taus:
        raise ValueError("the tau grid is empty")
    if len(set(taus)) != len(taus):
        raise ValueError(f"the tau grid has repeated values: {taus}")
    epochs = base.train.epochs
    rungs = settings.rungs(epochs)
    full = {tau: base.replace(temperature=TemperatureSpec.fixed(tau)) for tau in taus}
    trials = {tau: HalvingTrial(tau) for tau in taus}

    def advance(tau: float, rung: int) -> List[float]:
        trial = trials[tau]
        previous = trial.runs[-1].config if trial.runs else None
        config = full[tau] if rung == epochs else truncated(full[tau], rung)
        _continue_from(previous, config, store)
        # A truncated run keeps its final state for the next rung; the full-length run is the grid's own.
        run_store = store if rung == epochs else _KeepFinalState(store.root, config)
        run = train(config, run_store, device, data_root, progress)
        if previous is not None:
            _drop_resume_state(previous, store)
        trial.runs.append(run)
        return [float(row["val_accuracy"]) for row in run.history]

    for tau, (values, pruned) in search(taus, epochs, settings, advance).items():
        trials[tau].val_accuracy_per_epoch, trials[tau].pruned = values, pruned
    ordered = [trials[tau] for tau in taus]  # grid order, so that ties go to the earlier grid value
    for trial in ordered:
        if trial.pruned and trial.runs:  # a stopped trial's last rung is not continued: its state can go
            _drop_resume_state(trial.runs[-1].config, store)
    chosen = choose_on_validation([t.runs[-1] for t in ordered if not t.pruned])
    result = HalvingResult(
        runs=[run for t in ordered for run in t.billed_runs],
        chosen=chosen,
        trials=ordered,
        rungs=rungs,
        settings=settings,
    )
    log.info(
        "successive halving %s: tau=%g chosen on validation (%.2f%%); %d of %d taus stopped early; %d epochs "
        "instead of the grid's %d",
        base.name, chosen.config.temperature.tau, chosen.val_accuracy, len(result.pruned_taus), len(taus),
        result.epochs_trained, len(taus) * epochs,
    )
    return result


@dataclass(frozen=True)
class ExpectedSearch:
    """What successive halving is expected to train over a grid of ``n_taus`` values, before any training:
    epochs per trial, averaged over ``orders`` random rankings of the taus (every ranking equally likely, and
    kept from rung to rung). ``epochs_low`` and ``epochs_high`` are the 5th and 95th percentiles."""

    n_taus: int
    epochs: int
    rungs: Tuple[int, ...]
    orders: int
    mean_epochs: float  # summed over the trials
    epochs_low: float
    epochs_high: float
    mean_full_length: float  # trials that reach the full length

    def cost(self, per_epoch: float, per_trial: float = 0.0) -> float:
        """The expected cost when an epoch costs ``per_epoch`` and each trial pays ``per_trial`` once (its
        teacher pass)."""
        return self.mean_epochs * per_epoch + self.n_taus * per_trial

    def ratio_to_grid(self, per_epoch: float, per_trial: float = 0.0) -> float:
        """The expected cost over the full grid's (every tau trained for ``epochs``)."""
        return self.cost(per_epoch, per_trial) / (self.n_taus * (self.epochs * per_epoch + per_trial))


@functools.lru_cache(maxsize=None)
def expected_search(n_taus: int, epochs: int, settings: HalvingSettings = HalvingSettings(),
                    orders: int = 200, seed: int = 0) -> ExpectedSearch:
    """Project a search: run :func:`search` (Optuna's own pruner) on ``orders`` random rankings of the taus,
    each trial's validation accuracy its rank at every epoch, and count the epochs each ranking trains. The
    plan asks once per seed for the same grid: the answer is computed once per process."""
    if n_taus < 1:
        raise ValueError(f"a search needs at least one tau; got {n_taus}")
    rng = np.random.default_rng(seed)
    taus = [float(t) for t in range(1, n_taus + 1)]
    totals, full_length = [], []
    for _ in range(int(orders)):
        quality = dict(zip(taus, rng.permutation(n_taus).astype(float)))
        seen = search(taus, epochs, settings, lambda tau, rung: [quality[tau]] * rung)
        totals.append(sum(len(values) for values, _ in seen.values()))
        full_length.append(sum(not pruned for _, pruned in seen.values()))
    return ExpectedSearch(
        n_taus=n_taus, epochs=int(epochs), rungs=settings.rungs(epochs), orders=int(orders),
        mean_epochs=float(np.mean(totals)), epochs_low=float(np.percentile(totals, 5)),
        epochs_high=float(np.percentile(totals, 95)), mean_full_length=float(np.mean(full_length)),
    )
