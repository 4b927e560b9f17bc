"""Teachers and students trained with cross-entropy, and KD students: the paper's runs.

``train_run(config, store)`` returns the finished run of a :class:`~greenkd_utils.core.config.RunConfig`, from the
store or trained by the lifecycle (:mod:`greenkd_utils.runs.lifecycle`) with this task.

The loop keeps the dataset on the training device as uint8, augments whole batches there, and synchronises
with the host once per phase, never per batch: the epoch's taus are drawn up front by the lifecycle and
copied in one transfer (a learned temperature computes its tau on the device instead).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from greenkd_utils.core.augment import BatchAugment, standardize
from greenkd_utils.core.config import RunConfig
from greenkd_utils.core.losses import kd_loss
from greenkd_utils.core.models import create_model
from greenkd_utils.core.temperature import EpochTaus
from greenkd_utils.energy.flops import (
    kd_step_flops,
    student_run_flops,
    train_step_flops,
)
from greenkd_utils.runs.device_data import (  # noqa: F401  (re-exported: the classification API in one place)
    DeviceData,
    accuracy_tensor,
    predict_logits,
    prepare_data,
    shuffled_batches,
    split_accuracies,
    steps_per_epoch,
)
from greenkd_utils.runs.execution import (  # noqa: F401
    ExecutionPlan,
    describe_device,
    library_versions,
    lr_factor,
    make_optimizer,
    make_scheduler,
    resolve_device,
)
from greenkd_utils.runs.lifecycle import (  # noqa: F401
    StudentTask,
    Task,
    describe_taus,
    register_task,
    train,
)
from greenkd_utils.runs.record import RunResult
from greenkd_utils.runs.store import RunStore

FLOP_DEFINITION = (
    "training FLOPs = samples seen x (teacher forward + student forward + student backward) per sample, "
    "with the teacher term counting the teacher forwards that ran (once per training image when augmentation "
    "is off and the teacher's outputs are computed once)"
)


def objective(config: RunConfig, student_logits, teacher_logits, targets, tau) -> torch.Tensor:
    """Cross-entropy for a teacher or student, the config's KD loss for a KD student."""
    if config.role != "kd":
        return F.cross_entropy(student_logits.float(), targets)
    return kd_loss(
        config.loss,
        student_logits.float(),
        teacher_logits.float(),
        targets,
        tau,
        alpha=config.alpha,
        kl_reduction=config.kl_reduction,
        logit_standardization=config.logit_standardization,
    )


