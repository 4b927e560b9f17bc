"""VOC2007 11-point mAP: against torchmetrics (pycocotools backend) and on cases worked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from greenkd_utils.core.detection.evaluation import (
    RECALL_LEVELS,
    evaluate_detections,
    voc07_average_precision,
)

CLASSES = ["square", "circle", "triangle"]


def _random_case(seed: int, images: int = 10):
    """Ground truths and noisy predictions: jittered copies of most boxes (some with the wrong class) and
    random false positives, each with a random score."""
    g = torch.Generator().manual_seed(seed)

    def boxes(n):
        xy = torch.rand(n, 2, generator=g) * 70
        wh = torch.rand(n, 2, generator=g) * 30 + 5
        return torch.cat([xy, xy + wh], 1)

    preds, gts = [], []
    for _ in range(images):
        gt_boxes = boxes(int(torch.randint(1, 5, (1,), generator=g)))
        gt_labels = torch.randint(1, 4, (len(gt_boxes),), generator=g)
        jittered = gt_boxes + torch.randn(gt_boxes.shape, generator=g) * 3
        wrong = torch.randint(1, 4, (len(gt_labels),), generator=g)
        labels = torch.where(torch.rand(len(gt_labels), generator=g) < 0.8, gt_labels, wrong)
        pred_boxes = torch.cat([jittered, boxes(3)])
        pred_labels = torch.cat([labels, torch.randint(1, 4, (3,), generator=g)])
        preds.append({"boxes": pred_boxes, "scores": torch.rand(len(pred_boxes), generator=g), "labels": pred_labels})
        gts.append({"boxes": gt_boxes, "labels": gt_labels})
    return preds, gts


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_map_equals_torchmetrics_with_voc07_settings(seed):
    """torchmetrics' COCO evaluation takes, at each recall threshold, the highest precision at that recall or
    beyond (precision made non-increasing, then read at the first recall >= t): with the 11 thresholds
    0, 0.1, ..., 1 and IoU 0.5 that is exactly VOC07's 11-point interpolated AP."""
    pytest.importorskip("pycocotools")
    from torchmetrics.detection import MeanAveragePrecision

    preds, gts = _random_case(seed)
    ours = evaluate_detections(preds, gts, CLASSES)
    metric = MeanAveragePrecision(
        box_format="xyxy", iou_type="bbox", iou_thresholds=[0.5], rec_thresholds=RECALL_LEVELS.tolist(),
        class_metrics=True, backend="pycocotools",
    )
    metric.update(preds, gts)
    theirs = metric.compute()
    assert 0.05 < ours.map < 0.95  # a case where precision and recall both vary
    assert ours.map == pytest.approx(float(theirs["map"]), abs=1e-6)
    for label, ap in zip(theirs["classes"].tolist(), theirs["map_per_class"].tolist()):
        assert ours.ap_per_class[CLASSES[label - 1]] == pytest.approx(ap, abs=1e-6)


def test_eleven_point_ap_of_a_case_worked_by_hand():
    # Two boxes; detections by score: hit, miss, hit -> recall 0.5, 0.5, 1 and precision 1, 0.5, 2/3.
    # Recall levels 0..0.5 (six of them) reach precision 1, levels 0.6..1 (five) reach 2/3.
    gts = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [20.0, 20, 30, 30]]), "labels": torch.tensor([1, 1])}]
    preds = [{
        "boxes": torch.tensor([[0.0, 0, 10, 10], [50.0, 50, 60, 60], [20.0, 20, 30, 31]]),
        "scores": torch.tensor([0.9, 0.8, 0.7]),
        "labels": torch.tensor([1, 1, 1]),
    }]
    result = evaluate_detections(preds, gts, ["a"])
    assert result.map == pytest.approx((6 * 1.0 + 5 * 2 / 3) / 11)
    assert voc07_average_precision(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])) == pytest.approx(result.map)


def test_duplicates_are_false_positives_and_perfect_predictions_score_one():
    gt = {"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([2])}
    perfect = {"boxes": gt["boxes"], "scores": torch.tensor([0.9]), "labels": torch.tensor([2])}
    assert evaluate_detections([perfect], [gt], CLASSES).map == pytest.approx(1.0)
    duplicate = {
        "boxes": torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 10]]),
        "scores": torch.tensor([0.4, 0.9]),
        "labels": torch.tensor([2, 2]),
    }
    # The first (higher-scored) copy is the hit: precision 1 at recall 1, so AP stays 1.
    assert evaluate_detections([duplicate], [gt], CLASSES).map == pytest.approx(1.0)
    # A miss scored above the hit halves the precision at full recall.
    early_miss = {
        "boxes": torch.tensor([[40.0, 40, 50, 50], [0.0, 0, 10, 10]]),
        "scores": torch.tensor([0.9, 0.4]),
        "labels": torch.tensor([2, 2]),
    }
    assert evaluate_detections([early_miss], [gt], CLASSES).map == pytest.approx(0.5)


def test_difficult_objects_are_neither_hits_nor_misses():
    gt = {
        "boxes": torch.tensor([[0.0, 0, 10, 10], [30.0, 30, 40, 40]]),
        "labels": torch.tensor([1, 1]),
        "difficult": torch.tensor([False, True]),
    }
    hit = {"boxes": torch.tensor([[0.0, 0, 10, 10]]), "scores": torch.tensor([0.5]), "labels": torch.tensor([1])}
    # Finding only the normal box is full recall: the difficult one is not counted as a box to find.
    assert evaluate_detections([hit], [gt], CLASSES).map == pytest.approx(1.0)
    # A detection of the difficult box, even scored first, is not a false positive either.
    both = {
        "boxes": torch.tensor([[30.0, 30, 40, 40], [0.0, 0, 10, 10]]),
        "scores": torch.tensor([0.9, 0.5]),
        "labels": torch.tensor([1, 1]),
    }
    assert evaluate_detections([both], [gt], CLASSES).map == pytest.approx(1.0)
    # Without the flag the second box counts, and finding only the first is half the recall.
    not_difficult = dict(gt, difficult=torch.tensor([False, False]))
    assert evaluate_detections([hit], [not_difficult], CLASSES).map == pytest.approx(6 / 11)


def test_classes_without_boxes_are_left_out_of_the_mean():
    gt = {"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([1])}
    pred = {
        "boxes": torch.tensor([[0.0, 0, 10, 10], [20.0, 20, 30, 30]]),
        "scores": torch.tensor([0.9, 0.8]),
        "labels": torch.tensor([1, 3]),  # a detection of a class with no box anywhere
    }
    result = evaluate_detections([pred], [gt], CLASSES)
    assert result.map == pytest.approx(1.0)
    assert math.isnan(result.ap_per_class["circle"]) and math.isnan(result.ap_per_class["triangle"])
    assert result.num_ground_truth == {"square": 1, "circle": 0, "triangle": 0}


def test_a_mismatched_number_of_images_is_an_error():
    with pytest.raises(ValueError, match="predictions for"):
        evaluate_detections([], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}], CLASSES)
