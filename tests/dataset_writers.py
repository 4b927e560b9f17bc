"""Tiny copies of the paper's data sets, written in their real on-disk formats.

CIFAR's Python-2 style pickles with bytes keys, Tiny ImageNet's folder tree of
JPEGs, and a PASCAL VOC devkit (JPEGs, XML annotations with ``difficult``
flags, ImageSets/Main listings): the readers are exercised as they would be on
the downloaded files, without a download.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image


def _dump(path: Path, record: dict) -> None:
    with open(path, "wb") as handle:
        pickle.dump(record, handle, protocol=2)


def _cifar_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def _labels(rng: np.random.Generator, n: int, num_classes: int, classes: Optional[int]) -> list:
    """Random labels over every class, or, with ``classes``, the first ``classes`` classes in equal shares."""
    if classes is None:
        return [int(x) for x in rng.integers(0, num_classes, size=n)]
    return [int(x) for x in rng.permutation(np.arange(n) % classes)]


def write_cifar10(root: Path, per_batch: int = 4, n_test: int = 6, seed: int = 0, classes: Optional[int] = None) -> dict:
    """Five train batches, a test batch and batches.meta; returns what was written.

    ``classes``: spread every split evenly over the first ``classes`` classes (default: random labels).
    """
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rows, labels = [], []
    # Balanced over all five batches together, so each class keeps its share of the training split.
    all_labels = _labels(rng, 5 * per_batch, 10, classes) if classes is not None else None
    for i in range(1, 6):
        batch_rows = _cifar_rows(rng, per_batch)
        if all_labels is None:
            batch_labels = [int(x) for x in rng.integers(0, 10, size=per_batch)]
        else:
            batch_labels = all_labels[(i - 1) * per_batch: i * per_batch]
        _dump(folder / f"data_batch_{i}", {
            b"batch_label": f"training batch {i} of 5".encode(),
            b"labels": batch_labels,
            b"data": batch_rows,
            b"filenames": [f"img_{i}_{j}.png".encode() for j in range(per_batch)],
        })
        rows.append(batch_rows)
        labels.extend(batch_labels)
    test_rows = _cifar_rows(rng, n_test)
    test_labels = _labels(rng, n_test, 10, classes)
    _dump(folder / "test_batch", {
        b"batch_label": b"testing batch 1 of 1",
        b"labels": test_labels,
        b"data": test_rows,
        b"filenames": [f"test_{j}.png".encode() for j in range(n_test)],
    })
    names = [f"class{k}" for k in range(10)]
    _dump(folder / "batches.meta", {
        b"num_cases_per_batch": per_batch,
        b"label_names": [n.encode() for n in names],
        b"num_vis": 3072,
    })
    return {
        "train_rows": np.concatenate(rows), "train_labels": labels,
        "test_rows": test_rows, "test_labels": test_labels, "names": names,
    }


def write_cifar100(root: Path, n_train: int = 10, n_test: int = 5, seed: int = 1, classes: Optional[int] = None) -> dict:
    """``train``, ``test`` and ``meta`` with 100 fine and 20 coarse label names.

    ``classes``: only the first ``classes`` fine classes occur, in equal shares (default: random labels).
    """
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    written = {}
    for split, n in (("train", n_train), ("test", n_test)):
        rows = _cifar_rows(rng, n)
        fine = _labels(rng, n, 100, classes)
        _dump(folder / split, {
            b"filenames": [f"{split}_{j}.png".encode() for j in range(n)],
            b"batch_label": split.encode(),
            b"fine_labels": fine,
            b"coarse_labels": [f // 5 for f in fine],
            b"data": rows,
        })
        written[split] = (rows, fine)
    names = [f"fine{k}" for k in range(100)]
    _dump(folder / "meta", {
        b"fine_label_names": [n.encode() for n in names],
        b"coarse_label_names": [f"coarse{k}".encode() for k in range(20)],
    })
    written["names"] = names
    return written


TINY_WNIDS = ["n02", "n01", "n03"]  # deliberately unsorted: file order is the label order
TINY_COLOURS = {"n02": (200, 30, 30), "n01": (30, 200, 30), "n03": (30, 30, 200)}


def write_tinyimagenet(root: Path, per_class: int = 2) -> Path:
    """3 classes of solid-colour 64x64 JPEGs (one grayscale) plus a val split."""
    folder = root / "tiny-imagenet-200"
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(TINY_WNIDS) + "\n")
    (folder / "words.txt").write_text(
        "n00\tentity\n"
        "n01\tgoldfish, Carassius auratus\n"
        "n02\ttabby, tabby cat\n"
        "n03\tschool bus\n"
    )
    for wnid in TINY_WNIDS:
        images = folder / "train" / wnid / "images"
        images.mkdir(parents=True)
        for j in range(per_class):
            Image.new("RGB", (64, 64), TINY_COLOURS[wnid]).save(images / f"{wnid}_{j}.JPEG")
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    # One grayscale training image (the real set has a few).
    Image.new("L", (64, 64), 128).save(folder / "train" / "n03" / "images" / "n03_gray.JPEG")
    lines = []
    for i, wnid in enumerate(["n03", "n01", "n02", "n01"]):
        Image.new("RGB", (64, 64), TINY_COLOURS[wnid]).save(folder / "val" / "images" / f"val_{i}.JPEG")
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return folder


# (year, split, image id, (width, height), [(class, xmin, ymin, xmax, ymax, difficult)], RGB fill)
TINY_VOC = [
    ("2007", "trainval", "000005", (40, 20), [("dog", 1, 1, 20, 10, 0), ("person", 21, 5, 40, 20, 1)], (200, 0, 0)),
    ("2007", "trainval", "000007", (30, 30), [("car", 11, 11, 30, 30, 0)], (0, 200, 0)),
    ("2007", "test", "000001", (20, 40), [("cat", 1, 1, 10, 20, 0), ("cat", 11, 21, 20, 40, 1)], (0, 0, 200)),
    ("2012", "trainval", "2008_000002", (50, 25), [("tvmonitor", 6, 6, 25, 25, 0)], (90, 90, 90)),
]


def voc_images(trainval_2007: int, test_2007: int, trainval_2012: int, seed: int = 0,
               classes: Sequence[str] = ("car", "dog", "person")) -> list:
    """A list like :data:`TINY_VOC`: images of varied size, one to two boxes each, every third box difficult
    (after a first non-difficult one, so every image has something to find)."""
    rng = np.random.default_rng(seed)
    images = []
    plan = [("2007", "trainval", trainval_2007), ("2007", "test", test_2007), ("2012", "trainval", trainval_2012)]
    serial = 0
    for year, split, count in plan:
        for _ in range(count):
            serial += 1
            width, height = int(rng.integers(32, 80)), int(rng.integers(32, 80))
            objects = []
            for k in range(int(rng.integers(1, 3))):
                x1, y1 = int(rng.integers(1, width // 2)), int(rng.integers(1, height // 2))
                x2, y2 = int(rng.integers(x1 + 8, width + 1)), int(rng.integers(y1 + 8, height + 1))
                difficult = int(k > 0 and serial % 3 == 0)
                objects.append((classes[int(rng.integers(len(classes)))], x1, y1, x2, y2, difficult))
            image_id = f"{serial:06d}" if year == "2007" else f"2008_{serial:06d}"
            colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
            images.append((year, split, image_id, (width, height), objects, colour))
    return images


def write_voc(root: Path, images: Sequence[tuple] = TINY_VOC, mark_boxes: bool = False) -> Path:
    """A VOCdevkit tree under ``root`` with ``images`` (solid colours); returns ``root``.

    ``mark_boxes`` paints each box a lighter shade, so that a detector has something to find.
    """
    for year, split, image_id, (w, h), objects, colour in images:
        folder = root / "VOCdevkit" / f"VOC{year}"
        for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        picture = Image.new("RGB", (w, h), colour)
        for name, x1, y1, x2, y2, _ in objects if mark_boxes else ():
            # VOC boxes are 1-based and inclusive: pixels x1 - 1 .. x2 - 1.
            picture.paste(tuple(min(255, c + 60) for c in colour), (x1 - 1, y1 - 1, x2, y2))
        picture.save(folder / "JPEGImages" / f"{image_id}.jpg", quality=95)
        xml_objects = "".join(
            f"<object><name>{name}</name><pose>Left</pose><truncated>0</truncated><difficult>{d}</difficult>"
            f"<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
            for name, x1, y1, x2, y2, d in objects
        )
        (folder / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><folder>VOC{year}</folder><filename>{image_id}.jpg</filename>"
            f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>{xml_objects}</annotation>"
        )
        with open(folder / "ImageSets" / "Main" / f"{split}.txt", "a") as listing:
            listing.write(image_id + "\n")
    return root
