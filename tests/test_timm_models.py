"""Any timm model by name (``timm:<name>``) as a teacher or a student: built with fresh weights for the data's
classes and channels, refused by name when timm does not know it, and distilled through the same run lifecycle
as the built-in models, with its FLOPs, checkpoint, run key and cache working like theirs."""

from __future__ import annotations

import pytest
import torch

from greenkd_utils.core.augment import standardize
from greenkd_utils.core.config import TemperatureSpec
from greenkd_utils.core.data import load_dataset
from greenkd_utils.core.models import check_model_name, create_model, gradcam_target_layers
from greenkd_utils.energy.flops import kd_step_flops
from greenkd_utils.runs.lifecycle import train
from greenkd_utils.runs.store import RunStore

# Small enough to train in a second or two on the smoke slice of the 8x8 digits.
TEACHER = "timm:resnet10t"
STUDENT = "timm:mobilenetv3_small_050"


@pytest.mark.parametrize("name", [TEACHER, STUDENT])
def test_timm_model_has_the_data_classes_and_channels(name):
    for num_classes, in_channels in ((7, 1), (3, 3)):
        model = create_model(name, num_classes=num_classes, in_channels=in_channels).eval()
        with torch.no_grad():
            assert model(torch.randn(2, in_channels, 8, 8)).shape == (2, num_classes)


def test_timm_weights_are_fresh_and_follow_the_seed():
    torch.manual_seed(0)
    a = create_model(STUDENT, 10, 1).state_dict()
    torch.manual_seed(0)
    b = create_model(STUDENT, 10, 1).state_dict()
    torch.manual_seed(1)
    c = create_model(STUDENT, 10, 1).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_unknown_timm_name_is_refused_by_name_with_close_names():
    with pytest.raises(ValueError, match=r"'timm:resnet5'.*close names: .*timm:resnet50"):
        create_model("timm:resnet5", 10)
    with pytest.raises(ValueError, match=r"'timm:'"):
        check_model_name("timm:")


def test_pretrained_weight_tags_are_refused():
    with pytest.raises(ValueError, match=r"'timm:resnet50.a1_in1k'.*never loaded.*use timm:resnet50"):
        check_model_name("timm:resnet50.a1_in1k")


def test_run_config_takes_timm_names_and_refuses_unknown_ones(smoke):
    config = smoke.kd_config("digits", 0, teacher_model=TEACHER, student_model=STUDENT)
    assert (config.teacher.model, config.model) == (TEACHER, STUDENT)
    with pytest.raises(ValueError, match=r"'timm:mobilenetv3_smal'"):
        smoke.kd_config("digits", 0, student_model="timm:mobilenetv3_smal")


def test_gradcam_names_the_timm_model_it_cannot_serve():
    with pytest.raises(ValueError, match=r"no Grad-CAM target layers known for the timm model 'timm:resnet10t'"):
        gradcam_target_layers(TEACHER, create_model(TEACHER, 10, 1))


def test_a_timm_pair_distils_through_the_run_lifecycle(smoke, tmp_path):
    config = smoke.kd_config("digits", 0, "hkd", TemperatureSpec.fixed(4), teacher_model=TEACHER,
                             student_model=STUDENT)
    store = RunStore(tmp_path)
    kd = train(config, store, device="cpu", progress=False)
    trained = [e["name"] for e in store.training_log() if e["event"] == "started"]
    assert trained == [config.teacher.name, config.name]
    assert [h["epoch"] for h in kd.history] == list(range(1, config.train.epochs + 1))

    # FLOPs: what the flop counter gives on the two timm models, times the samples the run saw.
    flops = kd.flops
    per_sample = kd_step_flops(create_model(TEACHER, 10, 1), create_model(STUDENT, 10, 1), (1, 8, 8))
    assert flops["per_sample"] == per_sample.to_dict() and per_sample.teacher_forward > 0
    expected = ((per_sample.student_forward + per_sample.student_backward) * flops["samples_seen"]
                + per_sample.teacher_forward * flops["teacher_forwards"])
    assert kd.training_flops == pytest.approx(expected) and kd.training_flops > 0
    assert kd.energy.energy_kwh > 0

    # The stored weights give back the recorded accuracy; fresh weights would not predict the same.
    dataset = load_dataset("digits").subset(train=config.train_subset, test=config.test_subset, seed=0)
    x = standardize(dataset.test_images.float() / 255.0, torch.tensor(dataset.mean), torch.tensor(dataset.std))
    model = kd.load_model(store)
    with torch.no_grad():
        logits = model(x)
        fresh = create_model(STUDENT, 10, 1).eval()(x)
    assert logits.shape == (len(dataset.test_labels), 10)
    accuracy = float((logits.argmax(1) == dataset.test_labels).float().mean() * 100)
    assert accuracy == pytest.approx(kd.test_accuracy, abs=1e-4)
    assert not torch.equal(logits, fresh)

    # Its own run key, apart from the same run with the built-in models.
    assert kd.key == config.key != config.replace(model=smoke.student_model).key
    assert config.teacher.key != config.teacher.replace(model=smoke.teacher_model).key

    # Asked again, the run comes from the store: nothing is trained.
    logged = len(store.training_log())
    again = train(config, store, device="cpu", progress=False)
    assert len(store.training_log()) == logged
    assert again.to_dict() == kd.to_dict()
