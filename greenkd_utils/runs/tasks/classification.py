"""Teachers and students trained with cross-entropy, and KD students: the paper's runs.

The dataset stays on the training device as uint8; whole batches are augmented and standardised there, and
the lifecycle synchronises with the host once per phase, never per batch (the epoch's taus are drawn up front
and copied in one transfer; a learned temperature computes its tau on the device instead).
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F

from greenkd_utils.core.augment import BatchAugment, standardize
from greenkd_utils.core.config import RunConfig
from greenkd_utils.core.losses import kd_loss
from greenkd_utils.core.models import create_model
from greenkd_utils.energy.flops import kd_step_flops, student_run_flops, train_step_flops
from greenkd_utils.runs.device_data import DeviceData, predict_logits, prepare_data, shuffled_batches, steps_per_epoch
from greenkd_utils.runs.execution import ExecutionPlan
from greenkd_utils.runs.registry import register_task
from greenkd_utils.runs.task import Batch, RunCounts, Task

FLOP_DEFINITION = (
    "training FLOPs = samples seen x (teacher forward + student forward + student backward) per sample, "
    "with the teacher term counting the teacher forwards that ran (once per training image when augmentation "
    "is off and the teacher's outputs are computed once)"
)


def objective(config, student_logits, teacher_logits, targets, tau) -> torch.Tensor:
    """Cross-entropy for a teacher or student, the config's KD loss (weighted with cross-entropy by alpha)
    for a KD student."""
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


class ImageClassifierTask(Task):
    """A classifier trained on a classification dataset held on the device: the batches, the forward and
    the network every classification-like run shares (QAT's too)."""

    caches_teacher_outputs = True

    def __init__(self, config, device, dependencies, store, data_root=None, data: Optional[DeviceData] = None,
                 **options):
        super().__init__(config, device, dependencies, store, data_root, **options)
        # ``data``: tensors already on the device, for a benchmark of the step on data of its own.
        self.data = data if data is not None else prepare_data(config, device, None if data_root is None else str(data_root))

    @classmethod
    def build_model(cls, config, data: Dict[str, Any]) -> torch.nn.Module:
        return create_model(config.model, data["num_classes"], data["in_channels"])

    def _build_plan(self, settings) -> None:
        self.plan = ExecutionPlan.for_run(settings, self.device)
        self.batch_size = min(settings.batch_size, self.data.train[1].numel())
        self.augment = BatchAugment(settings.augment)

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(self.data.train[1].numel(), self.config.train.batch_size)

    @property
    def tau_batch_size(self) -> int:
        return self.batch_size

    @property
    def augments(self) -> bool:
        return not self.augment.is_identity

    def batches(self, epoch: int) -> Iterator[Batch]:
        images, labels = self.data.train
        for idx in shuffled_batches(labels.numel(), self.batch_size, self.generator, self.device):
            yield Batch(images[idx], labels[idx], idx)

    def _inputs(self, batch: Batch) -> torch.Tensor:
        data = self.data
        return self.plan.prepare_batch(standardize(self.augment(batch.inputs.float() / 255.0, self.generator),
                                                   data.mean, data.std))

    def all_teacher_outputs(self) -> torch.Tensor:
        data = self.data
        return predict_logits(self.teacher, data.train[0], data.mean, data.std, plan=self.plan)


@register_task
class ClassificationTask(ImageClassifierTask):
    """A teacher or student (cross-entropy) or a KD student, on an image classification dataset."""

    name = "classification"
    config_type = RunConfig
    flop_definition = FLOP_DEFINITION

    def build(self) -> None:
        config, data = self.config, self.data
        self._build_plan(config.train)
        plan = self.plan
        self.model = plan.prepare_model(self.build_model(config, data.describe()))
        if self.teacher is not None:
            self.teacher = plan.prepare_model(self.teacher).eval()
        self.step_model = torch.compile(self.model) if plan.compile else self.model
        self.step_teacher = torch.compile(self.teacher) if (plan.compile and self.teacher is not None) else self.teacher
        if self.teacher is not None:
            self.per_sample = kd_step_flops(self.teacher, self.model, data.input_shape)
        else:
            self.per_sample = train_step_flops(self.model, data.input_shape)

    def forward_train(self, batch: Batch, tau, teacher_outputs=None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        x = self._inputs(batch)
        with self.plan.autocast():
            teacher_logits: Optional[torch.Tensor] = teacher_outputs
            if teacher_logits is None and self.teacher is not None:
                with torch.inference_mode():
                    teacher_logits = self.step_teacher(x)
                # An inference-mode tensor cannot be saved for the student's backward; a copy can.
                teacher_logits = teacher_logits.clone()
            student_logits = self.step_model(x)
        loss = objective(self.config, student_logits, teacher_logits, batch.labels, tau)
        return student_logits, {"kd" if self.config.role == "kd" else "ce": loss}

    def flops(self, counts: RunCounts) -> Dict[str, Any]:
        return student_run_flops(self.per_sample, counts.samples_seen, counts.images_evaluated, counts.teacher_forwards)
