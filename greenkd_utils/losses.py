"""Knowledge-distillation losses on logits, one function per loss.

Every loss has the signature ``fn(student_logits, teacher_logits, tau, kl_reduction)``
and returns the *distillation term only*, before the ``alpha`` weighting;
:func:`kd_loss` adds the cross-entropy term and the weighting.

``tau`` may be a float, a 0-d tensor, or a tensor of shape (N,) holding one
temperature per sample. Adding a loss is one decorated function::

    @register_loss("my_loss")
    def my_loss(student_logits, teacher_logits, tau, kl_reduction):
        ...
"""

from __future__ import annotations

from typing import Callable, Dict

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, str], torch.Tensor]

KD_LOSSES: Dict[str, LossFn] = {}
KL_REDUCTIONS = ("batchmean", "mean")


def register_loss(name: str) -> Callable[[LossFn], LossFn]:
    """Decorator adding a distillation term to :data:`KD_LOSSES` under ``name``."""

    def decorator(fn: LossFn) -> LossFn:
        if name in KD_LOSSES:
            raise ValueError(f"KD loss {name!r} is already registered")
        KD_LOSSES[name] = fn
        return fn

    return decorator


def _as_column(tau, logits: torch.Tensor) -> torch.Tensor:
    """Return tau as a tensor broadcastable against (N, C) logits: (1, 1) or (N, 1)."""
    tau = torch.as_tensor(tau, dtype=logits.dtype, device=logits.device)
    if tau.dim() == 0:
        return tau.reshape(1, 1)
    if tau.dim() == 1 and tau.shape[0] == logits.shape[0]:
        return tau.reshape(-1, 1)
    raise ValueError(
        f"tau must be a scalar or have shape (N,) = ({logits.shape[0]},); got shape {tuple(tau.shape)}"
    )


def _reduce(per_element: torch.Tensor, kl_reduction: str) -> torch.Tensor:
    """Reduce an (N, C) tensor: 'batchmean' sums classes and averages samples;
    'mean' averages every element (PyTorch's default, which also divides by C)."""
    if kl_reduction == "batchmean":
        return per_element.sum() / per_element.shape[0]
    if kl_reduction == "mean":
        return per_element.mean()
    raise ValueError(f"unknown kl_reduction {kl_reduction!r}; valid: {', '.join(KL_REDUCTIONS)}")


def _kl_teacher_student(student_logits, teacher_logits, tau) -> torch.Tensor:
    """Element-wise KL(softmax(t/tau) || softmax(s/tau)), shape (N, C), every term >= 0 summed."""
    log_p_student = F.log_softmax(student_logits / tau, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits / tau, dim=1)
    return torch.exp(log_p_teacher) * (log_p_teacher - log_p_student)


@register_loss("hkd")
def hinton_kd(student_logits, teacher_logits, tau, kl_reduction="batchmean"):
    """Hinton et al. 2015: tau^2 * KL of temperature-softened distributions.

    The tau^2 factor keeps the gradient scale independent of tau; with a
    per-sample tau each sample is scaled by its own tau^2.
    """
    tau = _as_column(tau, student_logits)
    return _reduce(_kl_teacher_student(student_logits, teacher_logits, tau) * tau**2, kl_reduction)


@register_loss("cmc")
def caruana_logit_l2(student_logits, teacher_logits, tau, kl_reduction="batchmean"):
    """Caruana's logit matching with the paper's temperature: mean over classes of (s/tau - t/tau)^2,
    averaged over the batch. kl_reduction does not apply (it is not a KL)."""
    tau = _as_column(tau, student_logits)
    return ((student_logits / tau - teacher_logits / tau) ** 2).mean(dim=1).mean()


@register_loss("dml")
def mutual_learning_kl(student_logits, teacher_logits, tau, kl_reduction="batchmean"):
    """Deep Mutual Learning's KL term with the paper's temperature and without tau^2."""
    tau = _as_column(tau, student_logits)
    return _reduce(_kl_teacher_student(student_logits, teacher_logits, tau), kl_reduction)


def kd_loss(
    name: str,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    tau,
    alpha: float = 0.95,
    kl_reduction: str = "batchmean",
) -> torch.Tensor:
    """alpha * distillation_term(name) + (1 - alpha) * CE(student_logits, targets).

    >>> s, t, y = torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 1])
    >>> round(float(kd_loss("hkd", s, t, y, tau=4.0)), 4)  # only CE is left: 0.05 * ln 3
    0.0549
    """
    try:
        distill = KD_LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown KD loss {name!r}; valid: {', '.join(sorted(KD_LOSSES))}") from None
    if kl_reduction not in KL_REDUCTIONS:
        raise ValueError(f"unknown kl_reduction {kl_reduction!r}; valid: {', '.join(KL_REDUCTIONS)}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1]; got {alpha}")
    # Teacher logits never carry gradient: the teacher is frozen.
    teacher_logits = teacher_logits.detach().to(student_logits.dtype)
    ce = F.cross_entropy(student_logits, targets)
    return alpha * distill(student_logits, teacher_logits, tau, kl_reduction) + (1.0 - alpha) * ce
