"""Tests for greenkd_utils.energy.flops against hand counts.

Hand-count conventions (those of torch's FlopCounterMode): 2 FLOPs per
multiply-accumulate; bias additions and the bias gradient are not counted; a
conv or linear layer's backward is one forward for the weight gradient plus one
more for the input gradient, which the first layer does not need (its input is
data, not a parameter output).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from greenkd_utils.core.models import create_model
from greenkd_utils.energy.flops import (
    KDStepFlops,
    StepFlops,
    forward_flops,
    gflops_millions,
    kd_step_flops,
    train_step_flops,
)


def conv_hand(n, c_out, c_in, groups, k, h_out, w_out):
    """2 * N * C_out * (C_in / g) * kh * kw * H_out * W_out."""
    return 2 * n * c_out * (c_in // groups) * k * k * h_out * w_out


# (layer, sample shape, hand forward FLOPs for one sample)
PLAIN_CONV = (lambda bias: nn.Conv2d(3, 8, 3, padding=1, bias=bias), (3, 10, 10), conv_hand(1, 8, 3, 1, 3, 10, 10))
DEPTHWISE = (lambda bias: nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=bias), (6, 8, 8), conv_hand(1, 6, 6, 6, 3, 8, 8))
GROUPED = (lambda bias: nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=4, bias=bias), (8, 9, 9),
           conv_hand(1, 16, 8, 4, 3, 5, 5))
LINEAR = (lambda bias: nn.Sequential(nn.Flatten(), nn.Linear(48, 10, bias=bias)), (3, 4, 4), 2 * 48 * 10)
LAYERS = {"conv": PLAIN_CONV, "depthwise": DEPTHWISE, "grouped": GROUPED, "linear": LINEAR}


@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize("bias", [False, True])
def test_single_layer_forward_and_step(kind, bias):
    make, shape, hand = LAYERS[kind]
    layer = make(bias)
    # Bias adds are not counted (FlopCounterMode counts multiply-accumulates
    # only), so the count is the same with and without bias.
    assert forward_flops(layer, shape) == hand
    assert forward_flops(layer, (4,) + shape) == 4 * hand
    step = train_step_flops(layer, shape)
    # The only layer's input is data: its backward is the weight gradient alone.
    assert step == StepFlops(teacher_forward=0, student_forward=hand, student_backward=hand)
    assert step.total == 2 * hand


def test_backward_is_two_forwards_after_the_first_layer():
    net = nn.Sequential(
        nn.Conv2d(3, 6, 1),                             # first layer: weight gradient only
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1, groups=6),        # depthwise
        nn.BatchNorm2d(6),
        nn.Conv2d(6, 12, 3, stride=2, padding=1, groups=3),  # grouped, 8x8 -> 4x4
        nn.Flatten(),
        nn.Linear(12 * 4 * 4, 5),
    )
    first = conv_hand(1, 6, 3, 1, 1, 8, 8)
    rest = conv_hand(1, 6, 6, 6, 3, 8, 8) + conv_hand(1, 12, 6, 3, 3, 4, 4) + 2 * 192 * 5
    step = train_step_flops(net, (3, 8, 8))
    assert step.student_forward == first + rest
    assert step.student_backward == first + 2 * rest


def _torch_raw_backward(layer, shape):
    """Backward FLOPs as torch's own formula counts them (no correction), per sample."""
    x = torch.randn((2,) + shape, requires_grad=True)
    counter = FlopCounterMode(display=False)
    out = layer(x)
    with counter:
        torch.autograd.grad(out.sum(), [x] + list(layer.parameters()))
    return counter.get_total_flops() // 2


def test_torch_grouped_weight_gradient_is_corrected():
    """torch counts a grouped conv's weight gradient as if ungrouped (g times
    too much) in the versions we know; ours must be exact either way."""
    groups = 4
    make, shape, hand = GROUPED
    layer = make(False)
    raw = _torch_raw_backward(layer, shape)  # input gradient + weight gradient
    assert raw in (2 * hand, hand + groups * hand), raw
    # Our count, with the input needing a gradient: one forward each.
    net = nn.Sequential(nn.Conv2d(8, 8, 1), layer)
    step = train_step_flops(net, shape)
    assert step.student_backward == conv_hand(1, 8, 8, 1, 1, 9, 9) + 2 * hand


@pytest.mark.parametrize("layer", [
    nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1),
    nn.Conv2d(4, 6, 3, padding=2, dilation=2),
    nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1),
], ids=["strided", "dilated", "transposed"])
def test_correction_agrees_with_torch_when_ungrouped(layer):
    net = nn.Sequential(nn.Conv2d(4, 4, 1), layer)
    raw = _torch_raw_backward(net, (4, 7, 7)) - _torch_raw_backward(nn.Sequential(net[0]), (4, 7, 7))
    # raw includes the 1x1 conv's input gradient and both gradients of `layer`;
    # subtracting the 1x1 conv alone leaves `layer`'s two gradients.
    ours = train_step_flops(net, (4, 7, 7)).student_backward - forward_flops(net[0], (4, 7, 7))
    assert ours == raw


def test_resnet18_cifar_forward():
    flops = forward_flops(create_model("resnet18", 10), (3, 32, 32))
    assert 1.0e9 < flops < 1.2e9


def test_kd_step_is_teacher_forward_plus_student_step():
    teacher = create_model("wrn16_1", 10)
    student = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    shape = (3, 16, 16)
    kd = kd_step_flops(teacher, student, shape)
    assert isinstance(kd, KDStepFlops)
    assert kd.teacher_forward == forward_flops(teacher, shape) > 0
    plain = train_step_flops(student, shape)
    assert (kd.student_forward, kd.student_backward) == (plain.student_forward, plain.student_backward)
    assert kd.total == kd.teacher_forward + kd.student_forward + kd.student_backward
    assert kd.to_dict() == {"teacher_forward": kd.teacher_forward, "student_forward": kd.student_forward,
                            "student_backward": kd.student_backward, "total": kd.total}
    # A leading batch size is ignored: the counts are per sample.
    assert kd_step_flops(teacher, student, (8,) + shape) == kd


def test_model_state_is_left_as_it_was():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    net.train()
    net[1].eval()  # a mixed state must come back exactly
    net[0].weight.grad = torch.ones_like(net[0].weight)
    buffers = {k: v.clone() for k, v in net.named_buffers()}

    forward_flops(net, (3, 8, 8))
    train_step_flops(net, (3, 8, 8))
    kd_step_flops(net, net, (3, 8, 8))

    assert [m.training for m in net.modules()] == [True, True, False, True, True]
    assert torch.equal(net[0].weight.grad, torch.ones_like(net[0].weight))
    assert all(p.grad is None for name, p in net.named_parameters() if name != "0.weight")
    assert all(torch.equal(v, buffers[k]) for k, v in net.named_buffers())


def test_uses_model_dtype():
    layer = nn.Conv2d(3, 8, 3, padding=1).double()
    assert forward_flops(layer, (3, 10, 10)) == PLAIN_CONV[2]


@pytest.mark.parametrize("shape", [(3, 8), (1, 2, 3, 8, 8), (0, 8, 8)])
def test_bad_input_shape(shape):
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        forward_flops(nn.Conv2d(3, 3, 1), shape)


def test_gflops_millions():
    assert gflops_millions(2.5e15) == pytest.approx(2.5)
    assert gflops_millions(0) == 0.0
