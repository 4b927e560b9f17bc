"""Data-free KD runs (the paper's Table 6): each epoch synthesizes one round of images from the teacher,
which join a pool, then distils the student on batches drawn from the whole pool.

The student never sees a real training image: the real training split is removed before the run starts
(:func:`without_training_images`); the held-out validation split (to choose tau for the tuned baseline) and
the test split (to score the student) are read by evaluation passes only. The lifecycle meters synthesis and
the student's steps as two phases, so the bill of each is recorded.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch

from greenkd_utils.core.augment import BatchAugment, standardize
from greenkd_utils.core.dfkd.config import DFKDConfig
from greenkd_utils.core.dfkd.pool import SyntheticPool
from greenkd_utils.core.dfkd.synthesizers import make_synthesizer
from greenkd_utils.core.losses import kd_loss
from greenkd_utils.core.models import create_model
from greenkd_utils.energy.flops import kd_step_flops
from greenkd_utils.runs.device_data import DeviceData, prepare_data, split_accuracies
from greenkd_utils.runs.execution import ExecutionPlan, make_optimizer, make_scheduler
from greenkd_utils.runs.lifecycle import StudentTask, register_task, train
from greenkd_utils.runs.record import RunResult
from greenkd_utils.runs.store import RunStore
from greenkd_utils.runs.tasks.classification import ClassificationTask

SAMPLES_FILE = "samples.pt"

FLOP_DEFINITION = (
    "data-free KD FLOPs = synthesis FLOPs + student FLOPs. Synthesis: rounds x (iterations x FLOPs of one "
    "optimisation step + the round's closing passes), a step counted on its real passes (teacher forward and "
    "backward to the images or generator, student forward and backward for the adversarial term, and for CMI "
    "the generator, the second teacher pass of the contrastive view and the projection head). Student: samples "
    "seen x (teacher forward + student forward + student backward) per sample"
)

# Independent random streams per epoch, so a resumed run draws what an uninterrupted one would.
_SYNTHESIS_STREAM, _KD_STREAM = 1, 2


def stream_seed(seed: int, epoch: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0])


def without_training_images(data: DeviceData) -> DeviceData:
    """``data`` with its training split emptied: what a data-free student may be given."""
    x, y = data.train
    return dataclasses.replace(data, train=(x[:0], y[:0]))


def load_samples(result: RunResult, store: RunStore) -> Dict[str, torch.Tensor]:
    """The last round's synthesized images (uint8) and the classes they were made for, digest checked."""
    return store.load_artifact(result.config, SAMPLES_FILE)


