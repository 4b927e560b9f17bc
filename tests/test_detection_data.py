"""Detection data: the PASCAL VOC loader on a tiny VOC-format tree, and the generated shapes."""

from __future__ import annotations

import pytest
import torch
from dataset_writers import write_voc

from greenkd_utils.core.dataset_sources import DatasetNotFoundError
from greenkd_utils.core.detection.data import (
    VOC_CLASSES,
    load_detection_data,
    load_voc,
    parse_voc_annotation,
)
from greenkd_utils.core.detection.shapes import (
    SHAPE_CLASSES,
    ShapesSettings,
    make_shapes,
)


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    return write_voc(tmp_path_factory.mktemp("voc"))


def test_voc_07_12_trainval_for_training_and_07_test_for_testing(voc_root):
    splits = load_voc(voc_root, image_size=20, workers=2)
    assert splits.train.image_ids == ["2007/000005", "2007/000007", "2012/2008_000002"]
    assert splits.test.image_ids == ["2007/000001"]
    assert splits.train.images.shape == (3, 3, 20, 20) and splits.train.images.dtype == torch.uint8
    assert splits.train.class_names == list(VOC_CLASSES) and splits.train.num_classes == 20
    # Solid colours survive the JPEG round trip and the resize to within a few levels.
    assert torch.allclose(splits.train.images[1].float().mean((1, 2)), torch.tensor([0.0, 200.0, 0.0]), atol=4)
    assert len(splits.mean) == 3 and all(s > 0 for s in splits.std)


def test_voc_boxes_are_scaled_to_the_square_and_labels_follow_the_class_list(voc_root):
    splits = load_voc(voc_root, image_size=20, workers=1)
    # 40x20 -> 20x20: x halves, y stays. VOC's 1-based inclusive (1, 1, 20, 10) is [0, 20) x [0, 10).
    boxes = splits.train.boxes[0]
    assert torch.allclose(boxes[0], torch.tensor([0.0, 0.0, 10.0, 10.0]))
    assert torch.allclose(boxes[1], torch.tensor([10.0, 4.0, 20.0, 20.0]))
    assert splits.train.labels[0].tolist() == [VOC_CLASSES.index("dog") + 1, VOC_CLASSES.index("person") + 1]
    assert splits.train.labels[2].tolist() == [20]  # tvmonitor, the last class
    assert splits.train.difficult[0].tolist() == [False, True]
    assert splits.test.difficult[0].tolist() == [False, True]


def test_training_targets_drop_difficult_objects_but_evaluation_keeps_them(voc_root):
    splits = load_voc(voc_root, image_size=20, workers=1)
    (target,) = splits.train.targets([0])
    assert target["labels"].tolist() == [VOC_CLASSES.index("dog") + 1]
    assert splits.test.ground_truth()[0]["difficult"].tolist() == [False, True]


def test_parse_voc_annotation(voc_root):
    size, names, boxes, difficult = parse_voc_annotation(voc_root / "VOCdevkit/VOC2007/Annotations/000001.xml")
    assert size == (20, 40) and names == ["cat", "cat"]
    assert boxes.tolist() == [[0.0, 0.0, 10.0, 20.0], [10.0, 20.0, 20.0, 40.0]]
    assert difficult.tolist() == [False, True]


def test_missing_voc_says_what_to_download(tmp_path, monkeypatch):
    with pytest.raises(DatasetNotFoundError, match="VOCdevkit"):
        load_voc(tmp_path, image_size=20)
    monkeypatch.delenv("GREENKD_DATA_ROOT", raising=False)
    with pytest.raises(DatasetNotFoundError, match="data root"):
        load_voc(None, image_size=20)
    (tmp_path / "VOCdevkit" / "VOC2007").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="trainval.txt"):
        load_voc(tmp_path, image_size=20)
    with pytest.raises(ValueError, match="shapes, voc"):
        load_detection_data("coco", 20)


# -- shapes --------------------------------------------------------------------------------------------
SMALL = ShapesSettings(num_train=40, num_test=12, min_objects=1, max_objects=3, seed=3)


def test_shapes_are_reproducible_from_their_seed():
    a, b = make_shapes(SMALL, 32), make_shapes(SMALL, 32)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.images, b.test.images)
    assert all(torch.equal(x, y) for x, y in zip(a.train.boxes, b.train.boxes))
    other = make_shapes(ShapesSettings(num_train=40, num_test=12, max_objects=3, seed=4), 32)
    assert not torch.equal(a.train.images, other.train.images)
    # More training images never change the test images.
    more = make_shapes(ShapesSettings(num_train=50, num_test=12, max_objects=3, seed=3), 32)
    assert torch.equal(a.test.images, more.test.images)


def test_shapes_boxes_lie_inside_the_image_and_cover_drawn_pixels():
    splits = make_shapes(SMALL, 32)
    ds = splits.train
    assert ds.class_names == list(SHAPE_CLASSES) and len(ds) == 40 and len(splits.test) == 12
    counts = [len(l) for l in ds.labels]
    assert min(counts) >= 1 and max(counts) <= 3
    for image, boxes, labels in zip(ds.images, ds.boxes, ds.labels):
        assert ((boxes >= 0) & (boxes <= 32)).all()
        assert ((labels >= 1) & (labels <= 3)).all()
        for x1, y1, x2, y2 in boxes.long().tolist():
            # Objects are bright (every channel >= 120) on a dark background: the box's centre is an object pixel.
            cy, cx = (y1 + y2 - 1) // 2, (x1 + x2 - 1) // 2
            assert image[:, cy, cx].min() >= 100
    assert not any(d.any() for d in ds.difficult)


def test_validation_split_is_disjoint_and_the_same_every_time():
    ds = make_shapes(SMALL, 32).train
    train, val = ds.split_validation(0.25, seed=0)
    again_train, again_val = ds.split_validation(0.25, seed=0)
    assert len(val) == 10 and len(train) == 30
    assert set(train.image_ids).isdisjoint(val.image_ids)
    assert set(train.image_ids) | set(val.image_ids) == set(ds.image_ids)
    assert val.image_ids == again_val.image_ids
    with pytest.raises(ValueError, match="validation fraction"):
        ds.split_validation(1.0)


def test_bad_shapes_settings_are_rejected():
    with pytest.raises(ValueError, match="min_objects"):
        ShapesSettings(min_objects=3, max_objects=2)
    with pytest.raises(ValueError, match="min_size"):
        ShapesSettings(min_size=0.0)
    with pytest.raises(ValueError, match="16 pixels"):
        make_shapes(SMALL, 8)
    assert isinstance(ShapesSettings(min_size=1, max_size=1).min_size, float)  # the run key sees 1.0, never 1
