"""The detectors: one anchor grid for teacher and student, head outputs per anchor, decoding and NMS."""

from __future__ import annotations

import pytest
import torch

from greenkd_utils.core.detection.models import (
    DETECTORS,
    AnchorSettings,
    count_parameters,
    create_detector,
)


def _pair(maps: int, num_classes: int = 3):
    anchors = AnchorSettings(num_feature_maps=maps)
    teacher = create_detector("vgg16_ssd", num_classes, width=0.125, anchors=anchors)
    student = create_detector("mobilenetv2_ssdlite", num_classes, width=0.35, anchors=anchors)
    return teacher, student


@pytest.mark.parametrize("image_size, maps", [(32, 3), (48, 4), (75, 5), (300, 6)])
def test_teacher_and_student_share_every_anchor(image_size, maps):
    teacher, student = _pair(maps)
    assert teacher.feature_map_sizes(image_size) == student.feature_map_sizes(image_size)
    t, s = teacher.anchors(image_size), student.anchors(image_size)
    assert t.shape == s.shape and t.shape[1] == 4
    assert torch.equal(t, s)
    x = torch.randn(2, 3, image_size, image_size)
    with torch.no_grad():
        out_t, out_s = teacher.eval()(x), student.eval()(x)
    # One class logit row (C + 1 with the background) and one box offset per anchor, in both networks.
    assert out_t["cls_logits"].shape == out_s["cls_logits"].shape == (2, t.shape[0], 4)
    assert out_t["bbox_regression"].shape == out_s["bbox_regression"].shape == (2, t.shape[0], 4)


def test_ssd300_grid_and_anchor_count():
    teacher, student = _pair(6)
    sizes = teacher.feature_map_sizes(300)
    assert [h for h, _ in sizes] == [38, 19, 10, 5, 3, 2]
    per_location = [4, 6, 6, 6, 4, 4]  # SSD300's aspect-ratio pattern
    assert teacher.anchors(300).shape[0] == sum(h * w * k for (h, w), k in zip(sizes, per_location))


def test_voc_sized_models_have_the_papers_parameter_counts():
    # Paper: VGG16 SSD 26.2M, MobileNetV2 SSDLite 3.4M parameters (21 outputs per anchor for VOC).
    teacher = create_detector("vgg16_ssd", 20)
    student = create_detector("mobilenetv2_ssdlite", 20)
    assert 25.5e6 < count_parameters(teacher) < 27e6
    assert 3.0e6 < count_parameters(student) < 3.6e6


def test_unknown_detector_and_bad_anchor_settings_are_named():
    with pytest.raises(ValueError, match="mobilenetv2_ssdlite"):
        create_detector("resnet_ssd", 3)
    with pytest.raises(ValueError, match="at least 3"):
        AnchorSettings(num_feature_maps=2)
    with pytest.raises(ValueError, match="scales"):
        AnchorSettings(num_feature_maps=4, scales=(0.1, 0.2))
    assert set(DETECTORS) == {"vgg16_ssd", "mobilenetv2_ssdlite"}


def test_feature_map_sizes_leave_batch_norm_statistics_alone():
    _, student = _pair(4)
    student.train()
    before = [b.clone() for b in student.buffers()]
    student.anchors(48)
    assert student.training
    assert all(torch.equal(a, b) for a, b in zip(before, student.buffers()))


def test_detect_decodes_the_confident_anchor_into_its_own_box():
    _, student = _pair(4)
    size = 48
    anchors = student.anchors(size)
    k = 7  # an anchor well inside the image
    logits = torch.full((1, anchors.shape[0], 4), -10.0)
    logits[..., 0] = 10.0  # background everywhere...
    logits[0, k] = torch.tensor([-10.0, -10.0, 10.0, -10.0])  # ...except class 2 at anchor k
    outputs = {"cls_logits": logits, "bbox_regression": torch.zeros(1, anchors.shape[0], 4)}
    (found,) = student.detect(torch.zeros(1, 3, size, size), outputs=outputs, score_threshold=0.5)
    assert found["labels"].tolist() == [2]
    assert found["scores"][0] > 0.99
    expected = anchors[k].clamp(0, size)
    assert torch.allclose(found["boxes"][0], expected, atol=1e-4)


def test_detect_keeps_at_most_max_detections_inside_the_image():
    _, student = _pair(4)
    student.eval()
    found = student.detect(torch.randn(2, 3, 48, 48), score_threshold=0.0, max_detections=25)
    for d in found:
        assert len(d["scores"]) <= 25
        assert (d["boxes"] >= 0).all() and (d["boxes"] <= 48).all()
        assert ((d["labels"] >= 1) & (d["labels"] <= 3)).all()
        assert torch.all(d["scores"][:-1] >= d["scores"][1:])
