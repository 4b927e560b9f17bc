"""The terms a synthesizer minimises, and CMI's memory bank and projection head.

- :class:`BatchNormStatistics` hooks every batch-norm layer of the teacher: the
  statistics term pulls the batch mean and variance of each layer's input
  towards the running statistics the teacher stored while training on real
  data (DeepInversion's feature prior, also used by CMI); the same hooks give
  CMI its per-instance features (each layer's input averaged over space).
- :func:`total_variation` and :func:`image_l2`: DeepInversion's image priors.
- :func:`adversarial_loss`: the competition with the student, which favours
  images on which student and teacher still disagree.
- :func:`contrastive_loss`, :class:`ProjectionHead`, :class:`MemoryBank`: CMI's
  instance discrimination between the images of a round and those of earlier rounds.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from greenkd_utils.core.dfkd.config import ADVERSARIAL_KINDS


class BatchNormStatistics:
    """Forward hooks on every ``BatchNorm2d`` of a model; use as a context manager.

    After a forward pass, :meth:`loss` is the sum over layers of
    ||mean_batch - running_mean||_2 + ||var_batch - running_var||_2, with the
    batch statistics of the layer's *input* over (N, H, W) and the biased
    variance (what batch norm itself uses); :meth:`features` concatenates each
    layer's per-instance channel means, shape (N, sum of channels).
    """

    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        if not self.layers:
            raise ValueError("the teacher has no BatchNorm2d layer: there are no statistics to match")
        self._handles: List = []
        self._terms: Dict[int, torch.Tensor] = {}
        self._features: Dict[int, torch.Tensor] = {}

    def __enter__(self) -> "BatchNormStatistics":
        self._handles = [layer.register_forward_hook(self._hook(i)) for i, layer in enumerate(self.layers)]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _hook(self, index: int):
        def hook(module: nn.BatchNorm2d, inputs, output) -> None:
            x = inputs[0].float()
            per_instance = x.mean(dim=(2, 3))  # (N, C)
            mean = per_instance.mean(dim=0)
            var = x.transpose(0, 1).flatten(1).var(dim=1, unbiased=False)
            self._terms[index] = torch.linalg.vector_norm(mean - module.running_mean) + torch.linalg.vector_norm(
                var - module.running_var
            )
            self._features[index] = per_instance

        return hook

    def loss(self) -> torch.Tensor:
        """The statistics term of the last forward pass (summed over layers)."""
        if not self._terms:
            raise RuntimeError("no forward pass has run inside the BatchNormStatistics context")
        return torch.stack([self._terms[i] for i in sorted(self._terms)]).sum()

    def features(self) -> torch.Tensor:
        """Per-instance features of the last forward pass, (N, D)."""
        if not self._features:
            raise RuntimeError("no forward pass has run inside the BatchNormStatistics context")
        return torch.cat([self._features[i] for i in sorted(self._features)], dim=1)

    @property
    def feature_dim(self) -> int:
        return sum(layer.num_features for layer in self.layers)


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Total variation of a batch (N, C, H, W): the sum, over the horizontal, vertical and both
    diagonal neighbour directions, of the L2 norm of the pixel differences. 0 for a constant image."""
    differences = (
        images[:, :, :, 1:] - images[:, :, :, :-1],
        images[:, :, 1:, :] - images[:, :, :-1, :],
        images[:, :, 1:, 1:] - images[:, :, :-1, :-1],
        images[:, :, 1:, :-1] - images[:, :, :-1, 1:],
    )
    return sum(torch.linalg.vector_norm(d) for d in differences)


def image_l2(images: torch.Tensor) -> torch.Tensor:
    """L2 norm of the batch (in the teacher's standardised input space)."""
    return torch.linalg.vector_norm(images)


