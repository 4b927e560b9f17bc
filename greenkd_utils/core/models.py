"""CIFAR-style classification models, looked up by name.

Every model has a 3x3 stride-1 stem and no max-pool, as is usual for 32x32
images, and ends with adaptive average pooling, so the same network runs on
8x8 (scikit-learn digits, the demo data), 16x16, 32x32 (CIFAR) and 64x64
(Tiny ImageNet) inputs. ``in_channels`` replaces the stem's input channels
(digits are greyscale).

Parameter counts at 10 classes::

    resnet18      11.17M   torchvision ResNet-18, CIFAR stem
    mobilenetv2    2.24M   torchvision MobileNetV2, total stride 8
    shufflenetv2   1.26M   torchvision ShuffleNetV2 x1.0, CIFAR stem
    wrn40_2        2.24M   Wide ResNet 40-2 (written here)
    wrn16_1        0.175M  Wide ResNet 16-1 (written here)
    cnn_small      0.006M  two conv blocks and a linear head: the demo's deliberately weak student

Adding a model is one decorated builder::

    @register_model("my_net")
    def my_net(num_classes: int, in_channels: int = 3) -> nn.Module:
        ...

Any model of the timm library is also accepted by name, prefixed ``timm:``
(``"timm:resnet50"``, ``"timm:mobilenetv3_small_100"``). It is built with
fresh weights, never downloaded ones (``pretrained=False``): a pretrained
teacher would carry training that no run record accounts for, in energy or in
FLOPs. timm's ImageNet models keep their stride-2 stems, so on 8x8 digits their
deeper feature maps are 1x1; they still train, but the built-in models above
suit small images better.
"""

from __future__ import annotations

import difflib
import logging
import math
from typing import Any, Callable, Dict, List

import torch
from torch import nn
from torchvision import models as tvm

logger = logging.getLogger(__name__)

ModelBuilder = Callable[..., nn.Module]

MODELS: Dict[str, ModelBuilder] = {}

# The smallest input side every model must handle (the 8x8 digits).
SMALLEST_INPUT = 8

# A model name that starts with this is a timm model: the rest is its name in ``timm.list_models()``.
TIMM_PREFIX = "timm:"


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator adding a builder ``fn(num_classes, in_channels)`` to :data:`MODELS`."""

    def decorator(fn: ModelBuilder) -> ModelBuilder:
        if name in MODELS:
            raise ValueError(f"model {name!r} is already registered")
        MODELS[name] = fn
        return fn

    return decorator


def available_models() -> List[str]:
    """The built-in model names, sorted; :func:`create_model` also accepts ``timm:<name>``."""
    return sorted(MODELS)


def is_timm_model(name: Any) -> bool:
    """Whether ``name`` asks for a timm model (``timm:<name>``), known to timm or not."""
    return isinstance(name, str) and name.startswith(TIMM_PREFIX)


def check_model_name(name: Any) -> None:
    """Refuse, naming the value, a model name that :func:`create_model` cannot build."""
    if is_timm_model(name):
        _check_timm_name(name)
    elif not isinstance(name, str) or name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(available_models())}, "
                         f"or {TIMM_PREFIX}<name> for any model in timm.list_models()")


def _timm():
    # Imported on first use: timm takes seconds to import, and only a "timm:" model needs it (every process
    # that reads a config, a Ray worker included, would pay for it otherwise).
    import timm

    return timm


def _check_timm_name(name: str) -> None:
    timm = _timm()
    timm_name = name[len(TIMM_PREFIX):]
    architecture, dot, tag = timm_name.partition(".")
    if dot and timm.is_model(architecture):
        # A tag names a set of pretrained weights, and weights are never loaded here.
        raise ValueError(f"model {name!r} names the pretrained weights {tag!r}, which are never loaded "
                         f"(runs start from fresh weights); use {TIMM_PREFIX}{architecture}")
    if not timm.is_model(timm_name):
        close = difflib.get_close_matches(timm_name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; close names: {', '.join(TIMM_PREFIX + c for c in close)}" if close else ""
        raise ValueError(f"unknown timm model {name!r}: {timm_name!r} is not in timm.list_models(){hint}")


def create_model(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """Build the model registered as ``name`` (or the timm model ``timm:<name>``) with fresh (seeded) weights.

    Initialisation only draws from torch's global generator, so calling
    ``torch.manual_seed`` first makes the weights reproducible.
    """
    check_model_name(name)
    for label, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be a positive integer; got {value!r}")
    if is_timm_model(name):
        model = _timm().create_model(name[len(TIMM_PREFIX):], pretrained=False,
                                  num_classes=num_classes, in_chans=in_channels)
    else:
        model = MODELS[name](num_classes=num_classes, in_channels=in_channels)
    n_params = sum(p.numel() for p in model.parameters())
    logger.debug("created %s (%d classes, %d input channels): %d parameters",
                 name, num_classes, in_channels, n_params)
    return model


def _stem_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    """A 3x3 stride-1 stem conv, initialised like torchvision's own convs."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


