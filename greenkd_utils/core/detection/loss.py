"""SSD's multibox loss, written out so that the anchors it uses can be distilled too.

For every image, anchors are matched to ground-truth boxes with torchvision's
``SSDMatcher`` (each box takes its best anchor, and every anchor with IoU >=
0.5 takes its best box). The loss is

    (smooth-L1 on the positives' box offsets
     + cross-entropy on the positives and on the hardest negatives) / #positives

with at most ``neg_pos_ratio`` hard negatives per positive, picked by their
cross-entropy. :class:`SSDLossOutput` keeps the boolean mask of the anchors the
classification term used (positives and hard negatives): the KD term acts on
exactly those anchors' class logits (:func:`anchor_distillation`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import torch
import torch.nn.functional as F
from torchvision.models.detection import _utils as det_utils
from torchvision.ops import box_iou

from greenkd_utils.core.losses import (
    check_logit_standardization,
    distillation_term,
    standardize_logits,
)

IOU_THRESHOLD = 0.5


@dataclass
class SSDLossOutput:
    localisation: torch.Tensor  # 0-d
    classification: torch.Tensor  # 0-d
    used_anchors: torch.Tensor  # bool (N, A): positives and hard negatives
    positives: torch.Tensor  # bool (N, A)

    @property
    def total(self) -> torch.Tensor:
        return self.localisation + self.classification


def match_anchors(
    anchors: torch.Tensor,
    targets: List[Dict[str, torch.Tensor]],
    box_coder: det_utils.BoxCoder,
    matcher: det_utils.SSDMatcher | None = None,
):
    """Per image: class targets (A,) with 0 for background, and regression targets (A, 4) (valid on positives)."""
    matcher = matcher or det_utils.SSDMatcher(IOU_THRESHOLD)
    classes, regression = [], []
    for target in targets:
        boxes, labels = target["boxes"], target["labels"]
        if boxes.numel() == 0:  # an image with nothing (left) to detect: every anchor is background
            classes.append(torch.zeros(anchors.shape[0], dtype=torch.int64, device=anchors.device))
            regression.append(torch.zeros_like(anchors))
            continue
        matched = matcher(box_iou(boxes, anchors))  # (A,), box index or < 0
        positive = matched >= 0
        box_index = matched.clamp(min=0)
        classes.append(torch.where(positive, labels[box_index], torch.zeros_like(matched)))
        regression.append(box_coder.encode_single(boxes[box_index], anchors))
    return torch.stack(classes), torch.stack(regression)


def ssd_loss(
    outputs: Dict[str, torch.Tensor],
    anchors: torch.Tensor,
    targets: List[Dict[str, torch.Tensor]],
    box_coder: det_utils.BoxCoder,
    neg_pos_ratio: int = 3,
) -> SSDLossOutput:
    """SSD's loss on a batch of head outputs (``cls_logits`` (N, A, C + 1), ``bbox_regression`` (N, A, 4))."""
    logits = outputs["cls_logits"].float()
    regression = outputs["bbox_regression"].float()
    with torch.no_grad():
        class_targets, regression_targets = match_anchors(anchors, targets, box_coder)
    positives = class_targets > 0
    num_positives = positives.sum()
    normaliser = num_positives.clamp(min=1).float()

    localisation = F.smooth_l1_loss(regression[positives], regression_targets[positives], reduction="sum")

    cross_entropy = F.cross_entropy(logits.flatten(0, 1), class_targets.flatten(), reduction="none").view_as(class_targets)
    with torch.no_grad():
        # Hard negative mining: rank each image's background anchors by their loss, keep the worst k.
        negative_loss = cross_entropy.detach().masked_fill(positives, float("-inf"))
        rank = negative_loss.argsort(dim=1, descending=True).argsort(dim=1)
        num_negatives = (neg_pos_ratio * positives.sum(dim=1, keepdim=True)).clamp(max=positives.shape[1])
        hard_negatives = (rank < num_negatives) & ~positives
    used = positives | hard_negatives
    classification = cross_entropy[used].sum()
    return SSDLossOutput(localisation / normaliser, classification / normaliser, used, positives)


def anchor_distillation(
    loss_name: str,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    used_anchors: torch.Tensor,
    tau,
    kl_reduction: str = "batchmean",
    logit_standardization: bool = False,
) -> torch.Tensor:
    """A registered KD loss's distillation term on the class logits (C + 1, background included) of the
    ``used_anchors``, each anchor one sample (so ``batchmean`` averages over those anchors).

    ``tau`` is one value, or one per image (N,), which every anchor of that image shares. With
    ``logit_standardization`` each anchor's logits are z-scored before the softened softmax (HKD, DML).
    """
    distill = distillation_term(loss_name, kl_reduction)
    check_logit_standardization(loss_name, logit_standardization)
    if not used_anchors.any():
        return student_logits.sum() * 0.0  # keeps the graph: an image without objects uses no anchor
    student = student_logits.float()[used_anchors]
    teacher = teacher_logits.detach().float()[used_anchors]
    if logit_standardization:
        student, teacher = standardize_logits(student), standardize_logits(teacher)
    tau = torch.as_tensor(tau, dtype=student.dtype, device=student.device)
    if tau.ndim == 1:  # one tau per image: each used anchor takes its image's
        tau = tau[:, None].expand(used_anchors.shape)[used_anchors]
    return distill(student, teacher, tau, kl_reduction)