def adversarial_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str = "masked_kl", temperature: float = 1.0
) -> torch.Tensor:
    """The synthesizer's competition with the student; lower when the two disagree.

    - ``masked_kl``: minus the mean KL(teacher || student) over the samples on which both predict the
      same class (the form used by the benchmark implementation of CMI and DeepInversion); samples the
      student already gets wrong are left alone, so the images do not drift off the teacher's class.
    - ``js``: 1 - the Jensen-Shannon divergence (in nats) of the two distributions, DeepInversion's own
      "adaptive" competition.
    """
    if kind not in ADVERSARIAL_KINDS:
        raise ValueError(f"unknown adversarial term {kind!r}; valid: {', '.join(ADVERSARIAL_KINDS)}")
    log_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    if kind == "masked_kl":
        agree = (student_logits.argmax(1) == teacher_logits.argmax(1)).float()
        kl = (log_t.exp() * (log_t - log_s)).sum(1)
        return -(kl * agree).mean()
    log_m = torch.logsumexp(torch.stack([log_s, log_t]), dim=0) - math.log(2.0)
    js = 0.5 * (log_s.exp() * (log_s - log_m)).sum(1) + 0.5 * (log_t.exp() * (log_t - log_m)).sum(1)
    return 1.0 - js.mean()


class ProjectionHead(nn.Module):
    """CMI's projection of teacher features to the space where instances are told apart (unit norm)."""

    def __init__(self, in_dim: int, head_dim: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, head_dim), nn.ReLU(inplace=True), nn.Linear(head_dim, head_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(features), dim=1)


def contrastive_loss(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    negatives: Optional[torch.Tensor] = None,
    temperature: float = 0.2,
) -> torch.Tensor:
    """InfoNCE: each anchor must pick its own positive among every positive of the batch and the
    ``negatives`` (e.g. drawn from the memory bank). All inputs are unit vectors (N, d) / (M, d)."""
    if anchors.shape != positives.shape:
        raise ValueError(f"anchors and positives must have the same shape; got {tuple(anchors.shape)}, {tuple(positives.shape)}")
    keys = positives if negatives is None or negatives.numel() == 0 else torch.cat([positives, negatives])
    logits = anchors @ keys.t() / temperature
    targets = torch.arange(anchors.shape[0], device=anchors.device)
    return F.cross_entropy(logits, targets)


class MemoryBank:
    """A first-in first-out store of feature vectors (CMI's negatives from earlier rounds)."""

    def __init__(self, dim: int, capacity: int, device: torch.device | str = "cpu"):
        if capacity < 1 or dim < 1:
            raise ValueError(f"a memory bank needs dim >= 1 and capacity >= 1; got {dim}, {capacity}")
        self.dim, self.capacity = int(dim), int(capacity)
        self._data = torch.zeros(self.capacity, self.dim, device=device)
        self._next = 0  # where the next vector goes
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, features: torch.Tensor) -> None:
        """Append ``features`` (N, dim); once full, the oldest vectors are overwritten first."""
        features = features.detach().reshape(-1, self.dim).to(self._data)
        if features.shape[0] > self.capacity:
            features = features[-self.capacity :]  # only the newest can survive anyway
        n = features.shape[0]
        slots = (self._next + torch.arange(n, device=self._data.device)) % self.capacity
        self._data[slots] = features
        self._next = (self._next + n) % self.capacity
        self._size = min(self._size + n, self.capacity)

    def contents(self) -> torch.Tensor:
        """Every stored vector, oldest first."""
        if self._size < self.capacity:
            return self._data[: self._size].clone()
        return torch.cat([self._data[self._next :], self._data[: self._next]])

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Up to ``n`` stored vectors drawn without replacement (all of them when fewer are stored)."""
        if self._size == 0 or n <= 0:
            return self._data[:0]
        if n >= self._size:
            return self._data[: self._size]
        idx = torch.randperm(self._size, device=self._data.device, generator=generator)[:n]
        return self._data[idx]

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {"features": self.contents().cpu()}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        self._data.zero_()
        self._next = self._size = 0
        self.add(state["features"])