@register_task
class DataFreeKDTask(StudentTask):
    """DeepInversion or CMI synthesis from a trained teacher, and a student distilled on what it made."""

    name = "data_free_kd"
    config_type = DFKDConfig
    epoch_phases = ("synthesis", "training")
    flop_definition = FLOP_DEFINITION
    result_methods = {"load_samples": load_samples}
    checkpointed = ("model", "optimizer", "scheduler", "synthesizer", "pool")
    counters = ("samples_seen", "images_evaluated", "flops_per_step", "flops_close")
    load_model = staticmethod(ClassificationTask.load_model)  # the student is a classifier like any other

    @classmethod
    def recognises(cls, config_dict: Dict[str, Any]) -> bool:
        return config_dict.get("role") == "dfkd"

    @classmethod
    def upgrade_record(cls, record: Dict[str, Any]) -> Dict[str, Any]:
        if "energy_by_phase" in record or "energy_synthesis" not in record:
            return record
        # Written before the lifecycle was unified: the student phase included its evaluation passes.
        record = dict(record)
        record["energy_by_phase"] = {"synthesis": record.pop("energy_synthesis"), "training": record.pop("energy_student")}
        record["wall_time_by_phase"] = {"synthesis": record.pop("wall_time_synthesis_s")}
        flops = dict(record["flops"])
        flops["by_phase"] = {"synthesis": flops["synthesis_flops"], "training": flops["student_flops"]}
        record["flops"] = flops
        record["task"] = cls.name
        return record

    def __init__(self, config: DFKDConfig, device, dependencies, store, data_root=None, **options):
        super().__init__(config, device, dependencies, store, data_root, **options)
        self.data = without_training_images(prepare_data(config, device, None if data_root is None else str(data_root)))

    def build(self, temperature) -> None:
        config, data, settings, synthesis = self.config, self.data, self.config.train, self.config.synthesis
        if data.train[1].numel() != 0:
            raise ValueError("a data-free KD student must not be given real training images")
        self.plan = plan = ExecutionPlan.for_run(settings, self.device)
        self.model = plan.prepare_model(create_model(config.model, data.num_classes, data.in_channels))
        self.teacher = self.teacher.to(self.device).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.synthesizer = make_synthesizer(
            synthesis, self.teacher, self.model, data.num_classes, data.input_shape, data.mean, data.std, self.device
        )
        self.pool = SyntheticPool(data.input_shape, self.device)
        self.optimizer = make_optimizer(self.model, settings, plan, temperature.parameters() if temperature is not None else ())
        self.scheduler = make_scheduler(self.optimizer, config.kd_steps, settings)
        self.augment = BatchAugment(settings.augment)
        self.per_sample = kd_step_flops(self.teacher, self.model, data.input_shape)
        self.flops_per_step = self.flops_close = None
        self.samples_seen = self.images_evaluated = 0
        self.last_round_stats: Dict[str, float] = {}

    @property
    def steps_per_epoch(self) -> int:
        return self.config.kd_steps

    @property
    def progress_steps_per_epoch(self) -> int:
        return self.config.synthesis.iterations + self.config.kd_steps

    def run_phase(self, phase: str, epoch: int, taus, on_step) -> Dict[str, Any]:
        return self._synthesize(epoch, on_step) if phase == "synthesis" else self._distil(epoch, taus, on_step)

    def _synthesize(self, epoch: int, on_step) -> Dict[str, Any]:
        """One synthesis round; its images join the pool."""
        last_round = self.synthesizer.synthesize(
            stream_seed(self.config.seed, epoch, _SYNTHESIS_STREAM), count_flops=self.flops_per_step is None
        )
        if last_round.flops_per_step is not None:
            self.flops_per_step, self.flops_close = last_round.flops_per_step, last_round.flops_close
        self.pool.add(last_round.images, last_round.targets)
        on_step(self.config.synthesis.iterations)
        return {"pool_size": len(self.pool), **{f"synthesis_{k}": v for k, v in last_round.stats.items()}}

    def _distil(self, epoch: int, taus, on_step) -> Dict[str, Any]:
        """The student's steps on batches drawn from the whole pool."""
        config, data, settings = self.config, self.data, self.config.train
        self.model.train()
        generator = torch.Generator(device=self.device).manual_seed(stream_seed(config.seed, epoch, _KD_STREAM))
        loss_sum = torch.zeros((), device=self.device)
        agree = torch.zeros((), device=self.device)
        seen = 0
        for step in range(config.kd_steps):
            idx = self.pool.sample_indices(settings.batch_size, generator)
            images = self.augment(self.pool.images[idx].float() / 255.0, generator)
            x = self.plan.prepare_batch(standardize(images, data.mean, data.std))
            with self.plan.autocast():
                with torch.no_grad():
                    teacher_logits = self.teacher(x)
                student_logits = self.model(x)
            # Synthetic images have no labels: the teacher's class stands in where alpha < 1.
            pseudo_labels = teacher_logits.argmax(1)
            loss = kd_loss(
                config.loss, student_logits.float(), teacher_logits.float(), pseudo_labels, taus[step],
                alpha=config.alpha, kl_reduction=config.kl_reduction,
                logit_standardization=config.logit_standardization,
            )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            loss_sum += loss.detach() * idx.numel()
            agree += (student_logits.detach().argmax(1) == pseudo_labels).sum()
            seen += idx.numel()
            on_step(1)
        self.samples_seen += seen
        kd_loss_mean, agreement = torch.stack([loss_sum / seen, agree * 100.0 / seen]).tolist()
        return {"kd_loss": kd_loss_mean, "student_teacher_agreement": agreement, "seen": seen}

    def evaluate(self, epoch: int, last: bool) -> Dict[str, Any]:
        # Held-out real images, never trained on.
        data = self.data
        self.images_evaluated += data.n_evaluated
        return split_accuracies(self.model, data, self.plan)

    def finish(self, run_dir: Path) -> Dict[str, Any]:
        # The newest round's images, for a look at what the student learned from.
        newest = slice(max(0, len(self.pool) - self.config.synthesis.batch_size), len(self.pool))
        self.store.save_artifact(run_dir, SAMPLES_FILE, {"images": self.pool.images[newest].cpu(),
                                                         "targets": self.pool.targets[newest].cpu()})
        last = self.history[-1]
        return {
            "test_accuracy": last["test_accuracy"],
            "val_accuracy": last["val_accuracy"],
            "teacher_test_accuracy": float(self.teacher_result.test_accuracy),
            "pool": {"size": len(self.pool), "class_counts": self.pool.class_counts(self.data.num_classes)},
        }

    def flops(self) -> Dict[str, Any]:
        synthesis = self.config.synthesis
        rounds = self.epochs
        synthesis_flops = float(rounds) * (synthesis.iterations * float(self.flops_per_step) + float(self.flops_close))
        return {
            "by_phase": {
                "synthesis": synthesis_flops,
                "training": float(self.samples_seen) * float(self.per_sample.total),
                "evaluation": float(self.per_sample.student_forward) * self.images_evaluated,
            },
            "synthesis_rounds": rounds,
            "synthesis_iterations_per_round": synthesis.iterations,
            "synthesis_flops_per_step": int(self.flops_per_step),
            "synthesis_flops_round_close": int(self.flops_close),
            "student_per_sample": self.per_sample.to_dict(),
            "student_samples_seen": self.samples_seen,
            "images_evaluated": self.images_evaluated,
        }

    def describe_data(self) -> Dict[str, Any]:
        return {**self.data.describe(), "n_train_images_seen_by_student": 0}




def train_dfkd(config: DFKDConfig, store: RunStore, device: str | torch.device | None = "auto",
               data_root: str | os.PathLike | None = None, progress: bool = True) -> RunResult:
    """Load ``config``'s finished run from ``store``, or train it (and its teacher, once)."""
    return train(config, store, device=device, data_root=data_root, progress=progress)
