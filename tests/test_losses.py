"""Tests for greenkd_utils.core.losses against independent computations.

The references below are written with explicit loops in numpy (or with
``torch.nn.KLDivLoss``), never with the package's own helpers.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from greenkd_utils.core import losses
from greenkd_utils.core.losses import KD_LOSSES, kd_loss, register_loss

ALPHA = 0.95


# --------------------------------------------------------------------------- independent references


def _softmax(row: np.ndarray) -> np.ndarray:
    e = np.exp(row - row.max())
    return e / e.sum()


def ref_kl_rows(s: np.ndarray, t: np.ndarray, taus) -> np.ndarray:
    """KL(softmax(t_i/tau_i) || softmax(s_i/tau_i)) for every row i, with a loop over classes."""
    out = np.zeros(s.shape[0])
    for i in range(s.shape[0]):
        p_t = _softmax(t[i] / taus[i])
        p_s = _softmax(s[i] / taus[i])
        for c in range(s.shape[1]):
            out[i] += p_t[c] * (math.log(p_t[c]) - math.log(p_s[c]))
    return out


def ref_ce(s: np.ndarray, y: np.ndarray) -> float:
    total = 0.0
    for i in range(s.shape[0]):
        row = s[i]
        log_z = math.log(sum(math.exp(v - row.max()) for v in row)) + row.max()
        total += log_z - row[y[i]]
    return total / s.shape[0]


def ref_loss(name, s, t, y, tau, alpha=ALPHA, kl_reduction="batchmean") -> float:
    """The protocol's formulas (DESIGN.md), from numpy arrays; ``tau`` a float or one per row."""
    n, c = s.shape
    taus = np.broadcast_to(np.asarray(tau, dtype=np.float64), (n,))
    divisor = n if kl_reduction == "batchmean" else n * c
    if name == "hkd":
        distill = sum(taus[i] ** 2 * ref_kl_rows(s, t, taus)[i] for i in range(n)) / divisor
    elif name == "dml":
        distill = ref_kl_rows(s, t, taus).sum() / divisor
    elif name == "cmc":
        distill = 0.0
        for i in range(n):
            distill += sum((s[i, k] / taus[i] - t[i, k] / taus[i]) ** 2 for k in range(c)) / c
        distill /= n
    elif name == "cmc_sum":  # the sensitivity table's reading: summed, not averaged, over classes
        distill = 0.0
        for i in range(n):
            distill += sum((s[i, k] / taus[i] - t[i, k] / taus[i]) ** 2 for k in range(c))
        distill /= n
    elif name == "cmc_softmax":  # the sensitivity table's reading: on softmax probabilities
        distill = 0.0
        for i in range(n):
            p_s, p_t = _softmax(s[i] / taus[i]), _softmax(t[i] / taus[i])
            distill += sum((p_s[k] - p_t[k]) ** 2 for k in range(c)) / c
        distill /= n
    else:
        raise AssertionError(name)
    return alpha * distill + (1 - alpha) * ref_ce(s, y)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(6, 5, generator=g, dtype=torch.float64) * 3
    t = torch.randn(6, 5, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 5, (6,), generator=g)
    return s, t, y


def _np(*tensors):
    return [x.detach().numpy() for x in tensors]


# --------------------------------------------------------------------------- formulas


@pytest.mark.parametrize("name", ["hkd", "cmc", "dml", "cmc_sum", "cmc_softmax"])
@pytest.mark.parametrize("kl_reduction", ["batchmean", "mean"])
@pytest.mark.parametrize("tau", [1.0, 4.0, 13.5])
def test_each_loss_matches_the_protocol_formula(batch, name, kl_reduction, tau):
    s, t, y = batch
    got = kd_loss(name, s, t, y, tau=tau, alpha=ALPHA, kl_reduction=kl_reduction)
    want = ref_loss(name, *_np(s, t, y), tau, kl_reduction=kl_reduction)
    assert float(got) == pytest.approx(want, rel=1e-10, abs=1e-12)


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")
@pytest.mark.parametrize("reduction", ["batchmean", "mean"])
def test_hkd_matches_torch_kldivloss(batch, reduction):
    s, t, y = batch
    tau = 3.0
    kl = torch.nn.KLDivLoss(reduction=reduction)(
        torch.log_softmax(s / tau, dim=1), torch.softmax(t / tau, dim=1)
    )
    want = ALPHA * tau**2 * kl + (1 - ALPHA) * torch.nn.CrossEntropyLoss()(s, y)
    got = kd_loss("hkd", s, t, y, tau=tau, kl_reduction=reduction)
    assert float(got) == pytest.approx(float(want), rel=1e-10)


