"""Quantization-aware training (QAT) of a student: the QAT row of the paper's Table 8.

QAT is PyTorch's FX graph-mode QAT (:mod:`greenkd_utils.core.quantization`): the network is traced, fused and
fitted with fake-quantize modules, trained, and converted to an int8 model that runs on the CPU. By default
QAT fine-tunes the finished float student (its dependency ``initial``); :class:`QATPipeline` bills both
stages. The record's accuracy is the int8 model's; the fake-quant network's and the float start's are extras.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from greenkd_utils.core.augment import BatchAugment
from greenkd_utils.core.models import create_model
from greenkd_utils.core.quantization import (
    BYTES_PER_MB,
    QATConfig,
    convert_to_int8,
    freeze_quantization,
    int8_accuracy,
    prepare_qat,
    qat_step_flops,
    quantization_api,
    quiet_quantization_warnings,
    state_dict_bytes,
)
from greenkd_utils.energy.flops import student_run_flops
from greenkd_utils.runs.device_data import (
    accuracy_tensor,
    prepare_data,
    split_accuracies,
    steps_per_epoch,
)
from greenkd_utils.runs.execution import ExecutionPlan, make_optimizer, make_scheduler
from greenkd_utils.runs.lifecycle import Task, register_task, train
from greenkd_utils.runs.record import RunResult
from greenkd_utils.runs.store import RunStore
from greenkd_utils.runs.sweep import BilledResult
from greenkd_utils.runs.tasks.classification import (
    FLOP_DEFINITION as CLASSIFICATION_FLOPS,
)
from greenkd_utils.runs.tasks.classification import train_epoch

QAT_FLOP_NOTE = (
    "QAT: the fake-quantize operations (elementwise scale, round, clamp on weights and activations) are not "
    "counted by torch.utils.flop_counter, so the count is that of the float convolutions and matrix products "
    "of the fused network"
)


def _input_shape(result: RunResult):
    return (result.data["in_channels"], result.data["image_size"], result.data["image_size"])


def load_prepared_model(result: RunResult, store: RunStore) -> nn.Module:
    """The trained fake-quant network (CPU, eval mode), weights loaded with ``weights_only=True``."""
    model = create_model(result.config.model, result.data["num_classes"], result.data["in_channels"])
    prepared = prepare_qat(model, result.config.backend, _input_shape(result))
    prepared.load_state_dict(store.load_state_dict(result.config))
    return prepared.eval()


def load_int8_model(result: RunResult, store: RunStore) -> nn.Module:
    """The converted int8 model (CPU, eval mode)."""
    return convert_to_int8(load_prepared_model(result, store), result.config.backend)


@register_task
class QATTask(Task):
    """FX quantization-aware training of a classifier, then conversion to int8."""

    name = "qat"
    config_type = QATConfig
    flop_definition = f"{CLASSIFICATION_FLOPS}; {QAT_FLOP_NOTE}"
    result_methods = {"load_prepared_model": load_prepared_model, "load_int8_model": load_int8_model,
                      "input_shape": _input_shape}

    @classmethod
    def dependencies(cls, config: QATConfig) -> Dict[str, Any]:
        return {"initial": config.init_from} if config.init_from is not None else {}

    @classmethod
    def recognises(cls, config_dict: Dict[str, Any]) -> bool:
        return config_dict.get("kind") == "qat_fx"

    def __init__(self, config: QATConfig, device, dependencies, store, data_root=None, **options):
        super().__init__(config, device, dependencies, store, data_root, **options)
        quantization_api()  # fail before any training if this torch cannot do it
        # prepare_data reads only the data fields (dataset, subsets, val_fraction) QATConfig shares with RunConfig.
        self.data = prepare_data(config, device, None if data_root is None else str(data_root))
        self.start = store.load_state_dict(config.init_from) if "initial" in dependencies else None

    def build(self, temperature) -> None:
        config, data = self.config, self.data
        # Fake quantization runs in float32: bf16 autocast and compilation are off whatever the profile says.
        self.settings = settings = dataclasses.replace(config.train, fast=False, compile=False)
        self.plan = plan = ExecutionPlan.for_run(settings, self.device)
        float_model = create_model(config.model, data.num_classes, data.in_channels)
        self.initial_test = None
        if self.start is not None:
            float_model.load_state_dict(self.start)
            self.initial_test = float(accuracy_tensor(float_model.to(self.device), *data.test, data.mean, data.std))
        self.fp32_bytes = state_dict_bytes(float_model)
        # Fusion folds each batch norm, with its running statistics, into the QAT convolution it follows.
        self.model = prepare_qat(float_model.cpu(), config.backend, data.input_shape).to(self.device)
        self.per_sample = qat_step_flops(self.model, data.input_shape)
        self.batch_size = min(settings.batch_size, data.train[1].numel())
        self.optimizer = make_optimizer(self.model, settings, plan)
        self.scheduler = make_scheduler(self.optimizer, self.steps_per_epoch, settings)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.augment = BatchAugment(settings.augment)
        self.samples_seen = self.images_evaluated = 0

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(self.data.train[1].numel(), self.config.train.batch_size)

    def run_phase(self, phase: str, epoch: int, taus, on_step) -> Dict[str, Any]:
        data = self.data
        self.model.train()
        frozen = epoch >= self.config.freeze_epoch
        with quiet_quantization_warnings():
            if frozen:
                freeze_quantization(self.model)
            sums = train_epoch(
                self.model, None, data.train, data.mean, data.std, self.optimizer, self.scheduler, None,
                lambda logits, _teacher, labels, _tau: F.cross_entropy(logits.float(), labels),
                self.augment, self.generator, self.plan, self.batch_size, on_step=on_step,
            )
        seen = sums["seen"]
        self.samples_seen += seen
        train_loss, train_acc = torch.stack([sums["loss_sum"] / seen, sums["correct"] * 100.0 / seen]).tolist()
        return {"train_loss": train_loss, "train_accuracy": train_acc, "observers_frozen": frozen, "seen": seen}

    def evaluate(self, epoch: int, last: bool) -> Dict[str, Any]:
        # The fake-quant network in float; the int8 model is evaluated once, after training (finish).
        data = self.data
        self.images_evaluated += data.n_evaluated
        with quiet_quantization_warnings():
            return split_accuracies(self.model, data)

    def finish(self, run_dir: Path) -> Dict[str, Any]:
        data, backend = self.data, self.config.backend
        int8_model = convert_to_int8(self.model, backend)
        int8_bytes = state_dict_bytes(int8_model)
        int8_test = int8_accuracy(int8_model, *data.test, data.mean, data.std, backend)
        int8_val = int8_accuracy(int8_model, *data.val, data.mean, data.std, backend)
        self.images_evaluated += data.n_evaluated
        return {
            "test_accuracy": int8_test,
            "val_accuracy": int8_val,
            "fake_quant_test_accuracy": self.history[-1]["test_accuracy"],
            "initial_test_accuracy": self.initial_test,
            "model_size": {
                "fp32_bytes": self.fp32_bytes,
                "int8_bytes": int8_bytes,
                "fp32_mb": self.fp32_bytes / BYTES_PER_MB,
                "int8_mb": int8_bytes / BYTES_PER_MB,
                "compression": self.fp32_bytes / int8_bytes,
                "definition": "size of the serialized state_dict (torch.save); MB = 1e6 bytes",
            },
            "int8_evaluation_device": "cpu",
        }

    def flops(self) -> Dict[str, Any]:
        return {**student_run_flops(self.per_sample, self.samples_seen, self.images_evaluated), "note": QAT_FLOP_NOTE}


    def describe_data(self) -> Dict[str, Any]:
        return self.data.describe()



    @classmethod
    def load_model(cls, result: RunResult, store: RunStore, device="cpu") -> nn.Module:
        return load_prepared_model(result, store).to(device)


class QATPipeline(BilledResult):
    """What getting the int8 model cost: the float run QAT started from (if any) plus QAT itself; the accuracy
    is the int8 model's."""

    def __init__(self, qat: RunResult, initial: Optional[RunResult] = None):
        super().__init__(runs=[qat] if initial is None else [initial, qat], chosen=qat)

    @property
    def qat(self) -> RunResult:
        return self.chosen

    @property
    def initial(self) -> Optional[RunResult]:
        return self.runs[0] if len(self.runs) > 1 else None


def train_qat(config: QATConfig, store: RunStore, device: str | torch.device | None = "auto",
              data_root: str | os.PathLike | None = None, progress: bool = True) -> QATPipeline:
    """Load ``config``'s finished QAT run from ``store``, or train, convert and evaluate it (training the
    float run it starts from first, if that is not in the store)."""
    initial = None if config.init_from is None else train(config.init_from, store, device, data_root, progress)
    return QATPipeline(train(config, store, device, data_root, progress), initial)
