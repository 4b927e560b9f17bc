"""How big is each KD loss, and its gradient, at each tau? The evidence behind a diverging or stalled run.

The three losses scale differently with tau: HKD's tau^2 factor keeps its gradient roughly constant,
DML's KL term has no such factor (its gradient shrinks like 1/tau), and CMC's squared difference of
tau-divided logits shrinks like 1/tau^2, so a run that draws tau from U[2, 20] sees gradients that
differ by two orders of magnitude from batch to batch. How large the gradients are also depends on
the teacher's logit scale, which a long-trained, confident teacher makes large.
:func:`loss_and_gradient_by_tau` measures both on the first batches of a real run, before any step.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import pandas as pd
import torch

from greenkd_utils.analysis.plotting import use_style
from greenkd_utils.core.augment import standardize
from greenkd_utils.core.losses import kd_loss
from greenkd_utils.core.models import create_model
from greenkd_utils.runs.device_data import prepare_data
from greenkd_utils.runs.execution import resolve_device


def teacher_logit_scale(logits: torch.Tensor) -> dict:
    """The size of a teacher's logits: per-sample spread over classes and the largest magnitude."""
    return {
        "teacher_logit_std": float(logits.std(dim=1).mean()),
        "teacher_logit_max_abs": float(logits.abs().max()),
    }


def loss_and_gradient_by_tau(
    exp,
    dataset: str,
    seed: int,
    taus: Sequence[float],
    losses: Iterable[str] = ("hkd", "cmc", "dml"),
    n_batches: int = 4,
) -> pd.DataFrame:
    """Loss and student-gradient L2 norm at initialisation, per loss and tau (mean over ``n_batches``
    training batches of the profile's batch size), for the profile's teacher and student of ``seed``."""
    device = resolve_device(exp.device)
    teacher_run = exp.teacher(dataset, seed)
    teacher = teacher_run.load_model(exp.store, device)
    config = exp.profile.kd_config(dataset, seed, "hkd")
    data = prepare_data(config, device, exp.data_root)
    batch_size = config.train.batch_size
    images, labels = data.train
    batch_size = min(batch_size, labels.numel())
    n_batches = max(1, min(n_batches, labels.numel() // batch_size))
    generator = torch.Generator(device="cpu").manual_seed(seed)
    order = torch.randperm(labels.numel(), generator=generator)[: n_batches * batch_size].to(device)
    x = standardize(images[order].float() / 255.0, data.mean, data.std)
    y = labels[order]
    with torch.no_grad():
        teacher_logits = teacher(x)
    scale = teacher_logit_scale(teacher_logits)
    rows = []
    for loss_name in losses:
        for tau in taus:
            torch.manual_seed(seed)
            student = create_model(config.model, data.num_classes, data.in_channels).to(device).train()
            values, norms = [], []
            for b in range(n_batches):
                part = slice(b * batch_size, (b + 1) * batch_size)
                student.zero_grad(set_to_none=True)
                loss = kd_loss(
                    loss_name, student(x[part]), teacher_logits[part], y[part], float(tau),
                    alpha=config.alpha, kl_reduction=config.kl_reduction,
                )
                loss.backward()
                grads = [p.grad.flatten() for p in student.parameters() if p.grad is not None]
                values.append(float(loss.detach()))
                norms.append(float(torch.cat(grads).norm()))
            rows.append(
                {
                    "loss": loss_name,
                    "tau": float(tau),
                    "loss_value": sum(values) / len(values),
                    "gradient_norm": sum(norms) / len(norms),
                    **scale,
                }
            )
    return pd.DataFrame(rows)


def plot_loss_scale(table: pd.DataFrame, tau_range: Sequence[float] = (2.0, 20.0)):
    """Gradient norm and loss against tau, one line per loss, log-log, the stochastic range shaded."""
    import matplotlib.pyplot as plt

    use_style()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for name, group in table.groupby("loss"):
        for ax, column in zip(axes, ("gradient_norm", "loss_value")):
            ax.plot(group["tau"], group[column], marker="o", label=name.upper())
    for ax, label in zip(axes, ("student gradient L2 norm at init", "loss at init")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axvspan(*tau_range, color="#1b9e77", alpha=0.1, label="stochastic tau range")
        ax.set_xlabel("tau")
        ax.set_ylabel(label)
    axes[0].legend()
    scale = table.iloc[0]
    fig.suptitle(
        f"KD loss and gradient per tau (teacher logits: std {scale['teacher_logit_std']:.1f} per sample, "
        f"max |z| {scale['teacher_logit_max_abs']:.0f})"
    )
    return fig
