"""A classification dataset on the training device, and the passes that read it.

The images stay on the device as uint8 for the whole run; batches are indexed, augmented and standardised
there, so the loop never waits on the host.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch

from greenkd_utils.core.augment import standardize
from greenkd_utils.core.data import load_dataset
from greenkd_utils.core.image_dataset import ImageDataset
from greenkd_utils.runs.execution import ExecutionPlan

# The validation split is the same for every run of a dataset, whatever its seed.
VALIDATION_SPLIT_SEED = 0

# What a model is built from: the dataset's, kept in every run's record.
SHAPE_FIELDS = ("num_classes", "in_channels", "image_size")


@dataclass
class DeviceData:
    """Train/validation/test tensors on the training device (images as uint8)."""

    train: Tuple[torch.Tensor, torch.Tensor]
    val: Tuple[torch.Tensor, torch.Tensor]
    test: Tuple[torch.Tensor, torch.Tensor]
    mean: torch.Tensor
    std: torch.Tensor
    num_classes: int
    in_channels: int
    image_size: int
    class_names: List[str] = field(default_factory=list)

    @property
    def input_shape(self) -> Tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)

    @property
    def n_evaluated(self) -> int:
        """Images one evaluation pass reads (validation and test)."""
        return int(self.val[1].numel() + self.test[1].numel())

    def describe(self) -> Dict[str, Any]:
        """What a run's record keeps of its data: the shape a model is built from, and the split sizes."""
        shape = {name: getattr(self, name) for name in SHAPE_FIELDS}
        sizes = {f"n_{split}": int(getattr(self, split)[1].numel()) for split in ("train", "val", "test")}
        return {**shape, **sizes, "class_names": list(self.class_names)}


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, root: Optional[str]) -> ImageDataset:
    # Decoding CIFAR or Tiny ImageNet takes seconds to minutes: do it once per process.
    return load_dataset(name, root=root)


def prepare_data(config, device: torch.device, data_root: Optional[str] = None) -> DeviceData:
    """The data of ``config`` (its dataset, subsets and validation fraction) on ``device``."""
    dataset = _load_cached(config.dataset, None if data_root is None else str(data_root))
    if config.train_subset or config.test_subset:
        dataset = dataset.subset(train=config.train_subset, test=config.test_subset, seed=0)
    (train_x, train_y), (val_x, val_y) = dataset.split_validation(config.val_fraction, seed=VALIDATION_SPLIT_SEED)

    def put(x, y):
        return x.to(device), y.to(device)

    return DeviceData(
        train=put(train_x, train_y),
        val=put(val_x, val_y),
        test=put(dataset.test_images, dataset.test_labels),
        mean=torch.tensor(dataset.mean, dtype=torch.float32, device=device),
        std=torch.tensor(dataset.std, dtype=torch.float32, device=device),
        class_names=list(dataset.class_names),
        **{name: getattr(dataset, name) for name in SHAPE_FIELDS},
    )


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator, device) -> Iterator[torch.Tensor]:
    """Index batches of full size in a fresh random order. The last partial batch is dropped, so every
    step has the same shape (no recompilation) and the next epoch's shuffle covers the dropped samples."""
    order = torch.randperm(n, device=device, generator=generator)
    for start in range(0, max(n - batch_size, 0) + 1, batch_size):
        yield order[start : start + batch_size]


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    return max(n_train // batch_size, 1)


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module,
    images: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    batch_size: int = 512,
    plan: Optional[ExecutionPlan] = None,
) -> torch.Tensor:
    """Logits (float32, on the images' device) of a model on uint8 images, in eval mode."""
    was_training = model.training
    model.eval()
    outputs = []
    for start in range(0, images.shape[0], batch_size):
        x = standardize(images[start : start + batch_size].float() / 255.0, mean, std)
        if plan is not None:
            x = plan.prepare_batch(x)
        with plan.autocast() if plan is not None else contextlib.nullcontext():
            outputs.append(model(x).float())
    model.train(was_training)
    if not outputs:
        return torch.empty(0, device=images.device)
    return torch.cat(outputs)


def accuracy_tensor(model, images, labels, mean, std, plan=None) -> torch.Tensor:
    """Accuracy in percent as a 0-d device tensor (no host sync); NaN for an empty split."""
    if labels.numel() == 0:
        return torch.tensor(float("nan"), device=labels.device)
    logits = predict_logits(model, images, mean, std, plan=plan)
    return (logits.argmax(1) == labels).float().mean() * 100.0


def split_accuracies(model, data: DeviceData, plan=None) -> Dict[str, float]:
    """``val_accuracy`` and ``test_accuracy`` in percent, read with one host synchronisation."""
    val = accuracy_tensor(model, *data.val, data.mean, data.std, plan)
    test = accuracy_tensor(model, *data.test, data.mean, data.std, plan)
    val_acc, test_acc = torch.stack([val, test]).tolist()
    return {"val_accuracy": val_acc, "test_accuracy": test_acc}
