"""What tau does to the distillation of one test image: the teacher's and the student's softened outputs, and
each KD loss with the gradient it sends into the student, against tau.

A :class:`TauExplorer` holds a trained teacher and student (a real pair from the run store:
:meth:`TauExplorer.from_runs`) and one test image. Its curves are computed once, on a tau grid; a figure for
any tau and any stochastic range (:meth:`TauExplorer.figure`, :meth:`TauExplorer.png`) only reads them and
marks the chosen tau, so a slider can redraw it at once. ``notebooks/00_start_here.ipynb`` wires its widgets
to these methods.

The curves are those of the distillation term as the training step weighs it, ``alpha x term(student,
teacher, tau)`` (:func:`greenkd_utils.core.losses.kd_loss` without its cross-entropy part), and the L2 norm of
its gradient with respect to the student's parameters. The label term, ``(1 - alpha) x CE``, does not depend
on tau; it is drawn as a reference line. Where a loss's gradient falls under it, the teacher barely steers
the student any more: CMC's term is a squared difference of logits divided by tau, so its gradient shrinks
exactly as 1/tau^2; DML's KL has no tau^2 factor, and for large tau it shrinks as 1/tau^2 too; HKD's tau^2
factor keeps its gradient about level.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from greenkd_utils.analysis.plotting import use_style
from greenkd_utils.core.augment import standardize
from greenkd_utils.core.losses import distillation_term

DEFAULT_LOSSES = ("hkd", "cmc", "dml")
# The slider's range: tau = 1 (the plain softmax) up to past the paper's stochastic U[2, 20].
TAU_MIN, TAU_MAX = 1.0, 30.0
# The tau of the figure saved for readers without widgets (papermill, a static viewer): Hinton et al.'s
# classic choice, inside the paper's stochastic range.
STATIC_TAU = 4.0
PAPER_RANGE = (2.0, 20.0)
LOSS_COLORS = {"hkd": "#1b9e77", "cmc": "#d95f02", "dml": "#7570b3"}


def tau_grid(low: float = TAU_MIN, high: float = TAU_MAX, points: int = 60) -> np.ndarray:
    """``points`` taus spaced evenly on a log scale from ``low`` to ``high``, both included."""
    check_range(low, high)
    if points < 2:
        raise ValueError(f"a tau grid needs at least 2 points; got {points}")
    return np.geomspace(low, high, points)


def check_range(low: float, high: float) -> None:
    """A clear error for a stochastic range that is empty, reversed or not positive."""
    if not (np.isfinite(low) and np.isfinite(high)) or low <= 0 or high <= low:
        raise ValueError(f"a tau range needs 0 < low < high; got low={low!r}, high={high!r}")


def softened(logits: torch.Tensor, tau: float) -> np.ndarray:
    """softmax(logits / tau) of one sample's logits, as a numpy vector."""
    if tau <= 0:
        raise ValueError(f"tau must be > 0; got {tau!r}")
    return torch.softmax(torch.as_tensor(logits, dtype=torch.float64).flatten() / tau, dim=0).numpy()


def _gradient_norm(value: torch.Tensor, parameters: List[torch.Tensor]) -> float:
    grads = torch.autograd.grad(value, parameters, retain_graph=True, allow_unused=True)
    return float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None)))


