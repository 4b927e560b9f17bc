"""Data-free KD runs (the paper's Table 6): each epoch synthesizes one round of images from the teacher,
which join a pool, then distils the student on batches drawn from the whole pool.

The student never sees a real training image: the real training split is removed before the run starts
(:func:`without_training_images`); the held-out validation split (to choose tau for the tuned baseline) and
the test split (to score the student) are read by evaluation passes only. The lifecycle meters synthesis and
the student's steps as two phases, so the bill of each is recorded.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, Iterator, Tuple

import torch

from greenkd_utils.core.augment import BatchAugment, standardize
from greenkd_utils.core.dfkd.config import DFKDConfig
from greenkd_utils.core.dfkd.pool import SyntheticPool
from greenkd_utils.core.dfkd.synthesizers import make_synthesizer
from greenkd_utils.core.losses import kd_loss
from greenkd_utils.core.models import create_model
from greenkd_utils.energy.flops import kd_step_flops
from greenkd_utils.runs.device_data import DeviceData, prepare_data
from greenkd_utils.runs.execution import ExecutionPlan
from greenkd_utils.runs.record import RunResult
from greenkd_utils.runs.registry import register_task
from greenkd_utils.runs.store import RunStore
from greenkd_utils.runs.task import Batch, EpochTally, Evaluation, RunCounts, Task

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


def without_training_images(data: DeviceData) -> DeviceData:
    """``data`` with its training split emptied: what a data-free student may be given."""
    x, y = data.train
    return dataclasses.replace(data, train=(x[:0], y[:0]))


def load_samples(result: RunResult, store: RunStore) -> Dict[str, torch.Tensor]:
    """The last round's synthesized images (uint8) and the classes they were made for, digest checked."""
    return store.load_artifact(result.config, SAMPLES_FILE)


@register_task
class DataFreeKDTask(Task):
    """DeepInversion or CMI synthesis from a trained teacher, and a student distilled on what it made."""

    name = "data_free_kd"
    config_type = DFKDConfig
    epoch_phases = ("synthesis", "training")
    flop_definition = FLOP_DEFINITION
    checkpointed = ("model", "synthesizer", "pool")
    counters = ("flops_per_step", "flops_close")
    config_mark = ("role", "dfkd")

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

    @classmethod
    def build_model(cls, config, data: Dict[str, Any]) -> torch.nn.Module:
        return create_model(config.model, data["num_classes"], data["in_channels"])

    def __init__(self, config: DFKDConfig, device, dependencies, store, data_root=None, **options):
        super().__init__(config, device, dependencies, store, data_root, **options)
        self.data = without_training_images(prepare_data(config, device, None if data_root is None else str(data_root)))
        self.teacher_result = dependencies["teacher"]

    def build(self) -> None:
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
        self.augment = BatchAugment(settings.augment)
        self.per_sample = kd_step_flops(self.teacher, self.model, data.input_shape)
        self.flops_per_step = self.flops_close = None

    @property
    def steps_per_epoch(self) -> int:
        return self.config.kd_steps  # student steps after each synthesis round

    @property
    def progress_steps_per_epoch(self) -> int:
        return self.config.synthesis.iterations + self.config.kd_steps

    def run_phase(self, phase: str, epoch: int, on_step) -> Dict[str, Any]:
        """One synthesis round; its images join the pool."""
        last_round = self.synthesizer.synthesize(
            self.epoch_seed(epoch, _SYNTHESIS_STREAM), count_flops=self.flops_per_step is None
        )
        if last_round.flops_per_step is not None:
            self.flops_per_step, self.flops_close = last_round.flops_per_step, last_round.flops_close
        self.pool.add(last_round.images, last_round.targets)
        on_step(self.config.synthesis.iterations)
        return {"pool_size": len(self.pool), **{f"synthesis_{k}": v for k, v in last_round.stats.items()}}

    def batches(self, epoch: int) -> Iterator[Batch]:
        """Batches drawn from the whole pool, from the epoch's own random stream."""
        generator = self.epoch_generator(epoch, _KD_STREAM)
        for _ in range(self.config.kd_steps):
            idx = self.pool.sample_indices(self.config.train.batch_size, generator)
            yield Batch(self.augment(self.pool.images[idx].float() / 255.0, generator), index=idx)

    def forward_train(self, batch: Batch, tau, teacher_outputs=None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        config, data = self.config, self.data
        x = self.plan.prepare_batch(standardize(batch.inputs, data.mean, data.std))
        with self.plan.autocast():
            with torch.no_grad():
                teacher_logits = self.teacher(x)
            student_logits = self.model(x)
        # Synthetic images have no labels: the teacher's class stands in where alpha < 1, and the training
        # accuracy is the student's agreement with the teacher.
        batch.labels = teacher_logits.argmax(1)
        loss = kd_loss(
            config.loss, student_logits.float(), teacher_logits.float(), batch.labels, tau,
            alpha=config.alpha, kl_reduction=config.kl_reduction,
            logit_standardization=config.logit_standardization,
        )
        return student_logits, {"kd": loss}

    def summarise_epoch(self, tally: EpochTally) -> Dict[str, Any]:
        kd_loss_mean, agreement = tally.loss_and_accuracy()
        return {"kd_loss": kd_loss_mean, "student_teacher_agreement": agreement}

    def finish(self, run_dir: Path) -> Evaluation:
        # The newest round's images, for a look at what the student learned from.
        newest = slice(max(0, len(self.pool) - self.config.synthesis.batch_size), len(self.pool))
        self.store.save_artifact(run_dir, SAMPLES_FILE, {"images": self.pool.images[newest].cpu(),
                                                         "targets": self.pool.targets[newest].cpu()})
        last = self.history[-1]
        return Evaluation({
            "test_accuracy": last["test_accuracy"],
            "val_accuracy": last["val_accuracy"],
            "teacher_test_accuracy": float(self.teacher_result.test_accuracy),
            "pool": {"size": len(self.pool), "class_counts": self.pool.class_counts(self.data.num_classes)},
        })

    def flops(self, counts: RunCounts) -> Dict[str, Any]:
        synthesis = self.config.synthesis
        rounds = self.epochs
        synthesis_flops = float(rounds) * (synthesis.iterations * float(self.flops_per_step) + float(self.flops_close))
        return {
            "by_phase": {
                "synthesis": synthesis_flops,
                "training": float(counts.samples_seen) * float(self.per_sample.total),
                "evaluation": float(self.per_sample.student_forward) * counts.images_evaluated,
            },
            "synthesis_rounds": rounds,
            "synthesis_iterations_per_round": synthesis.iterations,
            "synthesis_flops_per_step": int(self.flops_per_step),
            "synthesis_flops_round_close": int(self.flops_close),
            "student_per_sample": self.per_sample.to_dict(),
            "student_samples_seen": counts.samples_seen,
            "images_evaluated": counts.images_evaluated,
        }

    def describe_data(self) -> Dict[str, Any]:
        return {**self.data.describe(), "n_train_images_seen_by_student": 0}
