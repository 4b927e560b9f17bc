"""FLOPs of forward passes and of training steps, counted from real passes.

Definition used in every table: the training FLOPs of a run are

    samples seen x (teacher forward + student forward + student backward)

with the three terms counted *per sample* by running the model once under
:class:`torch.utils.flop_counter.FlopCounterMode` (teacher forward is 0 when
there is no teacher). They are reported in the paper's unit "GFLOPs (M)",
millions of GFLOPs, i.e. units of 1e15 FLOPs (:func:`gflops_millions`).

What is counted is what FlopCounterMode counts: 2 FLOPs per multiply-
accumulate of convolutions, matrix products and attention, in the forward and
in the backward pass. Bias additions, batch norm, activations, pooling,
softmax and the loss are not counted; they are a small fraction of the total
for convolutional networks. A convolution's backward costs one forward for
the weight gradient, plus one more for the input gradient when its input
needs a gradient (so the first layer's backward is a single forward).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from math import prod
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

logger = logging.getLogger(__name__)

# Per-sample training-step counts are taken on a batch of this size and
# divided: batch norm in train mode refuses a single sample on 1x1 maps.
_STEP_BATCH = 2


@dataclass(frozen=True)
class StepFlops:
    """FLOPs of one training step for ONE sample."""

    teacher_forward: int
    student_forward: int
    student_backward: int

    @property
    def total(self) -> int:
        return self.teacher_forward + self.student_forward + self.student_backward

    def to_dict(self) -> Dict[str, int]:
        return {**asdict(self), "total": self.total}


@dataclass(frozen=True)
class KDStepFlops(StepFlops):
    """FLOPs of one knowledge-distillation step for ONE sample."""


def gflops_millions(flops: float) -> float:
    """Convert FLOPs to the paper's unit "GFLOPs (M)": millions of GFLOPs (1e15 FLOPs)."""
    return float(flops) / 1e15


# --------------------------------------------------------------------------- counting


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation,
                         transposed, _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """FLOPs of ``aten.convolution_backward``, right for grouped convolutions.

    Why this exists: torch's own formula builds the weight gradient as an
    ungrouped convolution, so for ``groups=g`` it counts g times too many FLOPs
    (a depthwise conv's weight gradient by a factor of C). That would inflate
    the backward pass of MobileNetV2 and ShuffleNetV2 students.

    Every multiply-accumulate x * w -> y of the forward pass appears exactly
    once in the input gradient (grad_y * w -> grad_x) and once in the weight
    gradient (grad_y * x -> grad_w), so each requested gradient costs one
    forward pass. The forward count is 2 * N * prod(w_shape) * prod(spatial),
    where w_shape already holds only C_in / g input channels, and the spatial
    extent is the output's (the input's for a transposed conv). The bias
    gradient (output_mask[2]) is a sum and, like bias adds, is not counted.
    """
    spatial = (x_shape if transposed else grad_out_shape)[2:]
    forward = 2 * x_shape[0] * prod(w_shape) * prod(spatial)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def flop_counter() -> FlopCounterMode:
    """A silent FlopCounterMode whose grouped convolutions' backward passes are counted right."""
    return FlopCounterMode(display=False,
                           custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flops})


def _device_dtype(model: nn.Module) -> Tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's first parameter or buffer (CPU float32 if none)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


def _batch_shape(input_shape: Sequence[int]) -> Tuple[int, ...]:
    """(C, H, W) -> (1, C, H, W); (N, C, H, W) unchanged."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) not in (3, 4) or any(s < 1 for s in shape):
        raise ValueError(f"input_shape must be (C, H, W) or (N, C, H, W) with positive sizes; got {input_shape!r}")
    return shape if len(shape) == 4 else (1,) + shape


def _sample_shape(input_shape: Sequence[int]) -> Tuple[int, ...]:
    """The (C, H, W) of one sample; a leading batch size is dropped."""
    return _batch_shape(input_shape)[1:]


def _dummy(model: nn.Module, shape: Tuple[int, ...]) -> torch.Tensor:
    device, dtype = _device_dtype(model)
    # Random rather than zeros so data-dependent paths look like real data;
    # a private generator leaves the caller's global RNG stream untouched.
    gen = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=gen).to(device=device, dtype=dtype)


def _scalar(output) -> torch.Tensor:
    """A scalar to backpropagate from a model output (tensor, or tuple/list/dict of tensors).

    Its own cost (a sum) is not counted by FlopCounterMode, like a real loss.
    """
    if isinstance(output, torch.Tensor):
        return output.float().sum()
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        parts = [_scalar(o) for o in output if isinstance(o, (torch.Tensor, list, tuple, dict))]
        if parts:
            return torch.stack(parts).sum()
    raise TypeError(f"cannot backpropagate from a model output of type {type(output).__name__}")


@contextmanager
def _mode(model: nn.Module, training: bool) -> Iterator[None]:
    """Put ``model`` in train/eval mode for the block and restore every submodule's mode after."""
    saved = [(m, m.training) for m in model.modules()]
    model.train(training)
    try:
        yield
    finally:
        for m, was_training in saved:
            m.training = was_training


