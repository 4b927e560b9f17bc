"""Grad-CAM heat maps of trained models (Figure 4b), with the ``grad-cam`` package.

The target layer comes from :func:`greenkd_utils.core.models.gradcam_target_layers`
for the real input size, i.e. the deepest block whose feature map is still
larger than 1x1: on a 1x1 map Grad-CAM is one number per image and the heat
map is constant. On 8x8 digits that map is 2x2 (wrn16_1) and the package
resizes it to the input's 8x8; for display, image and heat map are upsampled
further (nearest for the image, so its pixels stay visible; bilinear for the
heat map).

The class whose evidence is shown is the true label by default (``target="label"``);
``target="predicted"`` shows the model's own top class instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from greenkd_utils.analysis import plotting
from greenkd_utils.analysis.predictions import load_models, test_split
from greenkd_utils.core.augment import standardize
from greenkd_utils.core.models import gradcam_target_layers
from greenkd_utils.runs.record import RunResult

log = logging.getLogger(__name__)

TARGETS = ("label", "predicted")


@dataclass
class GradCamResult:
    """Heat maps in [0, 1] at the input's resolution, one per image, and where they came from."""

    heatmaps: np.ndarray  # (N, H, W) float32
    target_classes: List[int]
    predicted: List[int]
    layer: str
    feature_map: tuple  # (h, w) of the target layer's activations

    def summary(
        self, method: str, indices: Sequence[int], labels: Sequence[int], class_names: Sequence[str]
    ) -> pd.DataFrame:
        """One row per image: classes, and the heat map's range and spread (std 0 = constant map)."""
        rows = []
        for i, index in enumerate(indices):
            heat = self.heatmaps[i]
            rows.append(
                {
                    "method": method,
                    "image_index": int(index),
                    "true_class": class_names[int(labels[i])],
                    "predicted_class": class_names[self.predicted[i]],
                    "target_class": class_names[self.target_classes[i]],
                    "layer": self.layer,
                    "feature_map": "x".join(str(s) for s in self.feature_map),
                    "heatmap_min": float(heat.min()),
                    "heatmap_max": float(heat.max()),
                    "heatmap_std": float(heat.std()),
                }
            )
        return pd.DataFrame(rows)


def _module_name(model: torch.nn.Module, layer: torch.nn.Module) -> str:
    for name, module in model.named_modules():
        if module is layer:
            return name or type(layer).__name__
    return type(layer).__name__


def gradcam_heatmaps(
    model: torch.nn.Module,
    model_name: str,
    images: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    labels: Optional[Sequence[int]] = None,
    target: str = "label",
) -> GradCamResult:
    """Grad-CAM of ``model`` (built as ``model_name``) for uint8 ``images`` (N, C, H, W).

    ``target="label"`` explains the true class (``labels`` required); ``"predicted"``
    the model's top class.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}; got {target!r}")
    if target == "label" and labels is None:
        raise ValueError("target='label' needs the images' labels")
    if images.dim() != 4 or images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 (N, C, H, W); got {images.dtype} {tuple(images.shape)}")
    model = model.eval()
    x = standardize(images.float() / 255.0, mean, std)
    layers = gradcam_target_layers(model_name, model, input_size=int(images.shape[-1]))
    with torch.no_grad():
        predicted = model(x).argmax(1).tolist()
    classes = [int(c) for c in labels] if target == "label" else predicted
    # Grad-CAM needs gradients even where the caller runs under no_grad.
    with torch.enable_grad(), GradCAM(model=model, target_layers=layers) as cam:
        heatmaps = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes])
        activations = cam.activations_and_grads.activations
        feature_map = tuple(activations[0].shape[-2:]) if activations else ()
    return GradCamResult(
        heatmaps=np.asarray(heatmaps, dtype=np.float32),
        target_classes=classes,
        predicted=[int(p) for p in predicted],
        layer=_module_name(model, layers[0]),
        feature_map=feature_map,
    )


def spread_class_examples(labels: Sequence[int], n: int) -> List[int]:
    """Indices of the first test image of ``n`` classes spread evenly over the label range."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if n < 1:
        raise ValueError(f"n must be at least 1; got {n}")
    picked = classes[np.unique(np.linspace(0, len(classes) - 1, min(n, len(classes))).round().astype(int))]
    return [int(np.flatnonzero(labels == c)[0]) for c in picked]