def train_epoch(
    student: torch.nn.Module,
    teacher: Optional[torch.nn.Module],
    train: Tuple[torch.Tensor, torch.Tensor],
    mean: torch.Tensor,
    std: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler,
    taus: Optional[EpochTaus | torch.Tensor],
    loss_fn: Callable[[torch.Tensor, Optional[torch.Tensor], torch.Tensor, Optional[torch.Tensor]], torch.Tensor],
    augment: BatchAugment,
    generator: torch.Generator,
    plan: ExecutionPlan,
    batch_size: int,
    fixed_teacher_logits: Optional[torch.Tensor] = None,
    on_step: Optional[Callable[[], None]] = None,
) -> Dict[str, Any]:
    """One pass over ``train`` (uint8 images and labels on the device). ``taus[step]`` is the step's tau.

    Returns the epoch's loss sum and correct count as device tensors and, as Python ints, the samples seen
    and the teacher images forwarded.
    """
    images_all, labels_all = train
    device = labels_all.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    seen = teacher_forwards = 0
    for step, idx in enumerate(shuffled_batches(labels_all.numel(), batch_size, generator, device)):
        images, labels = images_all[idx], labels_all[idx]
        x = plan.prepare_batch(standardize(augment(images.float() / 255.0, generator), mean, std))
        with plan.autocast():
            teacher_logits = None
            if fixed_teacher_logits is not None:
                teacher_logits = fixed_teacher_logits[idx]
            elif teacher is not None:
                with torch.inference_mode():
                    teacher_logits = teacher(x)
                # An inference-mode tensor cannot be saved for the student's backward; a copy can.
                teacher_logits = teacher_logits.clone()
                teacher_forwards += labels.numel()
            student_logits = student(x)
        loss = loss_fn(student_logits, teacher_logits, labels, taus[step] if taus is not None else None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += loss.detach() * labels.numel()
        correct += (student_logits.detach().argmax(1) == labels).sum()
        seen += labels.numel()
        if on_step is not None:
            on_step()
    return {"loss_sum": loss_sum, "correct": correct, "seen": seen, "teacher_forwards": teacher_forwards}


@register_task
class ClassificationTask(StudentTask):
    """A teacher or student (cross-entropy) or a KD student, on an image classification dataset."""

    name = "classification"
    config_type = RunConfig
    flop_definition = FLOP_DEFINITION

    def __init__(self, config: RunConfig, device, dependencies, store, data_root=None, **options):
        super().__init__(config, device, dependencies, store, data_root, **options)
        self.data = prepare_data(config, device, None if data_root is None else str(data_root))

    def build(self, temperature) -> None:
        config, data, settings = self.config, self.data, self.config.train
        self.plan = plan = ExecutionPlan.for_run(settings, self.device)
        self.model = plan.prepare_model(create_model(config.model, data.num_classes, data.in_channels))
        if self.teacher is not None:
            self.teacher = plan.prepare_model(self.teacher).eval()
        self.step_model = torch.compile(self.model) if plan.compile else self.model
        self.step_teacher = torch.compile(self.teacher) if (plan.compile and self.teacher is not None) else self.teacher
        self.batch_size = min(settings.batch_size, data.train[1].numel())
        # A learned temperature (CTKD) trains with the student, in the same optimiser and lr schedule.
        self.optimizer = make_optimizer(self.model, settings, plan, temperature.parameters() if temperature is not None else ())
        self.scheduler = make_scheduler(self.optimizer, self.steps_per_epoch, settings)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.augment = BatchAugment(settings.augment)
        if self.teacher is not None:
            self.per_sample = kd_step_flops(self.teacher, self.model, data.input_shape)
        else:
            self.per_sample = train_step_flops(self.model, data.input_shape)
        self.fixed_teacher_logits: Optional[torch.Tensor] = None
        self.teacher_forwards = 0  # teacher images actually forwarded: the FLOP count follows what ran
        self.samples_seen = self.images_evaluated = 0

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(self.data.train[1].numel(), self.config.train.batch_size)

    @property
    def tau_batch_size(self) -> int:
        return self.batch_size

    def run_phase(self, phase: str, epoch: int, taus, on_step) -> Dict[str, Any]:
        data = self.data
        self.model.train()
        if self.teacher is not None and self.fixed_teacher_logits is None and self.augment.is_identity:
            # Without augmentation the teacher sees the same images every epoch: one pass serves the run.
            self.fixed_teacher_logits = predict_logits(self.teacher, data.train[0], data.mean, data.std, plan=self.plan)
            self.teacher_forwards += data.train[1].numel()
        stats = train_epoch(
            self.step_model, self.step_teacher, data.train, data.mean, data.std, self.optimizer, self.scheduler,
            taus, lambda s, t, y, tau: objective(self.config, s, t, y, tau), self.augment, self.generator,
            self.plan, self.batch_size, fixed_teacher_logits=self.fixed_teacher_logits, on_step=on_step,
        )
        self.teacher_forwards += stats["teacher_forwards"]
        seen = stats["seen"]
        self.samples_seen += seen
        train_loss, train_acc = torch.stack([stats["loss_sum"] / seen, stats["correct"] * 100.0 / seen]).tolist()
        return {"train_loss": train_loss, "train_accuracy": train_acc, "seen": seen}

    def evaluate(self, epoch: int, last: bool) -> Dict[str, Any]:
        data = self.data
        self.images_evaluated += data.n_evaluated
        return split_accuracies(self.model, data, self.plan)

    def flops(self) -> Dict[str, Any]:
        counted = student_run_flops(self.per_sample, self.samples_seen, self.images_evaluated, self.teacher_forwards)
        return {**counted, "teacher_outputs_reused": self.fixed_teacher_logits is not None}


    def describe_data(self) -> Dict[str, Any]:
        return self.data.describe()



    @staticmethod
    def load_model(result: RunResult, store: RunStore, device="cpu") -> torch.nn.Module:
        model = create_model(result.config.model, result.data["num_classes"], result.data["in_channels"])
        model.load_state_dict(store.load_state_dict(result.config))
        return model.to(device).eval()


def train_run(config: RunConfig, store: RunStore, device: str | torch.device | None = "auto",
              data_root: str | os.PathLike | None = None, progress: bool = True) -> RunResult:
    """Load ``config``'s finished run from ``store``, or train it (and its teacher, once)."""
    return train(config, store, device=device, data_root=data_root, progress=progress)
