"""Quantization-aware training (QAT) of a student: the QAT row of the paper's Table 8.

QAT is PyTorch's FX graph-mode QAT (:mod:`greenkd_utils.core.quantization`): the network is traced, fused and
fitted with fake-quantize modules, trained, and converted to an int8 model that runs on the CPU. By default
QAT fine-tunes the finished float student (its dependency ``initial``);
:class:`~greenkd_utils.runs.sweep.QATPipeline` bills both stages. The record's accuracy is the int8 model's; the fake-quant network's and the float start's are extras.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn

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
from greenkd_utils.runs.device_data import accuracy_tensor, split_accuracies
from greenkd_utils.runs.record import RunResult
from greenkd_utils.runs.registry import register_task
from greenkd_utils.runs.store import RunStore
from greenkd_utils.runs.task import Batch, EpochTally, Evaluation, RunCounts
from greenkd_utils.runs.tasks.classification import FLOP_DEFINITION as CLASSIFICATION_FLOPS
from greenkd_utils.runs.tasks.classification import ImageClassifierTask

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
class QATTask(ImageClassifierTask):
    """FX quantization-aware training of a classifier, then conversion to int8."""

    name = "qat"
    config_type = QATConfig
    flop_definition = f"{CLASSIFICATION_FLOPS}; {QAT_FLOP_NOTE}"
    caches_teacher_outputs = False
    config_mark = ("kind", "qat_fx")

    @classmethod
    def dependencies(cls, config: QATConfig) -> Dict[str, Any]:
        return {"initial": config.init_from} if config.init_from is not None else {}

    @property
    def temperature_spec(self):
        return None

    def __init__(self, config: QATConfig, device, dependencies, store, data_root=None, **options):
        quantization_api()  # fail before any training if this torch cannot do it
        # prepare_data reads only the data fields (dataset, subsets, val_fraction) QATConfig shares with RunConfig.
        super().__init__(config, device, dependencies, store, data_root, **options)
        self.start = store.load_state_dict(config.init_from) if "initial" in dependencies else None

    @property
    def train_settings(self):
        # Fake quantization runs in float32: bf16 autocast and compilation are off whatever the profile says.
        return dataclasses.replace(self.config.train, fast=False, compile=False)

    def build(self) -> None:
        config, data = self.config, self.data
        self._build_plan(self.train_settings)
        float_model = create_model(config.model, data.num_classes, data.in_channels)
        self.initial_test = None
        if self.start is not None:
            float_model.load_state_dict(self.start)
            self.initial_test = float(accuracy_tensor(float_model.to(self.device), *data.test, data.mean, data.std))
        self.fp32_bytes = state_dict_bytes(float_model)
        # Fusion folds each batch norm, with its running statistics, into the QAT convolution it follows.
        self.model = prepare_qat(float_model.cpu(), config.backend, data.input_shape).to(self.device)
        self.per_sample = qat_step_flops(self.model, data.input_shape)

    @contextlib.contextmanager
    def epoch_context(self, epoch: int):
        self.frozen = epoch >= self.config.freeze_epoch
        # Training mode first, then the freeze: a fused conv-bn keeps its frozen statistics through the
        # lifecycle's own train() call at the start of the training phase.
        self.model.train()
        with quiet_quantization_warnings():
            if self.frozen:
                freeze_quantization(self.model)
            yield

    def forward_train(self, batch: Batch, tau, teacher_outputs=None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        x = self._inputs(batch)
        with self.plan.autocast():
            logits = self.model(x)
        return logits, {"ce": F.cross_entropy(logits.float(), batch.labels)}

    def summarise_epoch(self, tally: EpochTally) -> Dict[str, Any]:
        return {**super().summarise_epoch(tally), "observers_frozen": self.frozen}

    def evaluate(self, epoch: int, last: bool) -> Evaluation:
        # The fake-quant network in float; the int8 model is evaluated once, after training (finish).
        return Evaluation(split_accuracies(self.model, self.data), self.data.n_evaluated)

    def finish(self, run_dir: Path) -> Evaluation:
        data, backend = self.data, self.config.backend
        int8_model = convert_to_int8(self.model, backend)
        int8_bytes = state_dict_bytes(int8_model)
        int8_test = int8_accuracy(int8_model, *data.test, data.mean, data.std, backend)
        int8_val = int8_accuracy(int8_model, *data.val, data.mean, data.std, backend)
        return Evaluation({
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
        }, data.n_evaluated)

    def flops(self, counts: RunCounts) -> Dict[str, Any]:
        return {**student_run_flops(self.per_sample, counts.samples_seen, counts.images_evaluated), "note": QAT_FLOP_NOTE}

    @classmethod
    def load_model(cls, result: RunResult, store: RunStore, device="cpu") -> nn.Module:
        return load_prepared_model(result, store).to(device)