def upsample_for_display(images: torch.Tensor, heatmaps: np.ndarray, size: int):
    """(images as float H'xW'xC in [0, 1], heat maps H'xW') at ``size`` pixels a side.

    Nearest for the image, so a digit's 8x8 pixels stay crisp blocks; bilinear for the heat map.
    """
    img = F.interpolate(images.float().cpu() / 255.0, size=(size, size), mode="nearest")
    if img.shape[1] == 1:
        img = img.repeat(1, 3, 1, 1)
    heat = F.interpolate(torch.from_numpy(heatmaps)[:, None], size=(size, size), mode="bilinear", align_corners=False)
    return img.permute(0, 2, 3, 1).numpy(), heat[:, 0].clamp(0, 1).numpy()


def plot_gradcam_grid(
    images: torch.Tensor,
    results: Dict[str, GradCamResult],
    labels: Sequence[int],
    class_names: Sequence[str],
    display_size: int = 64,
    title: str = "Grad-CAM of the students",
):
    """First row: the test images; one further row per model: its Grad-CAM over the image (Figure 4b)."""
    import matplotlib.pyplot as plt
    from pytorch_grad_cam.utils.image import show_cam_on_image

    plotting.use_style()
    n = images.shape[0]
    fig, axes = plt.subplots(1 + len(results), n, figsize=(2.0 * n, 2.1 * (1 + len(results))), squeeze=False)
    shown, _ = upsample_for_display(images, np.zeros((n,) + tuple(images.shape[-2:]), np.float32), display_size)
    for j in range(n):
        axes[0, j].imshow(shown[j])
        axes[0, j].set_title(f"true: {class_names[int(labels[j])]}", fontsize=8)
    for i, (method, result) in enumerate(results.items(), start=1):
        img, heat = upsample_for_display(images, result.heatmaps, display_size)
        for j in range(n):
            axes[i, j].imshow(show_cam_on_image(img[j].astype(np.float32), heat[j], use_rgb=True, image_weight=0.5))
            axes[i, j].set_title(f"pred: {class_names[result.predicted[j]]}", fontsize=8)
        where = f"{result.layer} ({'x'.join(map(str, result.feature_map))})"
        axes[i, 0].set_ylabel(f"{plotting.method_label(method)}\n{where}", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


@dataclass
class GradCamPanel:
    """Figure 4b's content: a few test images and each model's Grad-CAM of them."""

    images: torch.Tensor  # uint8 (N, C, H, W), on the CPU
    labels: List[int]
    indices: List[int]
    class_names: List[str]
    results: Dict[str, GradCamResult]

    def summary(self) -> pd.DataFrame:
        return pd.concat(
            [r.summary(method, self.indices, self.labels, self.class_names) for method, r in self.results.items()],
            ignore_index=True,
        )

    def plot(self, display_size: int = 64, title: str = "Grad-CAM of the students"):
        return plot_gradcam_grid(self.images, self.results, self.labels, self.class_names, display_size, title)


def gradcam_panel(exp, runs: Dict[str, RunResult], n_images: int = 4, target: str = "label",
                  indices: Optional[Sequence[int]] = None) -> GradCamPanel:
    """Grad-CAM of every run's model on the same test images (by default the first image of
    ``n_images`` classes spread over the label range). Computed on the CPU: a few images need no GPU."""
    if not runs:
        raise ValueError("gradcam_panel needs at least one run")
    models = load_models(exp, runs, "cpu")
    first = next(iter(runs.values()))
    images, labels, mean, std, class_names = test_split(exp, first, "cpu")
    chosen = list(indices) if indices is not None else spread_class_examples(labels.numpy(), n_images)
    picked, picked_labels = images[chosen], labels[chosen].tolist()
    results = {
        method: gradcam_heatmaps(models[method], run.config.model, picked, mean, std, picked_labels, target)
        for method, run in runs.items()
    }
    return GradCamPanel(picked, picked_labels, chosen, list(class_names), results)
