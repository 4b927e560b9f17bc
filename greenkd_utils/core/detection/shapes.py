"""A procedurally generated detection data set: coloured squares, circles and triangles on noise.

It stands in for PASCAL VOC in the demo and smoke profiles: real boxes and
several classes, a few hundred images, generated in a second from a seed (no
download). Colours are random and shared by every class, so only the shape
tells the classes apart. Objects are kept from overlapping much (IoU <= 0.2)
so that every box is visible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from greenkd_utils.core.detection.dataset import DetectionDataset, DetectionSplits

SHAPE_CLASSES = ("square", "circle", "triangle")


@dataclass(frozen=True)
class ShapesSettings:
    """What the generator draws; every field changes the images, so it is part of a run's config."""

    num_train: int = 300  # training images; the test images come from a stream of their own
    num_test: int = 100
    min_objects: int = 1  # objects per image, drawn uniformly from [min_objects, max_objects]
    max_objects: int = 3
    min_size: float = 0.25  # an object's side as a fraction of the image side, from [min_size, max_size]
    max_size: float = 0.55
    seed: int = 0  # the images' own seed, apart from the run's: every seed of a run sees the same images

    def __post_init__(self):
        if self.num_train < 1 or self.num_test < 1:
            raise ValueError(f"shapes needs at least one train and one test image; got {self.num_train}, {self.num_test}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"need 1 <= min_objects <= max_objects; got {self.min_objects}, {self.max_objects}")
        if not 0.0 < self.min_size <= self.max_size <= 1.0:
            raise ValueError(f"need 0 < min_size <= max_size <= 1; got {self.min_size}, {self.max_size}")
        for name in ("min_size", "max_size"):
            object.__setattr__(self, name, float(getattr(self, name)))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _draw_image(rng: np.random.Generator, size: int, settings: ShapesSettings):
    """One image (3, size, size) uint8 with its boxes (n, 4) and labels 1..3."""
    from PIL import Image, ImageDraw

    background = rng.integers(0, 70, size=3)
    noise = rng.normal(0.0, 12.0, size=(size, size, 3))
    pixels = np.clip(background + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    boxes, labels = [], []
    wanted = int(rng.integers(settings.min_objects, settings.max_objects + 1))
    for _ in range(50 * wanted):  # rejection sampling of non-overlapping placements
        if len(boxes) == wanted:
            break
        side = int(round(rng.uniform(settings.min_size, settings.max_size) * size))
        side = max(side, 4)
        x1, y1 = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        box = np.array([x1, y1, x1 + side, y1 + side], dtype=np.float32)
        if any(_iou(box, other) > 0.2 for other in boxes):
            continue
        label = int(rng.integers(1, len(SHAPE_CLASSES) + 1))
        colour = tuple(int(c) for c in rng.integers(120, 256, size=3))
        # PIL's shapes include their last pixel: the drawn region is [x1, x1 + side) like the box.
        last = side - 1
        if SHAPE_CLASSES[label - 1] == "square":
            draw.rectangle([x1, y1, x1 + last, y1 + last], fill=colour)
        elif SHAPE_CLASSES[label - 1] == "circle":
            draw.ellipse([x1, y1, x1 + last, y1 + last], fill=colour)
        else:
            draw.polygon([(x1 + last / 2, y1), (x1, y1 + last), (x1 + last, y1 + last)], fill=colour)
        boxes.append(box)
        labels.append(label)
    return np.asarray(image).transpose(2, 0, 1).copy(), np.stack(boxes), np.asarray(labels, dtype=np.int64)


def _make_split(name: str, count: int, size: int, settings: ShapesSettings, seed: int) -> DetectionDataset:
    rng = np.random.default_rng(seed)
    images = np.empty((count, 3, size, size), dtype=np.uint8)
    annotations = []
    for i in range(count):
        images[i], boxes, labels = _draw_image(rng, size, settings)
        annotations.append((boxes, labels, np.zeros(len(labels), dtype=bool)))  # no shape is "difficult"
    image_ids = [f"{name}/{i:05d}" for i in range(count)]
    return DetectionDataset.from_arrays("shapes", images, annotations, SHAPE_CLASSES, image_ids)


def make_shapes(settings: ShapesSettings = ShapesSettings(), image_size: int = 64) -> DetectionSplits:
    """Train and test sets drawn from independent streams of ``settings.seed``."""
    if image_size < 16:
        raise ValueError(f"shapes needs images of at least 16 pixels; got {image_size}")
    # Separate streams: changing num_train never changes the test images.
    train_seed, test_seed = np.random.SeedSequence(settings.seed).spawn(2)
    train = _make_split("train", settings.num_train, image_size, settings, train_seed)
    test = _make_split("test", settings.num_test, image_size, settings, test_seed)
    return DetectionSplits.of(train, test)
