"""SSD's multibox loss (matching, hard negatives) and KD on the class logits of the anchors it uses."""

from __future__ import annotations

import pytest
import torch

from greenkd_utils.core.detection.loss import (
    anchor_distillation,
    match_anchors,
    ssd_loss,
)
from greenkd_utils.core.detection.models import AnchorSettings, create_detector
from greenkd_utils.core.losses import KD_LOSSES

SIZE = 48
INSIDE = 56  # the first default box of cell (2, 2) of the 6x6 map: centred at (20, 20), 9.6 pixels wide


@pytest.fixture(scope="module")
def student():
    return create_detector("mobilenetv2_ssdlite", 3, width=0.35, anchors=AnchorSettings(num_feature_maps=4))


def _targets(student):
    anchors = student.anchors(SIZE)
    box = anchors[INSIDE]  # a box that coincides with one default box
    return [
        {"boxes": box.unsqueeze(0), "labels": torch.tensor([2])},
        {"boxes": torch.tensor([[4.0, 4.0, 30.0, 28.0], [30.0, 30.0, 46.0, 46.0]]), "labels": torch.tensor([1, 3])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # nothing to detect
    ]


def test_a_box_equal_to_a_default_box_matches_it_with_zero_offset(student):
    anchors = student.anchors(SIZE)
    targets = _targets(student)
    classes, regression = match_anchors(anchors, targets, student.box_coder)
    assert classes.shape == (3, anchors.shape[0])
    assert ((anchors[INSIDE] > 0) & (anchors[INSIDE] < SIZE)).all()
    assert classes[0, INSIDE] == 2
    assert torch.allclose(regression[0, INSIDE], torch.zeros(4), atol=1e-5)
    assert (classes[2] == 0).all()  # the empty image is all background
    assert set(classes[1].unique().tolist()) <= {0, 1, 3}


def test_ssd_loss_uses_every_positive_and_at_most_three_negatives_per_positive(student):
    torch.manual_seed(0)
    anchors = student.anchors(SIZE)
    outputs = {"cls_logits": torch.randn(3, anchors.shape[0], 4), "bbox_regression": torch.randn(3, anchors.shape[0], 4)}
    out = ssd_loss(outputs, anchors, _targets(student), student.box_coder, neg_pos_ratio=3)
    positives, used = out.positives, out.used_anchors
    assert (used[positives]).all()
    negatives = used & ~positives
    assert torch.equal(negatives.sum(1), 3 * positives.sum(1))  # plenty of background anchors to pick from
    assert not used[2].any()  # no positives, no hard negatives
    assert out.total.isfinite() and out.localisation > 0 and out.classification > 0


def test_hard_negatives_are_the_background_anchors_with_the_largest_loss(student):
    anchors = student.anchors(SIZE)
    targets = _targets(student)[:1]
    classes, _ = match_anchors(anchors, targets, student.box_coder)
    background = torch.nonzero(classes[0] == 0).flatten()
    loud = background[[20, 60, 100]]  # background anchors made confidently wrong
    logits = torch.zeros(1, anchors.shape[0], 4)
    logits[0, loud, 1] = 8.0
    out = ssd_loss({"cls_logits": logits, "bbox_regression": torch.zeros(1, anchors.shape[0], 4)}, anchors, targets, student.box_coder, neg_pos_ratio=3)
    n_pos = int(out.positives.sum())
    if n_pos == 1:
        assert set(torch.nonzero(out.used_anchors[0] & ~out.positives[0]).flatten().tolist()) == set(loud.tolist())
    else:  # more than one anchor matched: the loud ones are still among the hardest
        assert out.used_anchors[0, loud].all()


@pytest.mark.parametrize("loss", sorted(KD_LOSSES))
def test_distillation_is_zero_when_the_student_equals_the_teacher(loss):
    logits = torch.randn(2, 50, 4)
    used = torch.rand(2, 50) < 0.3
    assert anchor_distillation(loss, logits, logits.clone(), used, tau=4.0).item() == pytest.approx(0.0, abs=1e-6)
    different = anchor_distillation(loss, logits, torch.randn(2, 50, 4), used, tau=4.0)
    assert different.item() > 0


@pytest.mark.parametrize("loss", sorted(KD_LOSSES))
def test_distillation_reaches_only_the_anchors_the_ssd_loss_used(loss):
    student = torch.randn(2, 50, 4, requires_grad=True)
    used = torch.zeros(2, 50, dtype=torch.bool)
    used[0, :5] = True
    used[1, 20:23] = True
    anchor_distillation(loss, student, torch.randn(2, 50, 4), used, tau=2.0).backward()
    touched = student.grad.abs().sum(-1) > 0
    assert torch.equal(touched, used)


def test_distillation_matches_the_registered_loss_on_the_selected_rows():
    s, t = torch.randn(1, 30, 4), torch.randn(1, 30, 4)
    used = torch.zeros(1, 30, dtype=torch.bool)
    used[0, [1, 4, 9]] = True
    expected = KD_LOSSES["hkd"](s[0, [1, 4, 9]], t[0, [1, 4, 9]], torch.tensor(3.0), "batchmean")
    assert anchor_distillation("hkd", s, t, used, 3.0).item() == pytest.approx(expected.item())


def test_no_used_anchor_gives_a_zero_with_a_graph_and_bad_names_are_errors():
    s = torch.randn(1, 10, 4, requires_grad=True)
    zero = anchor_distillation("dml", s, torch.randn(1, 10, 4), torch.zeros(1, 10, dtype=torch.bool), 2.0)
    zero.backward()
    assert zero.item() == 0.0 and s.grad is not None
    with pytest.raises(ValueError, match="cmc, cmc_softmax, cmc_sum, dml, hkd"):
        anchor_distillation("fitnet", s, s, torch.ones(1, 10, dtype=torch.bool), 2.0)
    with pytest.raises(ValueError, match="batchmean"):
        anchor_distillation("hkd", s, s, torch.ones(1, 10, dtype=torch.bool), 2.0, kl_reduction="sum")