def test_mean_reduction_is_batchmean_divided_by_class_count(batch):
    s, t, y = batch
    bm = kd_loss("dml", s, t, y, tau=2.0, alpha=1.0, kl_reduction="batchmean")
    mean = kd_loss("dml", s, t, y, tau=2.0, alpha=1.0, kl_reduction="mean")
    assert float(mean) == pytest.approx(float(bm) / s.shape[1], rel=1e-12)


def test_hand_computed_two_class_case():
    # t/tau = [ln 3, 0] -> p_t = [3/4, 1/4]; s = 0 -> p_s = [1/2, 1/2]
    # KL = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.130812036; CE(0, y=0) = ln 2
    # HKD = 0.95 * 2^2 * 0.130812036 + 0.05 * 0.693147181 = 0.531743096
    tau = 2.0
    s = torch.zeros(1, 2, dtype=torch.float64)
    t = torch.tensor([[tau * math.log(3.0), 0.0]], dtype=torch.float64)
    y = torch.tensor([0])
    assert float(kd_loss("hkd", s, t, y, tau=tau)) == pytest.approx(0.5317430956, abs=1e-6)
    assert float(kd_loss("dml", s, t, y, tau=tau)) == pytest.approx(
        0.95 * 0.1308120359 + 0.05 * 0.6931471806, abs=1e-6
    )
    # CMC: mean over the two classes of (0 - ln 3)^2 and 0 = (ln 3)^2 / 2 = 0.603474...
    assert float(kd_loss("cmc", s, t, y, tau=tau)) == pytest.approx(
        0.95 * 0.6034744528 + 0.05 * 0.6931471806, abs=1e-6
    )


def test_cmc_variants_hand_computed_two_class_case():
    # s = 0, t/tau = [ln 3, 0]: summed over the 2 classes, (ln 3)^2 = 1.206948906 (twice the mean);
    # on probabilities, p_s = [1/2, 1/2], p_t = [3/4, 1/4]: mean of (1/4)^2 and (1/4)^2 = 0.0625.
    tau = 2.0
    s = torch.zeros(1, 2, dtype=torch.float64)
    t = torch.tensor([[tau * math.log(3.0), 0.0]], dtype=torch.float64)
    y = torch.tensor([0])
    ce = 0.05 * 0.6931471806
    assert float(kd_loss("cmc_sum", s, t, y, tau=tau)) == pytest.approx(0.95 * 1.2069489057 + ce, abs=1e-6)
    assert float(kd_loss("cmc_softmax", s, t, y, tau=tau)) == pytest.approx(0.95 * 0.0625 + ce, abs=1e-9)


# --------------------------------------------------------------------------- properties of the KL term


@pytest.mark.parametrize("reduction", ["batchmean", "mean"])
def test_kl_is_nonnegative_and_zero_for_equal_logits(batch, reduction):
    s, t, y = batch
    for name in ("hkd", "dml"):
        term = KD_LOSSES[name](s, t, 4.0, reduction)
        assert float(term) > 0
        same = KD_LOSSES[name](s, s.clone(), 4.0, reduction)
        assert abs(float(same)) < 1e-12
    # Many random pairs: the true divergence is never negative (the paper prints it sign-flipped).
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        a, b = torch.randn(2, 8, 7, generator=g) * 5
        assert float(KD_LOSSES["hkd"](a, b, 2.5, reduction)) >= 0
    assert float(KD_LOSSES["cmc"](s, s.clone(), 4.0, reduction)) == 0


def test_tau_squared_scaling(batch):
    s, t, y = batch
    # The distillation term alone (alpha=1): the ratio between tau=8 and tau=4 is
    # 4 x (the ratio of the plain KL terms), and both match the reference.
    hkd4 = float(kd_loss("hkd", s, t, y, tau=4.0, alpha=1.0))
    hkd8 = float(kd_loss("hkd", s, t, y, tau=8.0, alpha=1.0))
    s_np, t_np = _np(s, t)
    kl4 = ref_kl_rows(s_np, t_np, [4.0] * 6).mean()
    kl8 = ref_kl_rows(s_np, t_np, [8.0] * 6).mean()
    assert hkd4 == pytest.approx(16 * kl4, rel=1e-10)
    assert hkd8 == pytest.approx(64 * kl8, rel=1e-10)
    assert hkd8 / hkd4 == pytest.approx(4 * kl8 / kl4, rel=1e-10)
    # DML has no tau^2: the same KL without the factor.
    assert float(kd_loss("dml", s, t, y, tau=8.0, alpha=1.0)) == pytest.approx(kl8, rel=1e-10)


