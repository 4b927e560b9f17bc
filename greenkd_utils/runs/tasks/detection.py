"""SSD detectors (the paper's Table 4, detection part): the teacher with SSD's loss, students with SSD's loss
plus KD on the anchors' class logits.

The KD student's objective is

    SSD loss (localisation + classification over positives and hard negatives)
    + alpha * D(student logits, teacher logits; tau)

where D is a registered KD loss's distillation term (``hkd``, ``cmc``, ``dml``) over the class logits of
exactly the anchors SSD's classification term used in that batch, and tau is the lifecycle's: fixed, drawn
per batch or per image, or learned. The record's ``test_accuracy`` and ``val_accuracy`` are the mAP in
percent, so the shared table and sweep code read detectors like classifiers.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import torch

from greenkd_utils.core.augment import standardize
from greenkd_utils.core.detection.batches import iterate_batches
from greenkd_utils.core.detection.config import DetectionRunConfig
from greenkd_utils.core.detection.data import load_detection_data
from greenkd_utils.core.detection.dataset import DetectionDataset, DetectionSplits
from greenkd_utils.core.detection.evaluation import DetectionMetrics, evaluate_model
from greenkd_utils.core.detection.loss import anchor_distillation, ssd_loss
from greenkd_utils.core.detection.models import SSDDetector, create_detector
from greenkd_utils.core.detection.shapes import ShapesSettings
from greenkd_utils.energy.flops import (
    forward_flops,
    kd_step_flops,
    student_run_flops,
    train_step_flops,
)
from greenkd_utils.runs.device_data import VALIDATION_SPLIT_SEED
from greenkd_utils.runs.execution import ExecutionPlan
from greenkd_utils.runs.registry import register_task
from greenkd_utils.runs.task import Batch, EpochTally, Evaluation, RunCounts, Task

FLOP_DEFINITION = (
    "training FLOPs = images seen x (student forward + student backward) + teacher forwards that ran x "
    "teacher forward, per image, on real passes of the whole detector (backbone and head); anchor matching, "
    "the loss and NMS are not counted"
)


def build_model(config: DetectionRunConfig, num_classes: int) -> SSDDetector:
    return create_detector(config.model, num_classes, width=config.width, anchors=config.anchors)


@functools.lru_cache(maxsize=2)
def _load_cached(dataset: str, image_size: int, root: Optional[str], shapes: Optional[ShapesSettings]) -> DetectionSplits:
    # Decoding VOC takes a minute or two: once per process.
    return load_detection_data(dataset, image_size, root=root, shapes=shapes)


@dataclass(eq=False)
class DetectionData:
    train: DetectionDataset
    val: DetectionDataset
    test: DetectionDataset
    mean: torch.Tensor
    std: torch.Tensor

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    def describe(self) -> Dict[str, Any]:
        return {
            "num_classes": self.num_classes,
            "class_names": list(self.train.class_names),
            "image_size": self.train.image_size,
            "n_train": len(self.train),
            "n_val": len(self.val),
            "n_test": len(self.test),
            "n_train_objects": self.train.num_objects,
        }


def prepare_detection_data(config: DetectionRunConfig, data_root=None) -> DetectionData:
    splits = _load_cached(config.dataset, config.image_size, None if data_root is None else str(data_root), config.shapes)
    train, val = splits.train.split_validation(config.val_fraction, seed=VALIDATION_SPLIT_SEED)
    return DetectionData(
        train=train,
        val=val,
        test=splits.test,
        mean=torch.tensor(splits.mean, dtype=torch.float32),
        std=torch.tensor(splits.std, dtype=torch.float32),
    )


def execution_plan(settings, device: torch.device) -> ExecutionPlan:
    """The classification runs' plan, plus channels_last on the CPU, where it makes the depthwise
    convolutions of MobileNetV2 and VGG's convolutions about 1.5x faster (oneDNN's preferred layout)."""
    plan = ExecutionPlan.for_run(settings, device)
    if device.type == "cpu":
        plan = dataclasses.replace(plan, channels_last=True)
    return plan


@torch.no_grad()
def teacher_logits_for(teacher: SSDDetector, images_u8: torch.Tensor, mean, std, plan: ExecutionPlan, batch_size: int = 128) -> torch.Tensor:
    """The teacher's class logits (N, A, C + 1) for un-augmented images, computed once per run."""
    out = []
    for start in range(0, images_u8.shape[0], batch_size):
        x = plan.prepare_batch(standardize(images_u8[start : start + batch_size].float() / 255.0, mean, std))
        with plan.autocast():
            out.append(teacher(x)["cls_logits"].float())
    return torch.cat(out)


