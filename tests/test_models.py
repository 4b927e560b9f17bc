"""Tests for greenkd_utils.core.models: sizes, shapes, errors, Grad-CAM targets."""

from __future__ import annotations

import pytest
import torch

from greenkd_utils.core.models import (
    MODELS,
    WideResNet,
    available_models,
    create_model,
    gradcam_target_layers,
    register_model,
)

# Parameter counts at 10 classes that the models must match within 3%.
EXPECTED_PARAMS = {
    "resnet18": 11.17e6,
    "mobilenetv2": 2.24e6,
    "shufflenetv2": 1.26e6,
    "wrn40_2": 2.24e6,
    "wrn16_1": 0.175e6,
    "cnn_small": 5466,  # 3 input channels, 16 and 32 channels: 432 + 4608 conv weights, 96 BN, 330 in the head
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a small shared CPU, extra threads mostly wait on each other."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_every_model():
    assert available_models() == sorted(EXPECTED_PARAMS)
    assert set(MODELS) == set(EXPECTED_PARAMS)


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_param_count_at_10_classes(name):
    count = n_params(create_model(name, num_classes=10))
    assert count == pytest.approx(EXPECTED_PARAMS[name], rel=0.03)


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_forward_backward_at_every_size(name):
    torch.manual_seed(0)
    for in_channels in (1, 3):
        model = create_model(name, num_classes=7, in_channels=in_channels)
        model.train()
        for size in (8, 16, 32, 64):
            x = torch.randn(2, in_channels, size, size)
            out = model(x)
            assert out.shape == (2, 7)
            out.sum().backward()
            assert all(p.grad is not None for p in model.parameters())
            model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", ["resnet18", "wrn16_1"])
def test_init_is_deterministic_given_seed(name):
    torch.manual_seed(123)
    a = create_model(name, 10).state_dict()
    torch.manual_seed(123)
    b = create_model(name, 10).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="resnet18") as info:
        create_model("resnet999", 10)
    assert all(name in str(info.value) for name in available_models())
    with pytest.raises(ValueError, match="wrn16_1"):
        gradcam_target_layers("nope", create_model("wrn16_1", 10))


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_sizes_are_rejected(bad):
    with pytest.raises(ValueError, match="num_classes"):
        create_model("wrn16_1", num_classes=bad)
    with pytest.raises(ValueError, match="in_channels"):
        create_model("wrn16_1", num_classes=10, in_channels=bad)


def test_register_model_rejects_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet18")(lambda num_classes, in_channels=3: None)


def test_wide_resnet_rejects_bad_depth():
    with pytest.raises(ValueError, match="6n \\+ 4"):
        WideResNet(depth=15, widen_factor=1, num_classes=10)


def _map_size(model, layer, in_channels, size):
    """Spatial size (H, W) of ``layer``'s output for one input of side ``size``."""
    seen = {}

    def hook(module, inputs, output):
        seen["shape"] = output.shape  # returning None keeps the output unchanged

    handle = layer.register_forward_hook(hook)
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, in_channels, size, size))
    handle.remove()
    return tuple(seen["shape"][-2:])


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_gradcam_targets_belong_to_model_and_are_not_1x1(name):
    model = create_model(name, num_classes=10, in_channels=1)
    modules = list(model.modules())
    for size in (None, 8, 32):
        layers = gradcam_target_layers(name, model, input_size=size)
        assert layers and all(any(layer is m for m in modules) for layer in layers)
        h, w = _map_size(model, layers[0], 1, size or 8)
        assert h * w > 1
    # With the real input size a larger image may use a deeper block.
    assert _map_size(model, gradcam_target_layers(name, model, 32)[0], 1, 32)[0] >= 2
    if name == "resnet18":
        assert gradcam_target_layers(name, model)[0] is model.layer3[-1]
        assert gradcam_target_layers(name, model, input_size=32)[0] is model.layer4[-1]