# --------------------------------------------------------------------------- torchvision


@register_model("resnet18")
def resnet18(num_classes: int, in_channels: int = 3) -> nn.Module:
    """ResNet-18 with a CIFAR stem: the 7x7 stride-2 conv and the max-pool would
    shrink a 32x32 image to 8x8 before the first residual block."""
    model = tvm.resnet18(weights=None, num_classes=num_classes)
    model.conv1 = _stem_conv(in_channels, 64)
    model.maxpool = nn.Identity()
    return model


# torchvision's ImageNet table (expansion t, channels c, repeats n, stride s)
# with the first stride-2 stage set to stride 1: together with the stride-1
# stem this is the usual CIFAR variant, total stride 8 instead of 32.
_MOBILENETV2_CIFAR_SETTING = [
    [1, 16, 1, 1],
    [6, 24, 2, 1],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]


@register_model("mobilenetv2")
def mobilenetv2(num_classes: int, in_channels: int = 3) -> nn.Module:
    """MobileNetV2 (width 1.0) for small images: stride-1 stem, total stride 8."""
    model = tvm.mobilenet_v2(weights=None, num_classes=num_classes,
                             inverted_residual_setting=_MOBILENETV2_CIFAR_SETTING)
    stem = model.features[0][0]
    model.features[0][0] = _stem_conv(in_channels, stem.out_channels)
    return model


@register_model("shufflenetv2")
def shufflenetv2(num_classes: int, in_channels: int = 3) -> nn.Module:
    """ShuffleNetV2 x1.0 with a 3x3 stride-1 stem and no max-pool (total stride 8)."""
    model = tvm.shufflenet_v2_x1_0(weights=None, num_classes=num_classes)
    stem = model.conv1[0]
    model.conv1[0] = _stem_conv(in_channels, stem.out_channels)
    model.maxpool = nn.Identity()
    return model


# --------------------------------------------------------------------------- Wide ResNet


class _WideBasicBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus a shortcut.

    When the shape changes, the 1x1 projection shortcut reads the *activated*
    input, as in the authors' reference code, so both branches see BN-ReLU.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(activated))))
        identity = x if self.shortcut is None else self.shortcut(activated)
        return out + identity


class WideResNet(nn.Module):
    """Wide ResNet WRN-``depth``-``widen_factor`` for small images (Zagoruyko &
    Komodakis, 2016): a 16-channel stem, three groups of (depth - 4) / 6
    pre-activation basic blocks with 16k, 32k, 64k channels (strides 1, 2, 2),
    a final BN-ReLU, global average pooling and a linear classifier. No dropout.
    """

    def __init__(self, depth: int, widen_factor: int, num_classes: int, in_channels: int = 3):
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40, ...); got {depth}")
        if widen_factor < 1:
            raise ValueError(f"widen_factor must be >= 1; got {widen_factor}")
        n_blocks = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]

        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = self._group(widths[0], widths[1], n_blocks, stride=1)
        self.block2 = self._group(widths[1], widths[2], n_blocks, stride=2)
        self.block3 = self._group(widths[2], widths[3], n_blocks, stride=2)
        # The blocks are pre-activation, so the last block's output has not yet
        # been normalised: this BN-ReLU produces the features the pooling sees.
        self.final_act = nn.Sequential(nn.BatchNorm2d(widths[3]), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        self._init_weights()

    @staticmethod
    def _group(in_planes: int, out_planes: int, n_blocks: int, stride: int) -> nn.Sequential:
        blocks = [_WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
                  for i in range(n_blocks)]
        return nn.Sequential(*blocks)

    def _init_weights(self) -> None:
        # The initialisation of the reference implementation: He-normal convs
        # (fan-out), unit BN scales, zero biases.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.block3(self.block2(self.block1(x)))
        x = self.pool(self.final_act(x))
        return self.fc(torch.flatten(x, 1))


@register_model("wrn40_2")
def wrn40_2(num_classes: int, in_channels: int = 3) -> nn.Module:
    """WRN-40-2, the data-free KD teacher (about 2.24M parameters at 10 classes)."""
    return WideResNet(40, 2, num_classes, in_channels)


@register_model("wrn16_1")
def wrn16_1(num_classes: int, in_channels: int = 3) -> nn.Module:
    """WRN-16-1, the data-free KD student (about 0.175M parameters at 10 classes)."""
    return WideResNet(16, 1, num_classes, in_channels)


class SmallCNN(nn.Module):
    """Two 3x3 conv blocks (the second at stride 2), global average pooling and a linear head.

    A student that is clearly weaker than any teacher here, so that on the demo's small digits
    training set distillation has something to transfer (a WRN-16-1 student alone already matches
    a ResNet18 teacher on digits).
    """

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 16):
        super().__init__()
        self.block1 = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        self.block2 = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.block2(self.block1(x))), 1))


