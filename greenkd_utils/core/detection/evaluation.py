"""PASCAL VOC 2007's mean average precision: 11-point interpolated AP at IoU 0.5, difficult objects ignored.

Per class, every detection of the test set is taken in order of decreasing
score and matched to the ground-truth box of its class, in its image, with
which it overlaps most. It is a true positive when that IoU is >= 0.5 and the
box was not matched before, a false positive otherwise, and it counts as
neither when the box is marked "difficult". Recall is over the non-difficult
boxes. AP is the mean, over recall levels 0, 0.1, ..., 1, of the highest
precision reached at that recall or beyond; mAP averages AP over the classes
that have at least one non-difficult box.

Boxes are in continuous coordinates (area = (x2 - x1) * (y2 - y1)), as in
torchmetrics and pycocotools; the 2007 devkit's MATLAB code added one pixel to
widths and heights, which changes IoUs of small boxes slightly.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Dict, List, Sequence

import numpy as np
import torch

from greenkd_utils.core.augment import standardize

IOU_THRESHOLD = 0.5
#: VOC 2007's recall levels; the same array must be passed to any other tool compared against this one.
RECALL_LEVELS = np.linspace(0.0, 1.0, 11)


@dataclass
class DetectionMetrics:
    """mAP (0-1), AP per class (NaN for a class without non-difficult boxes), and box counts."""

    map: float
    ap_per_class: Dict[str, float]
    num_ground_truth: Dict[str, int]
    num_detections: int = 0
    definition: str = field(default="VOC2007 11-point interpolated AP at IoU 0.5, difficult objects ignored")

    @property
    def map_pct(self) -> float:
        return 100.0 * self.map

    def to_dict(self) -> Dict:
        return dict(self.__dict__)


def voc07_average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """11-point interpolated AP: mean over t in {0, 0.1, ..., 1} of max(precision[recall >= t]) (0 if none)."""
    recall, precision = np.asarray(recall, dtype=np.float64), np.asarray(precision, dtype=np.float64)
    points = [precision[recall >= t].max() if (recall >= t).any() else 0.0 for t in RECALL_LEVELS]
    return float(np.mean(points))


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a (n, 4) with every box in b (m, 4), continuous coordinates."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _numpy(x, dtype) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def class_average_precision(
    predictions: Sequence[Dict], ground_truths: Sequence[Dict], label: int, iou_threshold: float = IOU_THRESHOLD
) -> tuple[float, int]:
    """(AP, number of non-difficult boxes) of one class; AP is NaN when the class has no such box."""
    gt_boxes, gt_difficult, matched = [], [], []
    for gt in ground_truths:
        mask = _numpy(gt["labels"], np.int64) == label
        boxes = _numpy(gt["boxes"], np.float64).reshape(-1, 4)[mask]
        difficult = _numpy(gt.get("difficult", np.zeros(mask.shape, bool)), bool)[mask]
        gt_boxes.append(boxes)
        gt_difficult.append(difficult)
        matched.append(np.zeros(len(boxes), dtype=bool))
    num_positive = int(sum((~d).sum() for d in gt_difficult))

    # Every detection of this class, over all images: (score, image index, box).
    scores, images, boxes = [], [], []
    for i, pred in enumerate(predictions):
        mask = _numpy(pred["labels"], np.int64) == label
        s = _numpy(pred["scores"], np.float64)[mask]
        scores.append(s)
        images.append(np.full(len(s), i))
        boxes.append(_numpy(pred["boxes"], np.float64).reshape(-1, 4)[mask])
    if num_positive == 0:
        return float("nan"), 0
    scores, images, boxes = np.concatenate(scores), np.concatenate(images), np.concatenate(boxes)
    # A stable sort: equal scores keep the image order, so the result does not depend on the sort algorithm.
    order = np.argsort(-scores, kind="stable")
    tp, fp = np.zeros(len(order)), np.zeros(len(order))
    for rank, k in enumerate(order):
        image = images[k]
        candidates = gt_boxes[image]
        if len(candidates) == 0:
            fp[rank] = 1
            continue
        overlaps = _iou_matrix(boxes[k : k + 1], candidates)[0]
        best = int(overlaps.argmax())
        if overlaps[best] < iou_threshold:
            fp[rank] = 1
        elif gt_difficult[image][best]:
            continue  # neither a hit nor a miss
        elif not matched[image][best]:
            tp[rank] = 1
            matched[image][best] = True
        else:
            fp[rank] = 1  # a duplicate of a box already found
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / num_positive
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return voc07_average_precision(recall, precision), num_positive


def evaluate_detections(
    predictions: Sequence[Dict],
    ground_truths: Sequence[Dict],
    class_names: Sequence[str],
    iou_threshold: float = IOU_THRESHOLD,
) -> DetectionMetrics:
    """VOC07 mAP of per-image ``predictions`` (boxes, scores, labels 1..C) against ``ground_truths``
    (boxes, labels 1..C, optional difficult flags)."""
    if len(predictions) != len(ground_truths):
        raise ValueError(f"{len(predictions)} predictions for {len(ground_truths)} images")
    ap, counts = {}, {}
    for label, name in enumerate(class_names, start=1):
        ap[name], counts[name] = class_average_precision(predictions, ground_truths, label, iou_threshold)
    valid = [v for v in ap.values() if not np.isnan(v)]
    return DetectionMetrics(
        map=float(np.mean(valid)) if valid else float("nan"),
        ap_per_class=ap,
        num_ground_truth=counts,
        num_detections=int(sum(len(p["scores"]) for p in predictions)),
    )


@torch.no_grad()
def predict(model, images_u8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, batch_size: int = 64, plan=None) -> List[Dict]:
    """Detections of ``model`` on uint8 images (on the model's device), moved to the CPU.

    ``plan``: the run's execution plan (``prepare_batch`` and ``autocast``: memory format, bf16) or None.
    """
    was_training = model.training
    model.eval()
    out: List[Dict] = []
    try:
        for start in range(0, images_u8.shape[0], batch_size):
            x = standardize(images_u8[start : start + batch_size].float() / 255.0, mean, std)
            x = plan.prepare_batch(x) if plan is not None else x
            with plan.autocast() if plan is not None else contextlib.nullcontext():
                outputs = model(x)
            out += [{k: v.cpu() for k, v in d.items()} for d in model.detect(x, outputs=outputs)]
    finally:
        model.train(was_training)
    return out


def evaluate_model(model, dataset, mean: torch.Tensor, std: torch.Tensor, device=None, batch_size: int = 64, plan=None) -> DetectionMetrics:
    """VOC07 mAP of ``model`` on a :class:`~.dataset.DetectionDataset`."""
    device = device or next(model.parameters()).device
    predictions = predict(model, dataset.images.to(device), mean, std, batch_size, plan)
    return evaluate_detections(predictions, dataset.ground_truth(), dataset.class_names)
