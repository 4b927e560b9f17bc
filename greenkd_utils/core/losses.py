"""Knowledge-distillation losses on logits, one function per loss.

Every loss has the signature ``fn(student_logits, teacher_logits, tau, kl_reduction)``
and returns the *distillation term only*, before the ``alpha`` weighting;
:func:`kd_loss` adds the cross-entropy term and the weighting.

``tau`` may be a float, a 0-d tensor, or a tensor of shape (N,) holding one
temperature per sample. Adding a loss is one decorated function::

    @register_loss("my_loss")
    def my_loss(student_logits, teacher_logits, tau, kl_reduction):
        ...

A loss that compares temperature-softened softmax distributions may declare
``register_loss(name, logit_standardization=True)``: ``kd_loss(..., logit_standardization=True)``
then z-scores both logits per sample before calling it (Sun et al., CVPR 2024).
"""

from __future__ import annotations

from typing import Callable, Dict, Set

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, str], torch.Tensor]

KD_LOSSES: Dict[str, LossFn] = {}
KL_REDUCTIONS = ("batchmean", "mean")
# Losses whose distillation term is defined on standardized logits (a softmax of z-scores).
LOGIT_STANDARDIZATION_LOSSES: Set[str] = set()
# Added to each sample's standard deviation, as in the logit standardization authors' code.
STANDARDIZATION_EPS = 1e-7


def register_loss(name: str, logit_standardization: bool = False) -> Callable[[LossFn], LossFn]:
    """Decorator adding a distillation term to :data:`KD_LOSSES` under ``name``.

    ``logit_standardization=True`` declares that the term compares softmax distributions, so that
    z-scored logits are a meaningful input (:func:`kd_loss`'s ``logit_standardization``).
    """

    def decorator(fn: LossFn) -> LossFn:
        if name in KD_LOSSES:
            raise ValueError(f"KD loss {name!r} is already registered")
        KD_LOSSES[name] = fn
        if logit_standardization:
            LOGIT_STANDARDIZATION_LOSSES.add(name)
        return fn

    return decorator


def standardize_logits(logits: torch.Tensor, eps: float = STANDARDIZATION_EPS) -> torch.Tensor:
    """Z-score each sample's logits over the classes: (x - mean) / (std + eps), with the sample standard
    deviation (Bessel's correction), as in Sun et al.'s code.

    The result does not change when a constant is added to a sample's logits or when they are multiplied
    by a positive number, so a student need not match its teacher's logit range, only its logit relations.
    """
    mean = logits.mean(dim=1, keepdim=True)
    std = logits.std(dim=1, keepdim=True)
    return (logits - mean) / (std + eps)


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


@register_loss("hkd", logit_standardization=True)
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


# Two other readings of the paper's CMC, for the sensitivity table (docs/protocol.md, "Conventions and their
# alternatives"): the paper names its h the softmax output, and its 1/N does not say over what.
@register_loss("cmc_softmax")
def caruana_softmax_l2(student_logits, teacher_logits, tau, kl_reduction="batchmean"):
    """CMC on probabilities: mean over classes of (softmax(s/tau) - softmax(t/tau))^2, averaged over the batch."""
    tau = _as_column(tau, student_logits)
    return ((F.softmax(student_logits / tau, dim=1) - F.softmax(teacher_logits / tau, dim=1)) ** 2).mean(dim=1).mean()


@register_loss("cmc_sum")
def caruana_logit_l2_summed(student_logits, teacher_logits, tau, kl_reduction="batchmean"):
    """CMC summed over classes: sum_c (s/tau - t/tau)^2, averaged over the batch (C times the ``cmc`` term)."""
    tau = _as_column(tau, student_logits)
    return ((student_logits / tau - teacher_logits / tau) ** 2).sum(dim=1).mean()


@register_loss("dml", logit_standardization=True)
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
    logit_standardization: bool = False,
) -> torch.Tensor:
    """alpha * distillation_term(name) + (1 - alpha) * CE(student_logits, targets).

    With ``logit_standardization`` the distillation term sees :func:`standardize_logits` of both the
    student's and the teacher's logits, and ``tau`` acts as the base temperature on those z-scores; the
    cross-entropy term keeps the raw student logits. Only losses registered with
    ``logit_standardization=True`` accept it (HKD, DML): CMC regresses raw logits onto the teacher's, and
    z-scoring them would turn it into another method that the logit standardization paper does not define.

    >>> s, t, y = torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 1])
    >>> round(float(kd_loss("hkd", s, t, y, tau=4.0)), 4)  # only CE is left: 0.05 * ln 3
    0.0549
    """
    distill = distillation_term(name, kl_reduction)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1]; got {alpha}")
    check_logit_standardization(name, logit_standardization)
    # Teacher logits never carry gradient: the teacher is frozen.
    teacher_logits = teacher_logits.detach().to(student_logits.dtype)
    ce = F.cross_entropy(student_logits, targets)
    if logit_standardization:
        student_in, teacher_in = standardize_logits(student_logits), standardize_logits(teacher_logits)
    else:
        student_in, teacher_in = student_logits, teacher_logits
    return alpha * distill(student_in, teacher_in, tau, kl_reduction) + (1.0 - alpha) * ce


def distillation_term(name: str, kl_reduction: str) -> LossFn:
    """The registered distillation term ``name``, after checking it and the KL reduction by name."""
    try:
        distill = KD_LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown KD loss {name!r}; valid: {', '.join(sorted(KD_LOSSES))}") from None
    if kl_reduction not in KL_REDUCTIONS:
        raise ValueError(f"unknown kl_reduction {kl_reduction!r}; valid: {', '.join(KL_REDUCTIONS)}")
    return distill


def check_logit_standardization(name: str, logit_standardization: bool) -> None:
    """A clear error when logit standardization is asked of a loss that does not define it."""
    if logit_standardization and name not in LOGIT_STANDARDIZATION_LOSSES:
        raise ValueError(
            f"logit standardization does not apply to the KD loss {name!r}; valid: "
            f"{', '.join(sorted(LOGIT_STANDARDIZATION_LOSSES))} (losses that compare softmax distributions)"
        )