@contextmanager
def _untouched_buffers(model: nn.Module) -> Iterator[None]:
    """Restore the buffers (batch-norm running statistics) a train-mode pass updates."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)


def _count_forward(model: nn.Module, x: torch.Tensor) -> int:
    with _mode(model, False), torch.no_grad():
        counter = flop_counter()
        with counter:
            model(x)
    return counter.get_total_flops()


# --------------------------------------------------------------------------- public API


def forward_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass in eval mode.

    ``input_shape`` is (C, H, W) for one sample or (N, C, H, W) for a batch of N.
    The model's train/eval mode is restored afterwards.
    """
    return _count_forward(model, _dummy(model, _batch_shape(input_shape)))


def train_step_flops(model: nn.Module, input_shape: Sequence[int]) -> StepFlops:
    """Per-sample FLOPs of one plain training step: forward and backward in train mode.

    ``input_shape`` is (C, H, W); a leading batch size is accepted and ignored,
    since the result is per sample. The model's mode, batch-norm statistics and
    ``.grad`` attributes are left as they were.
    """
    fwd, bwd = _student_step(model, _sample_shape(input_shape))
    return StepFlops(teacher_forward=0, student_forward=fwd, student_backward=bwd)


def kd_step_flops(teacher: nn.Module, student: nn.Module, input_shape: Sequence[int]) -> KDStepFlops:
    """Per-sample FLOPs of one KD step: teacher forward (eval, no grad) plus
    student forward and backward (train mode). Inputs as :func:`train_step_flops`."""
    sample = _sample_shape(input_shape)
    batch = (_STEP_BATCH,) + sample
    teacher_fwd = _count_forward(teacher, _dummy(teacher, batch)) // _STEP_BATCH
    fwd, bwd = _student_step(student, sample)
    return KDStepFlops(teacher_forward=teacher_fwd, student_forward=fwd, student_backward=bwd)


def _student_step(model: nn.Module, sample_shape: Tuple[int, ...]) -> Tuple[int, int]:
    """(forward, backward) FLOPs per sample of a train-mode step on a batch of 2."""
    x = _dummy(model, (_STEP_BATCH,) + sample_shape)
    params = [p for p in model.parameters() if p.requires_grad]
    with _mode(model, True), _untouched_buffers(model), torch.enable_grad():
        fwd_counter = flop_counter()
        with fwd_counter:
            loss = _scalar(model(x))
        bwd_counter = flop_counter()
        if params:
            # autograd.grad returns the gradients instead of accumulating them
            # into .grad, so the caller's gradients stay exactly as they were.
            # The input needs no gradient, as in training: the first layer's
            # backward is then its weight gradient only.
            with bwd_counter:
                torch.autograd.grad(loss, params, allow_unused=True)
        else:
            logger.warning("model has no trainable parameters: backward FLOPs are 0")
    forward, backward = fwd_counter.get_total_flops(), bwd_counter.get_total_flops()
    # Counts are linear in the batch size, so the division is exact.
    return forward // _STEP_BATCH, backward // _STEP_BATCH


def student_run_flops(per_sample: StepFlops, samples_seen: int, images_evaluated: int, teacher_forwards: int = 0,
                      forward_per_image: Optional[int] = None) -> Dict[str, Any]:
    """FLOPs by phase of a run that trains one student (and forwards a teacher ``teacher_forwards`` times):
    training = samples seen x (student forward + backward) + teacher forwards x teacher forward; evaluation =
    images evaluated x one forward (``forward_per_image``, by default the student's forward in a step)."""
    forward = per_sample.student_forward if forward_per_image is None else forward_per_image
    return {
        "by_phase": {
            "training": float(per_sample.student_forward + per_sample.student_backward) * samples_seen
            + float(per_sample.teacher_forward) * teacher_forwards,
            "evaluation": float(forward) * images_evaluated,
        },
        "per_sample": per_sample.to_dict(),
        "samples_seen": samples_seen,
        "teacher_forwards": teacher_forwards,
        "images_evaluated": images_evaluated,
    }