@pytest.mark.parametrize("name", ["hkd", "cmc", "dml"])
@pytest.mark.parametrize("kl_reduction", ["batchmean", "mean"])
def test_per_sample_tau_equals_each_sample_on_its_own(batch, name, kl_reduction):
    s, t, y = batch
    taus = torch.tensor([1.0, 2.0, 3.5, 7.0, 12.0, 20.0], dtype=torch.float64)
    got = kd_loss(name, s, t, y, tau=taus, kl_reduction=kl_reduction)
    each = [
        float(kd_loss(name, s[i : i + 1], t[i : i + 1], y[i : i + 1], tau=float(taus[i]), kl_reduction=kl_reduction))
        for i in range(len(taus))
    ]
    assert float(got) == pytest.approx(np.mean(each), rel=1e-10)
    assert float(got) == pytest.approx(
        ref_loss(name, *_np(s, t, y), taus.numpy(), kl_reduction=kl_reduction), rel=1e-10
    )


def test_zero_dim_tensor_tau_equals_float(batch):
    s, t, y = batch
    for name in ("hkd", "cmc", "dml"):
        a = kd_loss(name, s, t, y, tau=torch.tensor(5.5))
        b = kd_loss(name, s, t, y, tau=5.5)
        assert torch.equal(a, b)


def test_float32_tau_tensor_on_float32_logits():
    # The engine hands a float32 0-d tensor (one element of the epoch's taus) to float32 logits.
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(2, 4, 10, generator=g)
    y = torch.tensor([1, 2, 3, 4])
    got = kd_loss("hkd", s, t, y, tau=torch.tensor([2.0, 9.0], dtype=torch.float32)[1])
    want = ref_loss("hkd", s.double().numpy(), t.double().numpy(), y.numpy(), 9.0)
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_bad_tau_shape_is_an_error(batch):
    s, t, y = batch
    with pytest.raises(ValueError, match="shape"):
        kd_loss("hkd", s, t, y, tau=torch.ones(3))


# --------------------------------------------------------------------------- gradients and errors


@pytest.mark.parametrize("name", ["hkd", "cmc", "dml"])
def test_gradients_reach_student_but_not_teacher(batch, name):
    s, t, y = batch
    s = s.clone().requires_grad_(True)
    t = t.clone().requires_grad_(True)
    kd_loss(name, s, t, y, tau=3.0).backward()
    assert s.grad is not None and float(s.grad.abs().sum()) > 0
    assert t.grad is None


def test_unknown_loss_names_the_valid_ones(batch):
    s, t, y = batch
    with pytest.raises(ValueError, match="cmc, cmc_softmax, cmc_sum, dml, hkd"):
        kd_loss("fitnet", s, t, y, tau=2.0)


def test_bad_reduction_and_alpha(batch):
    s, t, y = batch
    with pytest.raises(ValueError, match="batchmean"):
        kd_loss("hkd", s, t, y, tau=2.0, kl_reduction="sum")
    with pytest.raises(ValueError, match="alpha"):
        kd_loss("hkd", s, t, y, tau=2.0, alpha=1.5)


def test_registered_loss_is_usable_and_cleaned_up(batch):
    s, t, y = batch
    name = "test_half_l1"
    assert name not in KD_LOSSES
    try:

        @register_loss(name)
        def half_l1(student_logits, teacher_logits, tau, kl_reduction):
            return 0.5 * (student_logits - teacher_logits).abs().mean()

        got = kd_loss(name, s, t, y, tau=2.0, alpha=0.6)
        s_np, t_np, y_np = _np(s, t, y)
        want = 0.6 * 0.5 * np.abs(s_np - t_np).mean() + 0.4 * ref_ce(s_np, y_np)
        assert float(got) == pytest.approx(want, rel=1e-10)
        with pytest.raises(ValueError, match="already registered"):
            register_loss(name)(half_l1)
    finally:
        KD_LOSSES.pop(name, None)
    assert name not in losses.KD_LOSSES
    with pytest.raises(ValueError, match="valid: cmc, cmc_softmax, cmc_sum, dml, hkd$"):
        kd_loss(name, s, t, y, tau=2.0)
