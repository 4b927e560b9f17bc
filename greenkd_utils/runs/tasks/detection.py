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
from typing import Any, Dict, Optional

import torch

from greenkd_utils.core.augment import standardize
from greenkd_utils.core.detection.batches import iterate_batches
from greenkd_utils.core.detection.config import DetectionRunConfig
from greenkd_utils.core.detection.data import (
    DetectionDataset,
    DetectionSplits,
    load_detection_data,
)
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
from greenkd_utils.runs.execution import ExecutionPlan, make_optimizer, make_scheduler
from greenkd_utils.runs.lifecycle import StudentTask, register_task, train
from greenkd_utils.runs.record import RunResult
from greenkd_utils.runs.store import RunStore

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
class DetectionTask(StudentTask):
    """An SSD teacher or student (SSD's loss), or a KD student distilling the teacher's anchor logits.

    Options (never part of the config, since they do not change the weights): ``num_workers``, DataLoader
    workers for the ``ssd`` augmentation; ``eval_every``, also record the validation mAP every that many
    epochs (0: only after the last epoch).
    """

    name = "detection"
    config_type = DetectionRunConfig
    flop_definition = FLOP_DEFINITION

    @classmethod
    def recognises(cls, config_dict: Dict[str, Any]) -> bool:
        return config_dict.get("task") == "detection"

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

    def __init__(self, config: DetectionRunConfig, device, dependencies, store, data_root=None,
                 num_workers: int = 0, eval_every: int = 0, **options):
        super().__init__(config, device, dependencies, store, data_root, **options)
        self.num_workers, self.eval_every = int(num_workers), int(eval_every)
        self.data = prepare_detection_data(config, data_root)

    def build(self, temperature) -> None:
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
        self.optimizer = make_optimizer(self.model, settings, plan, temperature.parameters() if temperature is not None else ())
        self.scheduler = make_scheduler(self.optimizer, self.steps_per_epoch, settings)
        # The shuffling generator lives on the CPU: batches of boxes are assembled there anyway.
        self.generator = torch.Generator().manual_seed(config.seed)
        shape = (3, config.image_size, config.image_size)
        self.per_image = (
            kd_step_flops(self.teacher, self.model, shape) if self.teacher is not None else train_step_flops(self.model, shape)
        )
        self.forward_per_image = forward_flops(self.model, shape)
        self.cached_teacher_logits: Optional[torch.Tensor] = None
        self.teacher_forwards = self.samples_seen = self.images_evaluated = 0
        self.final: Dict[str, Optional[DetectionMetrics]] = {}

    @property
    def steps_per_epoch(self) -> int:
        return max(len(self.data.train) // self.config.train.batch_size, 1)

    # -- one step and one epoch ------------------------------------------------------------------
    def _step(self, idx: torch.Tensor, images: torch.Tensor, targets, tau) -> torch.Tensor:
        """One optimiser step; returns (total, localisation, classification, distillation) as a device tensor."""
        x = self.plan.prepare_batch(standardize(images.float() / 255.0, self.mean, self.std))
        with self.plan.autocast():
            outputs = self.step_model(x)
            teacher_logits = None
            if self.cached_teacher_logits is not None:
                teacher_logits = self.cached_teacher_logits[idx.to(self.device)]
            elif self.teacher is not None:
                with torch.no_grad():
                    teacher_logits = self.teacher(x)["cls_logits"]
                self.teacher_forwards += images.shape[0]
        losses = ssd_loss(outputs, self.anchors, targets, self.model.box_coder, self.config.train.neg_pos_ratio)
        loss, distill = losses.total, torch.zeros((), device=self.device)
        if teacher_logits is not None:
            distill = anchor_distillation(
                self.config.loss, outputs["cls_logits"], teacher_logits, losses.used_anchors, tau,
                self.config.kl_reduction, logit_standardization=self.config.logit_standardization,
            )
            loss = loss + self.config.alpha * distill
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.train.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.train.grad_clip_norm)
        self.optimizer.step()
        self.scheduler.step()
        return torch.stack([loss.detach(), losses.localisation.detach(), losses.classification.detach(), distill.detach()])

    def run_phase(self, phase: str, epoch: int, taus, on_step) -> Dict[str, Any]:
        settings = self.config.train
        self.model.train()
        if self.teacher is not None and self.cached_teacher_logits is None and settings.augment == "none":
            # Without augmentation the teacher sees the same images every epoch: one pass serves the run.
            self.cached_teacher_logits = teacher_logits_for(self.teacher, self.train_images, self.mean, self.std, self.plan)
            self.teacher_forwards += len(self.data.train)
        sums, seen, steps = torch.zeros(4, device=self.device), 0, 0
        batches = iterate_batches(
            self.data.train, settings, self.generator, self.device, self.train_images, self.train_targets, self.num_workers
        )
        for step, (idx, images, targets) in enumerate(batches):
            sums += self._step(idx, images, targets, taus[step] if taus is not None else None)
            seen += images.shape[0]
            steps += 1
            on_step(1)
        self.samples_seen += seen
        total, localisation, classification, distillation = (sums / max(steps, 1)).tolist()
        return {"train_loss": total, "localisation_loss": localisation, "classification_loss": classification,
                "distillation_loss": distillation, "seen": seen}

    def _evaluate(self, dataset: DetectionDataset) -> DetectionMetrics:
        self.images_evaluated += len(dataset)
        return evaluate_model(self.model, dataset, self.mean, self.std, self.device, plan=self.plan)

    evaluates_every_epoch = False

    def evaluate(self, epoch: int, last: bool) -> Dict[str, Any]:
        # mAP takes longer than an epoch of the demo: after the last epoch, and every eval_every epochs if asked.
        has_val = len(self.data.val) > 0
        if last:
            self.final = {"val": self._evaluate(self.data.val) if has_val else None, "test": self._evaluate(self.data.test)}
            val = self.final["val"]
            return {"val_map_pct": val.map_pct if val is not None else float("nan"), "test_map_pct": self.final["test"].map_pct}
        if self.eval_every and (epoch + 1) % self.eval_every == 0 and has_val:
            return {"val_map_pct": self._evaluate(self.data.val).map_pct}
        return {}

    def finish(self, run_dir: Path) -> Dict[str, Any]:
        if not self.final:  # resumed after the last epoch's checkpoint: its evaluation is not in memory
            self.evaluate(self.epochs - 1, last=True)
        test, val = self.final["test"], self.final["val"]
        return {
            "test_accuracy": test.map_pct,
            "val_accuracy": val.map_pct if val is not None else float("nan"),
            "test_map_pct": test.map_pct,
            "val_map_pct": val.map_pct if val is not None else float("nan"),
            "test_metrics": test.to_dict(),
        }

    def flops(self) -> Dict[str, Any]:
        counted = student_run_flops(self.per_image, self.samples_seen, self.images_evaluated, self.teacher_forwards,
                                    forward_per_image=self.forward_per_image)
        return {**counted, "teacher_outputs_reused": self.cached_teacher_logits is not None}


    def describe_data(self) -> Dict[str, Any]:
        return self.data.describe()



    @classmethod
    def load_model(cls, result: RunResult, store: RunStore, device="cpu") -> SSDDetector:
        model = build_model(result.config, result.data["num_classes"])
        model.load_state_dict(store.load_state_dict(result.config))
        return model.to(device).eval()


def train_detection_run(config: DetectionRunConfig, store: RunStore, device="auto", data_root=None,
                        progress: bool = True, num_workers: int = 0, eval_every: int = 0) -> RunResult:
    """Load ``config``'s finished run from ``store``, or train it (and its teacher, once).

    ``num_workers``: DataLoader workers for the ``ssd`` augmentation. ``eval_every``: also record the
    validation mAP in the history every that many epochs (0: only after the last epoch).
    """
    return train(config, store, device=device, data_root=data_root, progress=progress,
                 num_workers=num_workers, eval_every=eval_every)