@register_task
class DetectionTask(Task):
    """An SSD teacher or student (SSD's loss), or a KD student distilling the teacher's anchor logits.

    Options (never part of the config, since they do not change the weights): ``num_workers``, DataLoader
    workers for the ``ssd`` augmentation; ``eval_every``, also record the validation mAP every that many
    epochs (0: only after the last epoch).
    """

    name = "detection"
    config_type = DetectionRunConfig
    flop_definition = FLOP_DEFINITION
    caches_teacher_outputs = True
    # The shuffling generator lives on the CPU: batches of boxes are assembled there anyway.
    generator_on_cpu = True
    # mAP takes longer than an epoch of the demo: after the last epoch, and every eval_every epochs if asked.
    evaluates_every_epoch = False
    config_mark = ("task", "detection")

    @classmethod
    def upgrade_record(cls, record: Dict[str, Any]) -> Dict[str, Any]:
        if "test_accuracy" in record:
            return record
        # Written before the lifecycle was unified: the mAP under its own name, evaluation outside the meter.
        record = dict(record)
        record["test_accuracy"], record["val_accuracy"] = record["test_map_pct"], record["val_map_pct"]
        flops = dict(record["flops"])
        flops.setdefault("by_phase", {"training": flops["training_flops"]})
        record["flops"] = flops
        return record

    @classmethod
    def build_model(cls, config: DetectionRunConfig, data: Dict[str, Any]) -> SSDDetector:
        return build_model(config, data["num_classes"])

    def __init__(self, config: DetectionRunConfig, device, dependencies, store, data_root=None,
                 num_workers: int = 0, eval_every: int = 0, **options):
        super().__init__(config, device, dependencies, store, data_root, **options)
        self.num_workers, self.eval_every = int(num_workers), int(eval_every)
        self.data = prepare_detection_data(config, data_root)

    def build(self) -> None:
        config, data, settings, device = self.config, self.data, self.config.train, self.device
        self.plan = plan = execution_plan(settings, device)
        self.model = plan.prepare_model(build_model(config, data.num_classes))
        self.teacher = plan.prepare_model(self.teacher).eval() if self.teacher is not None else None
        self.step_model = torch.compile(self.model) if plan.compile else self.model
        self.mean, self.std = data.mean.to(device), data.std.to(device)
        self.anchors = self.model.anchors(config.image_size, device)
        if self.teacher is not None and not torch.equal(self.teacher.anchors(config.image_size, device), self.anchors):
            raise ValueError("the teacher's anchors differ from the student's: per-anchor logits cannot be distilled")
        # The "ssd" augmentation reads the images on the host, in DataLoader workers.
        on_device = settings.augment != "ssd"
        self.train_images = data.train.images.to(device) if on_device else data.train.images
        self.train_targets = data.train.targets(range(len(data.train)), device if on_device else None)
        shape = (3, config.image_size, config.image_size)
        self.per_image = (
            kd_step_flops(self.teacher, self.model, shape) if self.teacher is not None else train_step_flops(self.model, shape)
        )
        self.forward_per_image = forward_flops(self.model, shape)
        self.final: Dict[str, Optional[DetectionMetrics]] = {}

    @property
    def steps_per_epoch(self) -> int:
        return max(len(self.data.train) // self.config.train.batch_size, 1)

    @property
    def augments(self) -> bool:
        return self.config.train.augment != "none"

    def all_teacher_outputs(self) -> torch.Tensor:
        return teacher_logits_for(self.teacher, self.train_images, self.mean, self.std, self.plan)

    # -- one step --------------------------------------------------------------------------------
    def batches(self, epoch: int) -> Iterator[Batch]:
        for idx, images, targets in iterate_batches(self.data.train, self.config.train, self.generator, self.device,
                                                    self.train_images, self.train_targets, self.num_workers):
            yield Batch(images, index=idx, targets=targets)

    def forward_train(self, batch: Batch, tau, teacher_outputs=None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        x = self.plan.prepare_batch(standardize(batch.inputs.float() / 255.0, self.mean, self.std))
        with self.plan.autocast():
            outputs = self.step_model(x)
            teacher_logits = teacher_outputs
            if teacher_logits is None and self.teacher is not None:
                with torch.no_grad():
                    teacher_logits = self.teacher(x)["cls_logits"]
        losses = ssd_loss(outputs, self.anchors, batch.targets, self.model.box_coder, self.config.train.neg_pos_ratio)
        terms = {"localisation": losses.localisation, "classification": losses.classification}
        if teacher_logits is not None:
            terms["distillation"] = self.config.alpha * anchor_distillation(
                self.config.loss, outputs["cls_logits"], teacher_logits, losses.used_anchors, tau,
                self.config.kl_reduction, logit_standardization=self.config.logit_standardization,
            )
        return outputs["cls_logits"], terms

    def summarise_epoch(self, tally: EpochTally) -> Dict[str, Any]:
        """Mean losses per step; ``distillation_loss`` is the weighted term (alpha x D) added to SSD's loss."""
        means = tally.term_means()
        return {"train_loss": sum(means.values()), "localisation_loss": means["localisation"],
                "classification_loss": means["classification"], "distillation_loss": means.get("distillation", 0.0)}

    # -- evaluation ------------------------------------------------------------------------------
    def _evaluate(self, dataset: DetectionDataset) -> DetectionMetrics:
        return evaluate_model(self.model, dataset, self.mean, self.std, self.device, plan=self.plan)

    def evaluate(self, epoch: int, last: bool) -> Evaluation:
        has_val = len(self.data.val) > 0
        if last:
            self.final = {"val": self._evaluate(self.data.val) if has_val else None, "test": self._evaluate(self.data.test)}
            val = self.final["val"]
            return Evaluation({"val_map_pct": val.map_pct if val is not None else float("nan"),
                               "test_map_pct": self.final["test"].map_pct},
                              len(self.data.test) + (len(self.data.val) if has_val else 0))
        if self.eval_every and (epoch + 1) % self.eval_every == 0 and has_val:
            return Evaluation({"val_map_pct": self._evaluate(self.data.val).map_pct}, len(self.data.val))
        return Evaluation({})

    def finish(self, run_dir: Path) -> Evaluation:
        images = 0
        if not self.final:  # resumed after the last epoch's checkpoint: its evaluation is not in memory
            images = self.evaluate(self.epochs - 1, last=True).images
        test, val = self.final["test"], self.final["val"]
        return Evaluation({
            "test_accuracy": test.map_pct,
            "val_accuracy": val.map_pct if val is not None else float("nan"),
            "test_map_pct": test.map_pct,
            "val_map_pct": val.map_pct if val is not None else float("nan"),
            "test_metrics": test.to_dict(),
        }, images)

    def flops(self, counts: RunCounts) -> Dict[str, Any]:
        return student_run_flops(self.per_image, counts.samples_seen, counts.images_evaluated, counts.teacher_forwards,
                                 forward_per_image=self.forward_per_image)
