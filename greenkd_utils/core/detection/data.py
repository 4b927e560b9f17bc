"""Detection data by name, each source read into a :class:`~.dataset.DetectionDataset`.

Two sources:

``voc``
    PASCAL VOC 07+12 trainval for training and VOC 2007 test for testing, read
    from ``{root}/VOCdevkit/VOC2007`` and ``{root}/VOCdevkit/VOC2012`` in the
    layout torchvision's ``VOCDetection`` uses (``JPEGImages/``,
    ``Annotations/*.xml``, ``ImageSets/Main/{trainval,test}.txt``).
``shapes``
    A procedurally generated data set (:mod:`.shapes`), so the demo and smoke
    profiles run without any download.
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
from tqdm.auto import tqdm

from greenkd_utils.core.dataset_sources import DATA_ROOT_ENV, DatasetNotFoundError, data_root
from greenkd_utils.core.detection.dataset import DetectionDataset, DetectionSplits
from greenkd_utils.core.detection.shapes import ShapesSettings, make_shapes

log = logging.getLogger(__name__)

__all__ = [
    "VOC_CLASSES",
    "load_detection_data",
    "load_voc",
]

#: The 20 PASCAL VOC classes in the conventional order; label k + 1 is VOC_CLASSES[k].
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

#: The paper's splits: VOC 2007 + 2012 trainval for training, VOC 2007 test for testing.
VOC_TRAIN_SETS: Tuple[Tuple[str, str], ...] = (("2007", "trainval"), ("2012", "trainval"))
VOC_TEST_SET: Tuple[str, str] = ("2007", "test")

DETECTION_DATASETS = ("shapes", "voc")


# --------------------------------------------------------------------------
# PASCAL VOC
# --------------------------------------------------------------------------
def voc_root(root: Optional[str | os.PathLike]) -> Path:
    """``{root}/VOCdevkit``; the root is the argument, else ``$GREENKD_DATA_ROOT``."""
    return data_root(root, "PASCAL VOC is read from a local data root, and none was given: pass data_root=DIR (or "
                           f"--data-root DIR to run_all.sh, or set {DATA_ROOT_ENV}=DIR). {_VOC_HOW_TO}") / "VOCdevkit"


_VOC_HOW_TO = (
    "Extract VOCtrainval_06-Nov-2007.tar, VOCtest_06-Nov-2007.tar and VOCtrainval_11-May-2012.tar "
    "(http://host.robots.ox.ac.uk/pascal/VOC/) into DIR, which creates DIR/VOCdevkit/VOC2007 and "
    "DIR/VOCdevkit/VOC2012 with JPEGImages/, Annotations/ and ImageSets/Main/."
)


def _voc_split_ids(devkit: Path, year: str, image_set: str) -> Tuple[Path, List[str]]:
    folder = devkit / f"VOC{year}"
    listing = folder / "ImageSets" / "Main" / f"{image_set}.txt"
    if not listing.is_file():
        raise DatasetNotFoundError(f"PASCAL VOC {year} {image_set} not found: expected {listing}. {_VOC_HOW_TO}")
    ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    return folder, ids


def parse_voc_annotation(path: Path) -> Tuple[Tuple[int, int], List[str], np.ndarray, np.ndarray]:
    """(width, height), object names, boxes (n, 4) as continuous xyxy, difficult flags (n,).

    VOC's boxes are 1-based inclusive pixel indices; ``xmin - 1`` .. ``xmax`` is the same region
    in continuous coordinates starting at 0.
    """
    root = ET.parse(path).getroot()
    size = root.find("size")
    width, height = int(float(size.findtext("width"))), int(float(size.findtext("height")))
    names, boxes, difficult = [], [], []
    for obj in root.iter("object"):
        bndbox = obj.find("bndbox")
        x1, y1, x2, y2 = (float(bndbox.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        names.append(obj.findtext("name").strip())
        boxes.append([x1 - 1.0, y1 - 1.0, x2, y2])
        difficult.append(int(obj.findtext("difficult", default="0").strip() or 0) == 1)
    return (width, height), names, np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(difficult, dtype=bool)


def _load_voc_image(folder: Path, image_id: str, image_size: int):
    from PIL import Image

    (width, height), names, boxes, difficult = parse_voc_annotation(folder / "Annotations" / f"{image_id}.xml")
    unknown = sorted(set(names) - set(VOC_CLASSES))
    if unknown:
        raise ValueError(f"{folder / 'Annotations' / image_id}.xml names unknown classes {unknown}")
    path = folder / "JPEGImages" / f"{image_id}.jpg"
    if not path.is_file():
        raise DatasetNotFoundError(f"{path} is listed but missing; re-extract PASCAL VOC. {_VOC_HOW_TO}")
    with Image.open(path) as image:
        # SSD resizes to a square whatever the aspect ratio; boxes scale with each axis.
        pixels = np.asarray(image.convert("RGB").resize((image_size, image_size), Image.BILINEAR))
    scale = np.array([image_size / width, image_size / height] * 2, dtype=np.float32)
    labels = np.array([VOC_CLASSES.index(n) + 1 for n in names], dtype=np.int64)
    return pixels.transpose(2, 0, 1), boxes * scale, labels, difficult


def _load_voc_sets(devkit: Path, sets: Sequence[Tuple[str, str]], image_size: int, workers: int) -> DetectionDataset:
    jobs = []
    for year, image_set in sets:
        folder, ids = _voc_split_ids(devkit, year, image_set)
        jobs += [(folder, image_id, f"{year}/{image_id}") for image_id in ids]
    images = np.empty((len(jobs), 3, image_size, image_size), dtype=np.uint8)
    annotations = []
    name = "+".join(f"{y} {s}" for y, s in sets)
    # PIL decodes with the GIL released, so threads overlap the JPEG work.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(lambda job: _load_voc_image(job[0], job[1], image_size), jobs)
        for i, (pixels, *annotation) in enumerate(tqdm(results, total=len(jobs), desc=f"Decoding VOC {name}", unit="img")):
            images[i] = pixels
            annotations.append(annotation)
    return DetectionDataset.from_arrays("voc", images, annotations, VOC_CLASSES, [job[2] for job in jobs])


def load_voc(
    root: Optional[str | os.PathLike],
    image_size: int = 300,
    train_sets: Sequence[Tuple[str, str]] = VOC_TRAIN_SETS,
    test_set: Tuple[str, str] = VOC_TEST_SET,
    workers: int = 8,
) -> DetectionSplits:
    """PASCAL VOC resized to ``image_size`` squares: 07+12 trainval for training, 07 test for testing."""
    devkit = voc_root(root)
    if not devkit.is_dir():
        raise DatasetNotFoundError(f"PASCAL VOC not found: expected the folder {devkit}. {_VOC_HOW_TO}")
    train = _load_voc_sets(devkit, train_sets, image_size, workers)
    test = _load_voc_sets(devkit, [test_set], image_size, workers)
    log.info("PASCAL VOC: %d training images (%d objects), %d test images", len(train), train.num_objects, len(test))
    return DetectionSplits.of(train, test)


def load_detection_data(name: str, image_size: int, root=None, shapes=None) -> DetectionSplits:
    """``shapes`` (generated from the :class:`~.shapes.ShapesSettings` ``shapes``) or ``voc`` (from ``root``)."""
    if name == "voc":
        return load_voc(root, image_size)
    if name == "shapes":
        return make_shapes(shapes or ShapesSettings(), image_size)
    raise ValueError(f"unknown detection dataset {name!r}; valid: {', '.join(DETECTION_DATASETS)}")