def loss_curves(student: torch.nn.Module, x: torch.Tensor, teacher_logits: torch.Tensor, label: int,
                taus: Sequence[float], losses: Sequence[str] = DEFAULT_LOSSES, alpha: float = 0.95,
                kl_reduction: str = "batchmean") -> Tuple[pd.DataFrame, Dict[str, float]]:
    """(curves, label term) for one image ``x`` (shape (1, C, H, W), standardised).

    ``curves``: one row per loss and tau with ``loss_value`` (alpha x the distillation term) and
    ``gradient_norm`` (L2 norm of its gradient over the student's parameters). ``label term``: the value and
    gradient norm of (1 - alpha) x CE(student, label), which no tau changes. The student is run in eval mode
    (one image: batch norm uses its running statistics) and its parameters are left as they were.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1]; got {alpha}")
    terms = {name: distillation_term(name, kl_reduction) for name in losses}
    parameters = [p for p in student.parameters() if p.requires_grad]
    was_training = student.training
    student.eval()
    try:
        with torch.enable_grad():
            # Double precision: at large tau the KL terms are differences of nearly equal numbers, which
            # float32 turns into noise.
            student_logits = student(x).double()
            teacher_logits = teacher_logits.detach().reshape(1, -1).double()
            target = torch.as_tensor([label], device=student_logits.device)
            ce = (1.0 - alpha) * F.cross_entropy(student_logits, target)
            label_term = {"loss_value": float(ce.detach()), "gradient_norm": _gradient_norm(ce, parameters)}
            rows = []
            for name, term in terms.items():
                for tau in taus:
                    value = alpha * term(student_logits, teacher_logits, float(tau), kl_reduction)
                    rows.append({"loss": name, "tau": float(tau), "loss_value": float(value.detach()),
                                 "gradient_norm": _gradient_norm(value, parameters)})
    finally:
        student.train(was_training)
    return pd.DataFrame(rows, columns=["loss", "tau", "loss_value", "gradient_norm"]), label_term


def _interpolate(curve: pd.DataFrame, column: str, taus: np.ndarray) -> np.ndarray:
    """``column`` at ``taus``, interpolated linearly in log(tau) and log(value) between grid points."""
    grid = curve["tau"].to_numpy(dtype=float)
    values = curve[column].to_numpy(dtype=float)
    floor = np.finfo(float).tiny
    return np.exp(np.interp(np.log(taus), np.log(grid), np.log(np.maximum(values, floor))))


@dataclass
class TauExplorer:
    """One teacher/student pair, one test image and its loss and gradient curves against tau."""

    teacher_logits: torch.Tensor  # (K,)
    student_logits: torch.Tensor  # (K,)
    label: int
    image: np.ndarray  # (H, W) or (H, W, 3), uint8, for display
    class_names: List[str]
    curves: pd.DataFrame
    label_term: Dict[str, float]
    caption: str  # what the pair is: profile, models, seed, image
    alpha: float = 0.95
    losses: Tuple[str, ...] = DEFAULT_LOSSES
    notes: Dict[str, Any] = field(default_factory=dict)

    # -- building one ------------------------------------------------------------------------------
    @classmethod
    def from_models(cls, teacher: torch.nn.Module, student: torch.nn.Module, x: torch.Tensor, label: int,
                    image: np.ndarray, class_names: Sequence[str], caption: str, alpha: float = 0.95,
                    kl_reduction: str = "batchmean", losses: Sequence[str] = DEFAULT_LOSSES,
                    taus: Optional[Sequence[float]] = None) -> "TauExplorer":
        """From two networks and one standardised image ``x`` of shape (1, C, H, W)."""
        modes = teacher.training, student.training
        teacher.eval()
        student.eval()
        try:
            with torch.no_grad():
                teacher_logits = teacher(x).reshape(-1).float().cpu()
                student_logits = student(x).reshape(-1).float().cpu()
        finally:
            teacher.train(modes[0])
            student.train(modes[1])
        taus = tau_grid() if taus is None else np.asarray(taus, dtype=float)
        curves, label_term = loss_curves(student, x, teacher_logits.to(x.device), label, taus, losses, alpha,
                                         kl_reduction)
        return cls(teacher_logits, student_logits, int(label), np.asarray(image), list(class_names), curves,
                   label_term, caption, alpha, tuple(losses))

    @classmethod
    def from_runs(cls, exp, teacher_run, student_run, image_index: int = 0,
                  losses: Sequence[str] = DEFAULT_LOSSES, taus: Optional[Sequence[float]] = None) -> "TauExplorer":
        """The finished ``teacher_run`` and ``student_run`` of ``exp``'s store, on the test image
        ``image_index`` of the data the student was evaluated on."""
        from greenkd_utils.runs.device_data import prepare_data
        from greenkd_utils.runs.execution import resolve_device

        device = resolve_device(exp.device)
        teacher = teacher_run.load_model(exp.store, device)
        student = student_run.load_model(exp.store, device)
        data = prepare_data(student_run.config, device, exp.data_root)
        images, labels = data.test
        if not 0 <= image_index < labels.numel():
            raise ValueError(f"image_index {image_index} is not a test image; valid: 0 to {labels.numel() - 1}")
        raw = images[image_index:image_index + 1]
        x = standardize(raw.float() / 255.0, data.mean, data.std)
        picture = raw[0].permute(1, 2, 0).cpu().numpy()
        picture = picture[..., 0] if picture.shape[-1] == 1 else picture
        config = student_run.config
        caption = (f"profile {config.profile}: teacher {teacher_run.config.model} -> student {config.model} "
                   f"(one pair, seed {config.seed}), {config.dataset} test image {image_index}")
        return cls.from_models(teacher, student, x, int(labels[image_index]), picture, data.class_names, caption,
                               alpha=config.alpha, kl_reduction=config.kl_reduction, losses=losses, taus=taus)

    # -- reading it --------------------------------------------------------------------------------
    def curve(self, loss: str) -> pd.DataFrame:
        if loss not in self.losses:
            raise ValueError(f"unknown loss {loss!r}; valid: {', '.join(self.losses)}")
        return self.curves[self.curves["loss"] == loss].sort_values("tau")

    def at(self, tau: float) -> pd.DataFrame:
        """Each loss's value and gradient norm at ``tau`` (interpolated on the grid; within its range)."""
        self._check_tau(tau)
        rows = []
        for loss in self.losses:
            curve = self.curve(loss)
            rows.append({"loss": loss, "tau": float(tau),
                         "loss_value": float(_interpolate(curve, "loss_value", np.array([tau]))[0]),
                         "gradient_norm": float(_interpolate(curve, "gradient_norm", np.array([tau]))[0])})
        return pd.DataFrame(rows)

    def range_summary(self, low: float, high: float, points: int = 400) -> pd.DataFrame:
        """Per loss, over tau ~ U[low, high]: the mean gradient norm (the expectation under the uniform draw),
        the smallest and largest, their ratio, and the mean relative to the label term's gradient."""
        check_range(low, high)
        self._check_tau(low)
        self._check_tau(high)
        # The mean by the midpoint rule (exact to O(1/points^2)); the extremes include both ends of the range.
        middles = low + (np.arange(points) + 0.5) * (high - low) / points
        rows = []
        for loss in self.losses:
            curve = self.curve(loss)
            mean = float(_interpolate(curve, "gradient_norm", middles).mean())
            extremes = _interpolate(curve, "gradient_norm", np.concatenate([[low, high], middles]))
            rows.append({"loss": loss, "low": float(low), "high": float(high),
                         "mean_gradient_norm": mean, "min_gradient_norm": float(extremes.min()),
                         "max_gradient_norm": float(extremes.max()),
                         "max_over_min": float(extremes.max() / extremes.min()),
                         "mean_over_label_term": mean / self.label_term["gradient_norm"]})
        return pd.DataFrame(rows)

    def _check_tau(self, tau: float) -> None:
        lowest, highest = float(self.curves["tau"].min()), float(self.curves["tau"].max())
        if not lowest - 1e-9 <= tau <= highest + 1e-9:
            raise ValueError(f"tau {tau!r} is outside the explored range; valid: {lowest:g} to {highest:g}")

    # -- drawing it --------------------------------------------------------------------------------
    def figure(self, tau: float = STATIC_TAU, low: float = PAPER_RANGE[0], high: float = PAPER_RANGE[1]):
        """Four panels: the image; the teacher's and student's softmax(logits / tau); each loss and its
        gradient norm against tau (log-log), the stochastic range U[low, high] shaded and ``tau`` marked."""
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullFormatter

        check_range(low, high)
        self._check_tau(tau)
        use_style()
        fig, (ax_image, ax_probs, ax_loss, ax_grad) = plt.subplots(
            1, 4, figsize=(15, 3.8), gridspec_kw={"width_ratios": [0.7, 1.3, 1.2, 1.2]})
        ax_image.imshow(self.image, cmap="gray_r" if self.image.ndim == 2 else None)
        ax_image.set_title(f"label: {self._class(self.label)}")
        ax_image.axis("off")

        classes = np.arange(len(self.teacher_logits))
        ax_probs.bar(classes - 0.2, softened(self.teacher_logits, tau), 0.4, color="#4d4d4d", label="teacher")
        ax_probs.bar(classes + 0.2, softened(self.student_logits, tau), 0.4, color="#1f78b4", label="student")
        ax_probs.set_xticks(classes, [self._class(c) for c in classes], fontsize=8)
        ax_probs.set_ylim(0, 1)
        ax_probs.set_ylabel(f"softmax(logits / {tau:g})")
        ax_probs.set_title(f"softened outputs at tau = {tau:g}")
        ax_probs.legend(fontsize=8)

        marked = self.at(tau).set_index("loss")
        for ax, column, label in ((ax_loss, "loss_value", "alpha x distillation term"),
                                  (ax_grad, "gradient_norm", "student gradient L2 norm")):
            for loss in self.losses:
                curve = self.curve(loss)
                color = LOSS_COLORS.get(loss)
                ax.plot(curve["tau"], curve[column], color=color, label=loss.upper())
                ax.plot([tau], [marked.loc[loss, column]], "o", color=color, markersize=7)
            ax.axhline(self.label_term[column], color="#8c8c8c", ls="--", lw=1,
                       label=f"label term (1 - alpha) x CE")
            ax.axvspan(low, high, color="#1b9e77", alpha=0.1, label=f"stochastic U[{low:g}, {high:g}]")
            ax.axvline(tau, color="black", lw=1, label=f"tau = {tau:g}")
            ax.set_xscale("log")
            ax.set_yscale("log")
            # Labelled minor ticks on log axes cost most of a redraw and add little.
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.yaxis.set_minor_formatter(NullFormatter())
            ticks = [t for t in (1, 2, 5, 10, 20, 30) if self.curves["tau"].min() <= t <= self.curves["tau"].max()]
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.set_xlabel("tau")
            ax.set_ylabel(label)
        ax_loss.set_title("loss against tau")
        ax_grad.set_title("gradient against tau")
        ax_grad.legend(fontsize=7, loc="lower left")
        summary = self.range_summary(low, high).set_index("loss")
        spread = ", ".join(f"{loss.upper()} x{summary.loc[loss, 'max_over_min']:.0f}" for loss in self.losses)
        fig.suptitle(f"{self.caption}\ntau = {tau:g}; over U[{low:g}, {high:g}] each gradient varies "
                     f"between draws by: {spread}", fontsize=10)
        # Fixed margins rather than tight_layout: a slider redraws this figure, and tight_layout triples its cost.
        fig.subplots_adjust(left=0.02, right=0.99, bottom=0.16, top=0.78, wspace=0.38)
        return fig

    def png(self, tau: float = STATIC_TAU, low: float = PAPER_RANGE[0], high: float = PAPER_RANGE[1],
            dpi: int = 80) -> bytes:
        """:meth:`figure` as PNG bytes (what an image widget shows), the figure closed afterwards."""
        import matplotlib.pyplot as plt

        fig = self.figure(tau, low, high)
        buffer = io.BytesIO()
        try:
            fig.savefig(buffer, format="png", dpi=dpi, bbox_inches=None)
        finally:
            plt.close(fig)
        return buffer.getvalue()

    def _class(self, index: int) -> str:
        return self.class_names[index] if index < len(self.class_names) else str(index)