@register_model("cnn_small")
def cnn_small(num_classes: int, in_channels: int = 3) -> nn.Module:
    """The demo's student: about 5k parameters at 10 classes (5,178 on greyscale digits)."""
    return SmallCNN(num_classes, in_channels)


# --------------------------------------------------------------------------- Grad-CAM


def _gradcam_candidates(name: str, model: nn.Module) -> List[tuple]:
    """(layer, total stride of its output) pairs, deepest first.

    The deepest layer carries the most class-specific information, but at a
    total stride s its map is only ceil(H / s) pixels wide, and a 1x1 map makes
    Grad-CAM a constant. So each model lists a shallower fallback too.
    """
    if name == "resnet18":
        # layer4 (stride 8) is the textbook choice; it is 4x4 at 32 px but 1x1
        # on 8 px digits, where layer3 (stride 4) still gives 2x2.
        return [(model.layer4[-1], 8), (model.layer3[-1], 4)]
    if name == "mobilenetv2":
        # features[-1] is the 1x1 conv to 1280 channels (stride 8); features[13]
        # ends the 96-channel stage, the last one at stride 4.
        return [(model.features[-1], 8), (model.features[13], 4)]
    if name == "shufflenetv2":
        # conv5 follows stage4 (stride 8); stage3 is the last stage at stride 4.
        return [(model.conv5, 8), (model.stage3, 4)]
    if name in ("wrn40_2", "wrn16_1"):
        # Total stride is only 4, so the final BN-ReLU (the activated output of
        # the last group) is at least 2x2 at every supported size.
        return [(model.final_act, 4), (model.block2, 2)]
    if name == "cnn_small":
        return [(model.block2, 2), (model.block1, 1)]
    raise ValueError(f"no Grad-CAM target layers known for {name!r}; valid: {', '.join(available_models())}")


def gradcam_target_layers(name: str, model: nn.Module, input_size: int | None = None) -> List[nn.Module]:
    """Layers of ``model`` (built as ``name``) to use as Grad-CAM targets.

    Returns the deepest convolutional block whose feature map is still larger
    than 1x1 for inputs of side ``input_size``. With ``input_size=None`` the
    choice is made for the smallest supported input (8 px), so it works at
    every size: e.g. ``layer3[-1]`` for resnet18 (2x2 at 8 px, 8x8 at 32 px).
    Pass the real input side to get the deepest usable block (``layer4[-1]``
    for resnet18 at 32 px).
    """
    if is_timm_model(name):
        raise ValueError(f"no Grad-CAM target layers known for the timm model {name!r}; Grad-CAM works with the "
                         f"built-in models: {', '.join(available_models())}")
    check_model_name(name)
    size = SMALLEST_INPUT if input_size is None else int(input_size)
    if size < 1:
        raise ValueError(f"input_size must be a positive integer; got {input_size!r}")
    candidates = _gradcam_candidates(name, model)
    for layer, stride in candidates:
        if math.ceil(size / stride) > 1:
            return [layer]
    # Tiny inputs: every map is 1x1; the shallowest candidate is the least bad.
    logger.warning("input size %d gives a 1x1 map at every Grad-CAM candidate of %s", size, name)
    return [candidates[-1][0]]
