"""Training batches of a detection run, with the run's augmentation.

``none`` and ``flip`` work on the in-memory images on the training device;
``ssd`` (SSD's photometric distortion, zoom-out, IoU crop and flip, with
``torchvision.transforms.v2``) runs per image in DataLoader workers.
"""

from __future__ import annotations

from typing import Dict, Iterator, List, Tuple

import torch

from greenkd_utils.core.detection.config import DetectionTrainSettings
from greenkd_utils.core.detection.dataset import DetectionDataset


def _flip_batch(images: torch.Tensor, targets: List[Dict[str, torch.Tensor]], generator: torch.Generator):
    """Mirror a random half of the images, and their boxes with them."""
    flip = torch.rand(images.shape[0], generator=generator).to(images.device) < 0.5
    images = torch.where(flip.view(-1, 1, 1, 1), images.flip(3), images)
    size = images.shape[-1]
    out = []
    for flipped, target in zip(flip.tolist(), targets):
        boxes = target["boxes"]
        if flipped:
            boxes = torch.stack([size - boxes[:, 2], boxes[:, 1], size - boxes[:, 0], boxes[:, 3]], dim=1)
        out.append({"boxes": boxes, "labels": target["labels"]})
    return images, out


class _SSDAugmented(torch.utils.data.Dataset):
    """SSD's training augmentation per image, with torchvision.transforms.v2 (runs in DataLoader workers)."""

    def __init__(self, dataset: DetectionDataset):
        from torchvision.transforms import v2

        self.dataset = dataset
        size = dataset.image_size
        self.transform = v2.Compose(
            [
                v2.RandomPhotometricDistort(p=0.5),
                v2.RandomZoomOut(side_range=(1.0, 4.0), p=0.5),
                v2.RandomIoUCrop(),
                v2.RandomHorizontalFlip(p=0.5),
                v2.Resize((size, size), antialias=True),
                v2.SanitizeBoundingBoxes(),
            ]
        )

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        from torchvision import tv_tensors

        ds = self.dataset
        keep = ~ds.difficult[index]
        size = ds.image_size
        image = tv_tensors.Image(ds.images[index])
        boxes = tv_tensors.BoundingBoxes(ds.boxes[index][keep], format="XYXY", canvas_size=(size, size))
        image, target = self.transform(image, {"boxes": boxes, "labels": ds.labels[index][keep]})
        return index, image.as_subclass(torch.Tensor), target["boxes"].as_subclass(torch.Tensor), target["labels"]


def _collate(items):
    indices, images, boxes, labels = zip(*items)
    return torch.tensor(indices), torch.stack(images), [{"boxes": b, "labels": l} for b, l in zip(boxes, labels)]


def iterate_batches(
    data: DetectionDataset,
    settings: DetectionTrainSettings,
    generator: torch.Generator,
    device: torch.device,
    images_on_device: torch.Tensor,
    targets_on_device: List[Dict[str, torch.Tensor]],
    num_workers: int = 0,
) -> Iterator[Tuple[torch.Tensor, torch.Tensor, List[Dict[str, torch.Tensor]]]]:
    """(indices, uint8 images, targets) of one epoch, full batches in a fresh random order.

    ``generator`` (on the CPU) decides the order and the flips. The last partial batch is dropped, so
    every step has the same shape; the next epoch's order covers the dropped images.
    """
    n, batch = len(data), min(settings.batch_size, len(data))
    order = torch.randperm(n, generator=generator)
    chunks = [order[s : s + batch] for s in range(0, n - batch + 1, batch)]
    if settings.augment == "ssd":
        # The workers' random streams derive from this seed (DataLoader adds the worker id).
        workers_seed = int(torch.randint(2**31, (1,), generator=generator))
        loader = torch.utils.data.DataLoader(
            _SSDAugmented(data),
            batch_sampler=[c.tolist() for c in chunks],
            num_workers=num_workers,
            collate_fn=_collate,
            pin_memory=device.type == "cuda",
            generator=torch.Generator().manual_seed(workers_seed),
        )
        for idx, images, targets in loader:
            targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
            yield idx, images.to(device, non_blocking=True), targets
        return
    for idx in chunks:
        images = images_on_device[idx.to(images_on_device.device)]
        targets = [targets_on_device[i] for i in idx.tolist()]
        if settings.augment == "flip":
            images, targets = _flip_batch(images, targets, generator)
        yield idx, images, targets
