"""The two synthesizers of the paper's Table 6: DeepInversion and Contrastive Model Inversion (CMI).

Both invert the trained teacher: they look for images on which the teacher's
batch-norm layers see the statistics they saw on real data (``bn``) and which
the teacher classifies as a chosen class (``oh``), while the student, through
the adversarial term (``adv``), steers them towards what it has not learned yet.

- **DeepInversion** optimises the pixels of a batch directly, from noise, with
  image priors (total variation ``tv``, ``l2``) and a random jitter and flip of
  the teacher's input at each step.
- **CMI** optimises a generator and its latent codes instead (the generator is
  re-initialised every round) and adds a contrastive term (``cr``): each image's
  teacher features, through a projection head, must be closer to those of an
  augmented view of itself than to the other images of the batch and to the
  images of earlier rounds, drawn from a memory bank. This keeps the synthetic
  set diverse.

One call of :meth:`Synthesizer.synthesize` is one round: ``iterations``
optimisation steps, then the batch enters the pool as uint8 images. Teacher and
student are frozen during a round (no weight gradients, eval mode); gradients
flow through both to the images or the generator. The round's random draws come
from a seed of their own, so a resumed run synthesizes the same images.

FLOPs are counted on the real passes: the first step of a round and the
round's closing passes run under the FLOP counter (every step has the same
shapes, so a round costs ``iterations`` x the first step plus its close).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from greenkd_utils.core.augment import BatchAugment, standardize
from greenkd_utils.core.dfkd.config import SynthesisSettings
from greenkd_utils.core.dfkd.generator import ImageGenerator
from greenkd_utils.core.dfkd.objectives import (
    BatchNormStatistics,
    MemoryBank,
    ProjectionHead,
    adversarial_loss,
    contrastive_loss,
    image_l2,
    total_variation,
)
from greenkd_utils.core.dfkd.pool import to_uint8
from greenkd_utils.energy.flops import flop_counter


@dataclass
class SynthesisRound:
    """What one round produced."""

    images: torch.Tensor  # uint8, (N, C, H, W), pixel space
    targets: torch.Tensor  # the class each image was synthesized for
    stats: Dict[str, float] = field(default_factory=dict)  # last step's loss terms, teacher agreement
    flops_per_step: Optional[int] = None  # set when the round was counted
    flops_close: Optional[int] = None


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Run the block with torch's global generators seeded, and restore them afterwards."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def frozen(*models: nn.Module) -> Iterator[None]:
    """Eval mode and no weight gradients for the block (gradients still reach the inputs)."""
    saved = [(m, [(mod, mod.training) for mod in m.modules()], [(p, p.requires_grad) for p in m.parameters()]) for m in models]
    for m in models:
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)
    try:
        yield
    finally:
        for _, modes, grads in saved:
            for mod, training in modes:
                mod.training = training
            for p, requires_grad in grads:
                p.requires_grad_(requires_grad)


def balanced_targets(n: int, num_classes: int, device: torch.device) -> torch.Tensor:
    """``n`` class labels as evenly spread over the classes as ``n`` allows, in random order."""
    labels = torch.arange(n, device=device) % num_classes
    return labels[torch.randperm(n, device=device)]


class Synthesizer:
    """Shared machinery: the teacher's statistics hooks, the objective's common terms, the jitter."""

    def __init__(
        self,
        settings: SynthesisSettings,
        teacher: nn.Module,
        student: nn.Module,
        num_classes: int,
        input_shape: Sequence[int],
        mean: torch.Tensor,
        std: torch.Tensor,
        device: torch.device | str = "cpu",
    ):
        self.settings = settings
        self.teacher, self.student = teacher, student
        self.num_classes = int(num_classes)
        self.input_shape: Tuple[int, int, int] = tuple(int(s) for s in input_shape)
        self.device = torch.device(device)
        self.mean, self.std = mean.to(self.device), std.to(self.device)
        self.statistics = BatchNormStatistics(teacher)

    #: The parts whose state a checkpoint keeps (each with ``state_dict``), so a resumed run goes on as it was.
    checkpointed: Tuple[str, ...] = ()

    def synthesize(self, seed: int, count_flops: bool = False) -> SynthesisRound:
        """One round under ``seed``'s random draws: ``iterations`` optimiser steps on :meth:`step_loss`, then
        :meth:`close_round`'s passes without gradients. With ``count_flops`` the first step and the close run
        under the FLOP counter."""
        flops_per_step = flops_close = None
        with seeded(seed, self.device), frozen(self.teacher, self.student):
            targets, optimised, optimizer = self.start_round()
            terms: Dict[str, torch.Tensor] = {}
            for it in range(self.settings.iterations):
                counter = flop_counter() if (count_flops and it == 0) else contextlib.nullcontext()
                with counter:
                    loss, terms = self.step_loss(optimised, targets)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                if count_flops and it == 0:
                    flops_per_step = counter.get_total_flops()
            counter = flop_counter() if count_flops else contextlib.nullcontext()
            with counter, torch.no_grad():
                pixels, hits = self.close_round(optimised, targets)
            if count_flops:
                flops_close = counter.get_total_flops()
        return SynthesisRound(to_uint8(pixels), targets, self._finish_stats(terms, hits), flops_per_step, flops_close)

    def state_dict(self) -> Dict[str, Any]:
        return {name: getattr(self, name).state_dict() for name in self.checkpointed}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for name in self.checkpointed:
            getattr(self, name).load_state_dict(state[name])

    # -- to implement ----------------------------------------------------------------------
    def start_round(self) -> Tuple[torch.Tensor, torch.Tensor, torch.optim.Optimizer]:
        """The round's targets, the tensor its steps optimise (images or latent codes) and their optimiser."""
        raise NotImplementedError

    def step_loss(self, optimised: torch.Tensor, targets: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """One step's loss and its terms."""
        raise NotImplementedError

    def close_round(self, optimised: torch.Tensor, targets: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The round's images (pixel space, [0, 1]) and the share the teacher assigns to their targets."""
        raise NotImplementedError

    # -- shared pieces ---------------------------------------------------------------------
    def to_pixels(self, standardised: torch.Tensor) -> torch.Tensor:
        return standardised * self.std.view(1, -1, 1, 1) + self.mean.view(1, -1, 1, 1)

    def teacher_view(self, x: torch.Tensor) -> torch.Tensor:
        """The random jitter (circular shift of the whole batch) and per-image flip of one step."""
        s = self.settings
        if s.jitter > 0:
            dx, dy = torch.randint(-s.jitter, s.jitter + 1, (2,)).tolist()
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
        if s.flip:
            flip = torch.rand(x.shape[0], device=x.device) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        return x

    def common_objective(self, view: torch.Tensor, targets: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], torch.Tensor]:
        """bn x statistics + oh x cross-entropy + adv x competition (+ image priors) on one view.

        Returns the loss, its terms (detached) and the teacher's per-instance features.
        """
        s = self.settings
        with self.statistics:
            teacher_logits = self.teacher(view)
            bn_term = self.statistics.loss()
            features = self.statistics.features()
        oh_term = F.cross_entropy(teacher_logits.float(), targets)
        loss = s.bn * bn_term + s.oh * oh_term
        terms = {"bn": bn_term, "oh": oh_term}
        if s.adv > 0:
            adv_term = adversarial_loss(self.student(view), teacher_logits, s.adversarial, s.adv_temperature)
            loss = loss + s.adv * adv_term
            terms["adv"] = adv_term
        if s.tv > 0:
            terms["tv"] = total_variation(view)
            loss = loss + s.tv * terms["tv"]
        if s.l2 > 0:
            terms["l2"] = image_l2(view)
            loss = loss + s.l2 * terms["l2"]
        terms["teacher_hits"] = (teacher_logits.argmax(1) == targets).float().mean()
        return loss, terms, features

    def _finish_stats(self, terms: Dict[str, torch.Tensor], final_hits: torch.Tensor) -> Dict[str, float]:
        # One host synchronisation per round.
        names = sorted(terms)
        values = torch.stack([terms[n].detach().float() for n in names] + [final_hits.float()]).tolist()
        stats = dict(zip(names, values[:-1]))
        stats.pop("teacher_hits", None)
        stats["teacher_agreement"] = values[-1]  # share of the round's images the teacher assigns to their class
        return stats


class DeepInversionSynthesizer(Synthesizer):
    """Optimise a batch of images (in the teacher's standardised input space) from Gaussian noise."""

    def start_round(self):
        s = self.settings
        targets = balanced_targets(s.batch_size, self.num_classes, self.device)
        x = torch.randn((s.batch_size,) + self.input_shape, device=self.device, requires_grad=True)
        return targets, x, torch.optim.Adam([x], lr=s.lr, betas=s.betas)

    def step_loss(self, x, targets):
        loss, terms, _ = self.common_objective(self.teacher_view(x), targets)
        return loss, terms

    def close_round(self, x, targets):
        pixels = self.to_pixels(x.detach())
        final = standardize(pixels.clamp(0, 1), self.mean, self.std)
        return pixels, (self.teacher(final).argmax(1) == targets).float().mean()


class CMISynthesizer(Synthesizer):
    """Optimise a freshly initialised generator and its latent codes, with CMI's contrastive term."""

    checkpointed = ("generator", "head", "bank")

    def __init__(self, settings: SynthesisSettings, teacher, student, num_classes, input_shape, mean, std, device="cpu"):
        super().__init__(settings, teacher, student, num_classes, input_shape, mean, std, device)
        channels, size, _ = self.input_shape
        self.generator = ImageGenerator(settings.nz, settings.ngf, size, channels).to(self.device)
        self.head = ProjectionHead(self.statistics.feature_dim, settings.head_dim).to(self.device)
        self.bank = MemoryBank(self.statistics.feature_dim, settings.bank_size, self.device)
        self.view_augment = BatchAugment(settings.view_augment)

    def start_round(self):
        s = self.settings
        if s.reset_generator:
            self.generator.reinitialize()
        self.generator.train()
        targets = balanced_targets(s.batch_size, self.num_classes, self.device)
        z = torch.randn(s.batch_size, s.nz, device=self.device, requires_grad=True)
        optimizer = torch.optim.Adam(
            [{"params": self.generator.parameters()}, {"params": [z]}, {"params": self.head.parameters()}],
            lr=s.lr,
            betas=s.betas,
        )
        return targets, z, optimizer

    def step_loss(self, z, targets):
        pixels = self.generator(z)
        view = self.teacher_view(standardize(pixels, self.mean, self.std))
        loss, terms, features = self.common_objective(view, targets)
        if self.settings.cr > 0:
            cr_term = self._contrastive(pixels, features)
            loss = loss + self.settings.cr * cr_term
            terms["cr"] = cr_term
        return loss, terms

    def close_round(self, z, targets):
        pixels = self.generator(z)
        with self.statistics:
            logits = self.teacher(standardize(pixels, self.mean, self.std))
            self.bank.add(self.statistics.features())
        return pixels, (logits.argmax(1) == targets).float().mean()

    def _contrastive(self, pixels: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Each image against an augmented view of itself, the batch's other views, and bank negatives."""
        s = self.settings
        augmented = standardize(self.view_augment(pixels), self.mean, self.std)
        with self.statistics:
            self.teacher(augmented)
            view_features = self.statistics.features()
        negatives = self.bank.sample(s.n_negatives)
        return contrastive_loss(
            self.head(features),
            self.head(view_features),
            self.head(negatives) if len(negatives) else None,
            s.cr_temperature,
        )



SYNTHESIZERS = {"deepinversion": DeepInversionSynthesizer, "cmi": CMISynthesizer}


def make_synthesizer(settings: SynthesisSettings, teacher, student, num_classes, input_shape, mean, std, device="cpu") -> Synthesizer:
    try:
        cls = SYNTHESIZERS[settings.method]
    except KeyError:
        raise ValueError(f"unknown data-free KD method {settings.method!r}; valid: {', '.join(SYNTHESIZERS)}") from None
    return cls(settings, teacher, student, num_classes, input_shape, mean, std, device)
