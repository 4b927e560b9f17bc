"""The detectors: an SSD teacher on VGG16 and an SSDLite student on MobileNetV2, with identical anchors.

Both are assembled from torchvision's detection parts (``SSDHead``,
``SSDLiteHead``, ``DefaultBoxGenerator``, the SSD ``BoxCoder``) around
backbones cut so that they produce feature maps of the same sizes at the same
strides: two taps inside the backbone (stride 8 and stride 16), then extra
layers that halve the map each time (``ceil(n / 2)``, as a padded stride-2
convolution or a ``ceil_mode`` pooling does). One anchor configuration then
serves both networks, so the teacher's class logits for anchor ``a`` describe
the same box as the student's logits for anchor ``a`` and can be distilled.

At 300 x 300 the maps are 38, 19, 10, 5, 3 and 2 cells wide (SSD300's grid,
whose last map would be 1 cell with SSD300's unpadded extra layers; padded
stride-2 layers keep the grid the same for every input size).

``SSDDetector.forward`` returns the raw head outputs, ``{"cls_logits": (N, A,
C + 1), "bbox_regression": (N, A, 4)}``, so the training loop sees every
anchor's logits (torchvision's ``SSD`` class hides them behind its loss).
No pretrained weights are used and nothing is downloaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models import vgg as tv_vgg
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.ssd import SSDHead
from torchvision.models.detection.ssdlite import SSDLiteHead
from torchvision.ops import batched_nms, clip_boxes_to_image

log = logging.getLogger(__name__)

__all__ = ["DETECTORS", "AnchorSettings", "SSDDetector", "create_detector"]

TEACHER, STUDENT = "vgg16_ssd", "mobilenetv2_ssdlite"
DETECTORS = (TEACHER, STUDENT)

# SSD's box coder weights (centre offsets scaled by 10, log-sizes by 5).
BOX_CODER_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


@dataclass(frozen=True)
class AnchorSettings:
    """SSD's default boxes: one scale per feature map from ``min_ratio`` to ``max_ratio`` of the image."""

    num_feature_maps: int = 6  # SSD300's 6 (at least 3), each with its own anchors and predictions
    min_ratio: float = 0.2
    max_ratio: float = 0.9
    # Explicit scales (one per map plus one more, as DefaultBoxGenerator takes them) replace min/max_ratio;
    # SSD300's are (0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05).
    scales: Optional[Tuple[float, ...]] = None

    def __post_init__(self):
        if self.num_feature_maps < 3:
            raise ValueError(f"the detectors need at least 3 feature maps; got {self.num_feature_maps}")
        if not 0.0 < self.min_ratio < self.max_ratio <= 1.0:
            raise ValueError(f"need 0 < min_ratio < max_ratio <= 1; got {self.min_ratio}, {self.max_ratio}")
        for name in ("min_ratio", "max_ratio"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if self.scales is not None:
            object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
            if len(self.scales) != self.num_feature_maps + 1:
                raise ValueError(
                    f"scales needs num_feature_maps + 1 = {self.num_feature_maps + 1} values; got {len(self.scales)}"
                )

    def aspect_ratios(self) -> List[List[int]]:
        """SSD300's pattern: ratios {2} on the first and the last two maps, {2, 3} in between."""
        n = self.num_feature_maps
        return [[2]] + [[2, 3]] * (n - 3) + [[2], [2]]

    def generator(self) -> DefaultBoxGenerator:
        scales = list(self.scales) if self.scales is not None else None
        return DefaultBoxGenerator(self.aspect_ratios(), min_ratio=self.min_ratio, max_ratio=self.max_ratio, scales=scales)


def _scaled(channels: int, width: float, minimum: int = 8) -> int:
    return max(minimum, int(round(channels * width)))


def _conv_bn_relu(c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1):
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class VGG16Backbone(nn.Module):
    """VGG16 as SSD cuts it: conv4_3 (stride 8); pool5 at stride 1 and fc6/fc7 as (dilated) convolutions
    (stride 16); then SSD's extra layers (1x1 reduction, 3x3 stride-2 convolution).

    Batch norm follows every convolution (torchvision's ``vgg16_bn`` layers): the network is trained
    from scratch, without the ImageNet weights SSD normally starts from, and SSD's L2-normalisation of
    conv4_3 (a fix for an unnormalised pretrained layer) is then not needed.
    """

    EXTRAS = ((256, 512), (128, 256), (128, 256), (128, 256))  # (reduction, output) channels, SSD300's

    def __init__(self, width: float = 1.0, num_feature_maps: int = 6):
        super().__init__()
        cfg = [c if c == "M" else _scaled(c, width) for c in tv_vgg.cfgs["D"]]
        layers = list(tv_vgg.make_layers(cfg, batch_norm=True))
        # ceil_mode: every pooling maps n cells to ceil(n / 2), like the student's stride-2 convolutions.
        layers = [nn.MaxPool2d(2, 2, ceil_mode=True) if isinstance(m, nn.MaxPool2d) else m for m in layers]
        pools = [i for i, m in enumerate(layers) if isinstance(m, nn.MaxPool2d)]
        conv5, fc = cfg[-2], _scaled(1024, width)
        self.stage8 = nn.Sequential(*layers[: pools[3]])
        self.stage16 = nn.Sequential(
            *layers[pools[3] : pools[4]],  # pool4 and conv5_1..conv5_3
            nn.MaxPool2d(3, stride=1, padding=1),  # pool5, keeping stride 16
            _conv_bn_relu(conv5, fc, 3, padding=6, dilation=6),  # fc6
            _conv_bn_relu(fc, fc, 1),  # fc7
        )
        self.extras = nn.ModuleList()
        conv4 = cfg[[i for i, c in enumerate(cfg) if c == "M"][3] - 1]
        channels = [conv4, fc]
        for k in range(num_feature_maps - 2):
            mid, out = (_scaled(c, width) for c in self.EXTRAS[min(k, len(self.EXTRAS) - 1)])
            self.extras.append(nn.Sequential(_conv_bn_relu(channels[-1], mid, 1), _conv_bn_relu(mid, out, 3, 2, 1)))
            channels.append(out)
        self.out_channels = channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        features = [self.stage8(x)]
        features.append(self.stage16(features[-1]))
        for extra in self.extras:
            features.append(extra(features[-1]))
        return features


def _depthwise_separable_extra(c_in: int, c_out: int, norm_layer: Callable[..., nn.Module]) -> nn.Sequential:
    """SSDLite's extra layer: 1x1 reduction to c_out / 2, 3x3 depthwise stride 2, 1x1 expansion."""
    from torchvision.ops.misc import Conv2dNormActivation

    mid = max(c_out // 2, 8)
    return nn.Sequential(
        Conv2dNormActivation(c_in, mid, kernel_size=1, norm_layer=norm_layer, activation_layer=nn.ReLU6),
        Conv2dNormActivation(mid, mid, kernel_size=3, stride=2, groups=mid, norm_layer=norm_layer, activation_layer=nn.ReLU6),
        Conv2dNormActivation(mid, c_out, kernel_size=1, norm_layer=norm_layer, activation_layer=nn.ReLU6),
    )


class MobileNetV2Backbone(nn.Module):
    """torchvision's MobileNetV2 feature layers, tapped at stride 8, 16 and 32, then SSDLite's
    depthwise-separable extra layers (stride 2 each)."""

    EXTRAS = (512, 256, 256, 128)  # SSDLite's extra-layer outputs

    def __init__(self, width: float = 1.0, num_feature_maps: int = 6, norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d):
        super().__init__()
        features = torchvision.models.mobilenet_v2(weights=None, width_mult=width).features
        # Blocks 0-6 end at stride 8, 7-13 at stride 16, 14-18 (with the 1280-channel 1x1) at stride 32.
        self.stages = nn.ModuleList([features[:7], features[7:14], features[14:]])
        channels = [features[6].out_channels, features[13].out_channels, features[18].out_channels]
        self.extras = nn.ModuleList()
        for k in range(num_feature_maps - 3):
            out = _scaled(self.EXTRAS[min(k, len(self.EXTRAS) - 1)], width, minimum=16)
            self.extras.append(_depthwise_separable_extra(channels[-1], out, norm_layer))
            channels.append(out)
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        for extra in self.extras:
            x = extra(x)
            features.append(x)
        return features


class SSDDetector(nn.Module):
    """A backbone, an SSD(Lite) head and SSD's default boxes; ``forward`` gives every anchor's outputs."""

    def __init__(self, backbone: nn.Module, head: nn.Module, anchors: AnchorSettings, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.anchor_settings = anchors
        self.anchor_generator = anchors.generator()
        self.box_coder = det_utils.BoxCoder(weights=BOX_CODER_WEIGHTS)
        self.num_classes = num_classes  # object classes; the head has one more (background = 0)
        self._anchor_cache: Dict[Tuple[int, str], torch.Tensor] = {}

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``{"cls_logits": (N, A, C + 1), "bbox_regression": (N, A, 4)}`` for standardised images."""
        return self.head(self.backbone(images))

    # -- anchors ---------------------------------------------------------------------------
    @torch.no_grad()
    def feature_map_sizes(self, image_size: int) -> List[Tuple[int, int]]:
        """The (H, W) of every feature map for a square input, from a real pass in eval mode."""
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()  # a train-mode pass would move the batch-norm statistics
        try:
            features = self.backbone(torch.zeros(1, 3, image_size, image_size, device=device))
        finally:
            self.train(was_training)
        return [tuple(f.shape[-2:]) for f in features]

    def anchors(self, image_size: int, device=None) -> torch.Tensor:
        """The default boxes (A, 4) as xyxy pixels of a square ``image_size`` image, in the head's order."""
        device = torch.device(device) if device is not None else next(self.parameters()).device
        key = (int(image_size), str(device))
        if key not in self._anchor_cache:
            sizes = self.feature_map_sizes(image_size)
            dummy_maps = [torch.empty(1, 1, h, w) for h, w in sizes]
            images = ImageList(torch.empty(1, 3, image_size, image_size), [(image_size, image_size)])
            self._anchor_cache[key] = self.anchor_generator(images, dummy_maps)[0].to(device)
        return self._anchor_cache[key]

    # -- inference -------------------------------------------------------------------------
    @torch.no_grad()
    def detect(
        self,
        images: torch.Tensor,
        score_threshold: float = 0.01,  # lower class scores never reach NMS
        nms_threshold: float = 0.45,  # IoU above which NMS drops the lower-scored box of a class
        max_detections: int = 200,  # per image, the best-scored after NMS
        candidates_per_class: int = 400,  # the best-scored anchors of each class that NMS considers
        outputs: Dict[str, torch.Tensor] | None = None,
    ) -> List[Dict[str, torch.Tensor]]:
        """Boxes (xyxy pixels), scores and labels (1..C) per image after per-class NMS (SSD's defaults)."""
        if outputs is None:
            outputs = self(images)
        size = images.shape[-1]
        anchors = self.anchors(size, images.device)
        scores_all = F.softmax(outputs["cls_logits"].float(), dim=-1)[..., 1:]
        results = []
        for scores, regression in zip(scores_all, outputs["bbox_regression"].float()):
            boxes = clip_boxes_to_image(self.box_coder.decode_single(regression, anchors), (size, size))
            k = min(candidates_per_class, scores.shape[0])
            top_scores, top_anchors = scores.topk(k, dim=0)  # (k, C): the best anchors of each class
            labels = torch.arange(1, scores.shape[1] + 1, device=scores.device).expand(k, -1)
            keep = top_scores > score_threshold
            cand_scores, cand_anchors, cand_labels = top_scores[keep], top_anchors[keep], labels[keep]
            cand_boxes = boxes[cand_anchors]
            kept = batched_nms(cand_boxes, cand_scores, cand_labels, nms_threshold)[:max_detections]
            results.append({"boxes": cand_boxes[kept], "scores": cand_scores[kept], "labels": cand_labels[kept]})
        return results


def create_detector(name: str, num_classes: int, width: float = 1.0, anchors: AnchorSettings = AnchorSettings()) -> SSDDetector:
    """``vgg16_ssd`` (teacher) or ``mobilenetv2_ssdlite`` (student) for ``num_classes`` object classes."""
    generator = anchors.generator()
    per_location = generator.num_anchors_per_location()
    if name == TEACHER:
        backbone = VGG16Backbone(width, anchors.num_feature_maps)
        head = SSDHead(backbone.out_channels, per_location, num_classes + 1)
    elif name == STUDENT:
        # torchvision's SSDLite eps; PyTorch's default momentum (SSDLite's 0.03 suits 600-epoch schedules:
        # in short runs the running statistics lag the weights and the evaluated mAP drops by a third).
        norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.1)
        backbone = MobileNetV2Backbone(width, anchors.num_feature_maps, norm_layer=norm_layer)
        head = SSDLiteHead(backbone.out_channels, per_location, num_classes + 1, norm_layer)
    else:
        raise ValueError(f"unknown detector {name!r}; valid: {', '.join(DETECTORS)}")
    return SSDDetector(backbone, head, anchors, num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
