"""What a kind of run supplies to the lifecycle: its data, what one training step computes, anything it
synthesises, and its FLOP accounting. Everything else (seeding and random generators, the optimiser and its
step, the teacher-output cache, evaluation counts, checkpoints, the meter, the record) is the lifecycle's
(:mod:`greenkd_utils.runs.lifecycle`).

A new kind of run is one :class:`Task` subclass and one config type, registered with
:func:`~greenkd_utils.runs.registry.register_task`::

    @register_task
    class MyTask(Task):
        name, config_type = "my_task", MyConfig
        def build(self):                    self.model = ...; self.plan = ...    # after seeding
        def batches(self, epoch):           yield Batch(inputs, labels, index)    # one epoch, from self.generator
        def forward_train(self, batch, tau, teacher_outputs=None):
            return logits, {"ce": loss}                                           # the lifecycle sums and steps
        def flops(self, counts):            return {"by_phase": {...}}
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np
import torch

from greenkd_utils.runs.device_data import split_accuracies
from greenkd_utils.runs.record import RunResult
from greenkd_utils.runs.store import RunStore


@dataclass
class Batch:
    """One training batch. ``labels``: the classes the training accuracy counts against (a data-free batch's
    are the teacher's, known only after its forward); ``index``: positions in the training set, to read the
    teacher-output cache."""

    inputs: Any
    labels: Any = None
    index: Optional[torch.Tensor] = None
    targets: Any = None  # what the loss reads besides labels (a detector's boxes)

    @property
    def size(self) -> int:
        return int(self.inputs.shape[0])


@dataclass
class Evaluation:
    """History entries (or the headline metrics) of one evaluation, and the images it read."""

    entries: Dict[str, Any]
    images: int = 0


@dataclass
class RunCounts:
    """What the lifecycle counts as the run goes, for the FLOP accounting and the checkpoint."""

    samples_seen: int = 0  # training samples through the student, every epoch's
    images_evaluated: int = 0  # images read by the evaluation passes, the final one included
    teacher_forwards: int = 0  # samples through the teacher: every step's batch, or the training set once if cached
    teacher_outputs_reused: bool = False  # True once the teacher's outputs are cached for the whole run
    teacher_passes: int = 0  # passes of the teacher over the whole training set (its outputs cached)

    def state_dict(self) -> Dict[str, Any]:
        return dict(self.__dict__)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)


@dataclass
class EpochTally:
    """Sums over one epoch's steps, kept on the device (one host synchronisation per epoch)."""

    device: torch.device
    loss_sum: Any = 0.0
    correct: Any = 0.0
    terms: Dict[str, Any] = field(default_factory=dict)
    seen: int = 0
    steps: int = 0

    def __post_init__(self):
        self.loss_sum = torch.zeros((), device=self.device)
        self.correct = torch.zeros((), device=self.device)

    def add(self, batch: Batch, logits: torch.Tensor, losses: Dict[str, torch.Tensor], loss: torch.Tensor) -> None:
        n = batch.size
        self.loss_sum += loss.detach() * n
        if batch.labels is not None:
            self.correct += (logits.detach().argmax(1) == batch.labels).sum()
        for name, value in losses.items():
            self.terms[name] = self.terms.get(name, 0.0) + value.detach()
        self.seen += n
        self.steps += 1

    def loss_and_accuracy(self) -> Tuple[float, float]:
        """Mean loss per sample and training accuracy in percent."""
        loss, accuracy = torch.stack([self.loss_sum / self.seen, self.correct * 100.0 / self.seen]).tolist()
        return loss, accuracy

    def term_means(self) -> Dict[str, float]:
        """Each loss term's mean over the epoch's steps."""
        names = list(self.terms)
        values = (torch.stack([self.terms[k] for k in names]) / max(self.steps, 1)).tolist() if names else []
        return dict(zip(names, values))


class Task:
    """What one kind of run supplies. Subclass, set the class attributes, register with ``register_task``.

    The lifecycle calls, in order: ``dependencies`` (class method), ``__init__`` (data, no randomness), then
    after seeding ``build`` (models, execution plan, anything synthesised), ``load_state_dict`` on resume,
    and per epoch, inside ``epoch_context``, each phase: ``training`` is the lifecycle's loop over
    ``batches`` and ``forward_train``; any other phase (synthesis) is ``run_phase``; then ``evaluate``, and
    once ``finish``.
    """

    name: ClassVar[str]
    config_type: ClassVar[type]
    epoch_phases: ClassVar[Tuple[str, ...]] = ("training",)
    # Whether evaluate() runs a full evaluation after every epoch (a detector's mAP runs after the last only).
    evaluates_every_epoch: ClassVar[bool] = True
    # Whether the teacher's outputs on the un-augmented training set may be computed once and reused.
    caches_teacher_outputs: ClassVar[bool] = False
    # The device of the run's random generator ("cpu" where batches are assembled on the host anyway).
    generator_on_cpu: ClassVar[bool] = False
    flop_definition: ClassVar[str] = ""
    # Attributes with a state (modules, a synthesizer, a pool) and plain counters, saved in every checkpoint.
    checkpointed: ClassVar[Tuple[str, ...]] = ("model",)
    counters: ClassVar[Tuple[str, ...]] = ()
    # The (key, value) that marks a stored config dict as this task's, in a record written before records
    # named their task; None: no such record is this task's.
    config_mark: ClassVar[Optional[Tuple[str, Any]]] = None

    def __init__(self, config, device: torch.device, dependencies: Mapping[str, RunResult], store: RunStore,
                 data_root=None, **options):
        self.config, self.device, self.store, self.data_root = config, device, store, data_root
        self.dependencies_done = dict(dependencies)
        self.options = options
        self.teacher: Optional[torch.nn.Module] = None  # loaded by the lifecycle from the teacher run
        self.generator: Optional[torch.Generator] = None  # the run's random stream, seeded by the lifecycle
        self.history: List[Dict[str, Any]] = []  # the lifecycle's, resumed or empty, set before the first epoch

    # -- what the run needs ---------------------------------------------------------------------
    @classmethod
    def dependencies(cls, config) -> Dict[str, Any]:
        """Configs of the runs this one needs first, by role: by default the config's teacher, if it has one."""
        teacher = getattr(config, "teacher", None)
        return {"teacher": teacher} if teacher is not None else {}

    @classmethod
    def recognises(cls, config_dict: Dict[str, Any]) -> bool:
        """Whether a stored config dict (of a record written before records named their task) is this task's."""
        if cls.config_mark is None:
            return False
        key, value = cls.config_mark
        return config_dict.get(key) == value

    @classmethod
    def upgrade_record(cls, record: Dict[str, Any]) -> Dict[str, Any]:
        """A record written by an earlier version, in today's layout (unchanged by default)."""
        return record

    @classmethod
    def has_kd_term(cls, config) -> bool:
        """Whether ``config``'s runs distil (and so have a tau to draw, fix or search): ``DistillSpec.distils``;
        a config without distillation fields has no KD term."""
        return bool(getattr(config, "distils", False))

    @property
    def temperature_spec(self):
        return getattr(self.config, "temperature", None)

    @property
    def train_settings(self):
        """The optimiser, schedule and augmentation the lifecycle builds the step from."""
        return self.config.train

    @property
    def epochs(self) -> int:
        return int(self.config.train.epochs)

    # -- the run --------------------------------------------------------------------------------
    def build(self) -> None:
        """Models (``self.model``, the one the optimiser trains), ``self.plan``, anything synthesised."""
        raise NotImplementedError

    @property
    def steps_per_epoch(self) -> int:
        """Optimiser steps per epoch (the tau draws per epoch, and the lr schedule's epoch)."""
        raise NotImplementedError

    @property
    def progress_steps_per_epoch(self) -> int:
        """Progress-bar steps per epoch (synthesis iterations count too)."""
        return self.steps_per_epoch

    @property
    def tau_batch_size(self) -> int:
        """Samples per step, for a temperature drawn per sample."""
        return int(self.config.train.batch_size)

    def epoch_seed(self, epoch: int, stream: int) -> int:
        """The seed of a random stream of its own per epoch and purpose (a data-free run's synthesis and its
        batches), derived from the run's seed: a resumed run draws what an uninterrupted one would."""
        return int(np.random.SeedSequence([self.config.seed, epoch, stream]).generate_state(1)[0])

    def epoch_generator(self, epoch: int, stream: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(self.epoch_seed(epoch, stream))

    def epoch_context(self, epoch: int):
        """A context the whole epoch runs in (QAT freezes its observers in it)."""
        return contextlib.nullcontext()

    def batches(self, epoch: int) -> Iterator[Batch]:
        """The epoch's training batches, drawn from ``self.generator``."""
        raise NotImplementedError

    def forward_train(self, batch: Batch, tau, teacher_outputs=None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """The student's logits and the loss terms of one step (summed by the lifecycle for the backward).
        ``teacher_outputs``: the cached teacher outputs of the batch, if the lifecycle holds them."""
        raise NotImplementedError

    def all_teacher_outputs(self) -> torch.Tensor:
        """The teacher's outputs on the whole un-augmented training set (for ``caches_teacher_outputs``)."""
        raise NotImplementedError

    @property
    def augments(self) -> bool:
        """Whether the training images change from epoch to epoch (then teacher outputs cannot be reused)."""
        return True

    def summarise_epoch(self, tally: EpochTally) -> Dict[str, Any]:
        """The epoch's history entries from the lifecycle's sums over its steps."""
        loss, accuracy = tally.loss_and_accuracy()
        return {"train_loss": loss, "train_accuracy": accuracy}

    def run_phase(self, phase: str, epoch: int, on_step) -> Dict[str, Any]:
        """One epoch of a phase other than training (synthesis); returns its history entries."""
        raise NotImplementedError

    def evaluate(self, epoch: int, last: bool) -> Evaluation:
        """The evaluation after epoch ``epoch`` (0-based): validation and test accuracy by default."""
        data = self.data
        return Evaluation(split_accuracies(self.model, data, self.plan), data.n_evaluated)

    def finish(self, run_dir: Path) -> Evaluation:
        """Final metrics and artefacts: ``test_accuracy``, ``val_accuracy`` and any extras for the record.
        The final weights are saved by the lifecycle from :meth:`final_state_dict`."""
        last = self.history[-1]
        return Evaluation({"test_accuracy": last["test_accuracy"], "val_accuracy": last["val_accuracy"]})

    def final_state_dict(self) -> Dict[str, torch.Tensor]:
        return self.model.state_dict()

    def flops(self, counts: RunCounts) -> Dict[str, Any]:
        """``by_phase`` (FLOPs of synthesis, training and evaluation) and the counts behind them."""
        raise NotImplementedError

    @classmethod
    def projected_training_flops(cls, flops: Dict[str, Any], epochs: int, calibration_epochs: int = 1) -> float:
        """Training FLOPs of a run of ``epochs`` epochs, from the ``flops`` record of a ``calibration_epochs``-epoch
        run of the same shape (the bill's calibration): every epoch costs the same, except teacher outputs
        computed once for the run."""
        per_sample = flops.get("per_sample", {}).get("teacher_forward", 0)
        once = per_sample * flops.get("teacher_forwards", 0) if flops.get("teacher_outputs_reused") else 0.0
        return (float(flops["training_flops"]) - once) / calibration_epochs * epochs + once

    def describe_data(self) -> Dict[str, Any]:
        return self.data.describe()

    def state_dict(self) -> Dict[str, Any]:
        state = {name: getattr(self, name).state_dict() for name in self.checkpointed}
        state.update({name: getattr(self, name) for name in self.counters})
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for name in self.checkpointed:
            getattr(self, name).load_state_dict(state[name])
        for name in self.counters:
            setattr(self, name, state[name])

    # -- reading a finished run -----------------------------------------------------------------
    @classmethod
    def build_model(cls, config, data: Dict[str, Any]) -> torch.nn.Module:
        """The untrained network of a finished run, from its config and its record's ``data``."""
        raise NotImplementedError

    @classmethod
    def load_model(cls, result: RunResult, store: RunStore, device="cpu") -> torch.nn.Module:
        """The trained network in eval mode, its weights checked against their digest."""
        model = cls.build_model(result.config, result.data)
        model.load_state_dict(store.load_state_dict(result.config))
        return model.to(device).eval()

