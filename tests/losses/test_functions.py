"""The pure loss functions against numbers computed by hand (math.exp / math.log), not by torch."""
from __future__ import annotations

import math

import pytest
import torch

from lrkd.losses import cross_entropy, crsd_losses, info_nce, kd_loss, latent_alignment


def softmax(xs):
    z = sum(math.exp(x) for x in xs)
    return [math.exp(x) / z for x in xs]


def kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def nce_row(row, i):
    """-log softmax(row)_i."""
    return -math.log(math.exp(row[i]) / sum(math.exp(x) for x in row))


# ---------------------------------------------------------------------------------------- ce
def test_cross_entropy_skips_unlabelled_rows_and_smooths():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0], [9.0, -9.0, 0.0]])
    labels = torch.tensor([0, 2, -1])
    p0, p1 = softmax([2.0, 0.0, -1.0]), softmax([0.5, 0.5, 3.0])
    expected = (-math.log(p0[0]) - math.log(p1[2])) / 2
    assert cross_entropy(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    # label smoothing eps: (1-eps)·(-log p_y) + eps·mean_c(-log p_c)
    eps = 0.1
    smooth = lambda p, y: (1 - eps) * -math.log(p[y]) + eps * sum(-math.log(x) for x in p) / 3  # noqa: E731
    expected_s = (smooth(p0, 0) + smooth(p1, 2)) / 2
    assert cross_entropy(logits, labels, label_smoothing=eps).item() == pytest.approx(expected_s, rel=1e-6)


def test_cross_entropy_all_unlabelled_is_zero_with_grad_path():
    logits = torch.randn(3, 4, requires_grad=True)
    loss = cross_entropy(logits, torch.full((3,), -1))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


# ---------------------------------------------------------------------------------------- kd
def test_kd_loss_with_temperature_two_includes_t_squared():
    s = [[1.0, 0.0, -0.5], [0.3, 0.2, 0.1]]
    pt = [[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]
    T = 2.0
    expected = 0.0
    for srow, prow in zip(s, pt):
        target = softmax([math.log(x) / T for x in prow])  # softmax(log p_T / T) ∝ p_T^(1/T)
        student = softmax([x / T for x in srow])
        expected += kl(target, student)
    expected = T * T * expected / 2
    got = kd_loss(torch.tensor(s), torch.tensor(pt), temperature=T)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # the T² factor: the same rows at T=1 are plain KL(p_T ‖ softmax(s))
    expected_t1 = sum(kl(p, softmax(r)) for r, p in zip(s, pt)) / 2
    assert kd_loss(torch.tensor(s), torch.tensor(pt), temperature=1.0).item() == pytest.approx(expected_t1, rel=1e-5)


def test_kd_loss_masked_rows_change_nothing_and_zero_probs_are_safe():
    s = torch.tensor([[1.0, 0.0], [5.0, -5.0]])
    pt = torch.tensor([[0.25, 0.75], [0.0, 1.0]])  # row 1 masked out, and has a 0 probability
    mask = torch.tensor([True, False])
    target = softmax([math.log(0.25) / 2, math.log(0.75) / 2])
    expected = 4 * kl(target, softmax([0.5, 0.0]))
    got = kd_loss(s, pt, temperature=2.0, mask=mask)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert torch.isfinite(kd_loss(s, pt, temperature=2.0))  # clamped log of the 0 probability


def test_kd_loss_all_masked_is_zero_with_grad_path():
    s = torch.randn(2, 3, requires_grad=True)
    loss = kd_loss(s, torch.full((2, 3), 1 / 3), mask=torch.tensor([False, False]))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(s.grad, torch.zeros_like(s))


# ----------------------------------------------------------------------------------- infonce
# anchors (1,0), (0,1); positives (1,0), (3,3): cosines S = [[1, 1/√2], [0, 1/√2]]
ANCHORS = [[1.0, 0.0], [0.0, 1.0]]
POSITIVES = [[1.0, 0.0], [3.0, 3.0]]
R = 1 / math.sqrt(2)


def test_info_nce_on_a_known_2x2_similarity_matrix():
    tau = 0.5
    S = [[1 / tau, R / tau], [0.0, R / tau]]
    expected = (nce_row(S[0], 0) + nce_row(S[1], 1)) / 2
    got = info_nce(torch.tensor(ANCHORS), torch.tensor(POSITIVES), temperature=tau)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # symmetric: also columns (positives as anchors)
    cols = [[S[0][0], S[1][0]], [S[0][1], S[1][1]]]
    expected_sym = (expected + (nce_row(cols[0], 0) + nce_row(cols[1], 1)) / 2) / 2
    got_sym = info_nce(torch.tensor(ANCHORS), torch.tensor(POSITIVES), temperature=tau, symmetric=True)
    assert got_sym.item() == pytest.approx(expected_sym, rel=1e-5)


def test_info_nce_masked_row_is_dropped_as_anchor_and_as_candidate():
    tau = 0.5
    S = [[1 / tau, R / tau], [0.0, R / tau]]
    expected = (nce_row(S[0], 0) + nce_row(S[1], 1)) / 2
    # a third row whose positive would be a strong distractor for row 0 if it stayed a candidate
    a = torch.tensor(ANCHORS + [[-1.0, 0.2]])
    p = torch.tensor(POSITIVES + [[1.0, 0.01]])
    got = info_nce(a, p, temperature=tau, mask=torch.tensor([True, True, False]))
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert info_nce(a, p, temperature=tau).item() != pytest.approx(expected, rel=1e-3)


def test_info_nce_all_masked_is_zero_with_grad_path():
    a = torch.randn(3, 4, requires_grad=True)
    p = torch.randn(3, 4, requires_grad=True)
    loss = info_nce(a, p, mask=torch.zeros(3, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(a.grad, torch.zeros_like(a)) and torch.equal(p.grad, torch.zeros_like(p))


# ------------------------------------------------------------------------------------ latent
# B=2, K=2, D=2
PRED = [[[1.0, 0.0], [1.0, 0.0]],
        [[0.0, 1.0], [0.0, 2.0]]]
TARGET = [[[1.0, 0.0], [0.0, 1.0]],
          [[0.0, 1.0], [1.0, 0.0]]]


def test_latent_alignment_mse():
    # squared errors per (row, k) averaged over D: (0,0):0, (0,1):(1+1)/2=1, (1,0):0, (1,1):(1+4)/2=2.5
    expected = (0 + 1 + 0 + 2.5) / 4
    got = latent_alignment(torch.tensor(PRED), torch.tensor(TARGET), distance="mse")
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_latent_alignment_cosine():
    pred = [[[1.0, 0.0], [1.0, 1.0]], [[0.0, 2.0], [3.0, 0.0]]]
    target = [[[2.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [-1.0, 0.0]]]
    # 1 - cos: 0, 1 - 1/√2, 0, 2
    expected = (0 + (1 - R) + 0 + 2) / 4
    got = latent_alignment(torch.tensor(pred), torch.tensor(target), distance="cosine")
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_latent_alignment_infonce_is_mean_over_perspectives():
    tau = 0.5
    # k=0: cosines [[1,0],[0,1]]; k=1: pred (1,0),(0,2) vs target (0,1),(1,0): cosines [[0,1],[1,0]]
    k0 = (nce_row([2.0, 0.0], 0) + nce_row([0.0, 2.0], 1)) / 2
    k1 = (nce_row([0.0, 2.0], 0) + nce_row([2.0, 0.0], 1)) / 2
    got = latent_alignment(torch.tensor(PRED), torch.tensor(TARGET), distance="infonce", temperature=tau)
    assert got.item() == pytest.approx((k0 + k1) / 2, rel=1e-5)


@pytest.mark.parametrize("distance", ["mse", "cosine", "infonce"])
def test_latent_alignment_masking(distance):
    pred, target = torch.tensor(PRED), torch.tensor(TARGET)
    junk_pred = torch.cat([pred, torch.tensor([[[5.0, -3.0], [0.5, 7.0]]])])
    junk_target = torch.cat([target, torch.tensor([[[-2.0, 1.0], [4.0, 4.0]]])])
    mask = torch.tensor([True, True, False])
    assert latent_alignment(junk_pred, junk_target, distance, mask).item() == pytest.approx(
        latent_alignment(pred, target, distance).item(), rel=1e-6)
    p = junk_pred.clone().requires_grad_(True)
    loss = latent_alignment(p, junk_target, distance, torch.zeros(3, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(p.grad, torch.zeros_like(p))


def test_latent_alignment_rejects_unknown_distance():
    with pytest.raises(ValueError, match="mse"):
        latent_alignment(torch.zeros(1, 1, 2), torch.zeros(1, 1, 2), distance="l1")


# -------------------------------------------------------------------------------------- crsd
def _crsd_inputs():
    pooled = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    aug_pooled = torch.tensor([[1.0, 0.0], [3.0, 3.0]], requires_grad=True)
    logits = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 1.0]], requires_grad=True)
    aug_logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 1.0]], requires_grad=True)
    labels = torch.tensor([0, -1])
    return pooled, aug_pooled, logits, aug_logits, labels


def test_crsd_losses_values():
    pooled, aug_pooled, logits, aug_logits, labels = _crsd_inputs()
    tau = 0.5
    parts = crsd_losses(pooled, aug_pooled, logits, aug_logits, labels, temperature=tau)
    S = [[1 / tau, R / tau], [0.0, R / tau]]
    assert parts["contrastive"].item() == pytest.approx((nce_row(S[0], 0) + nce_row(S[1], 1)) / 2, rel=1e-5)
    kl_expected = (kl(softmax([2.0, 0.0, -1.0]), softmax([1.0, 0.0, 0.0]))
                   + kl(softmax([0.0, 0.0, 1.0]), softmax([0.0, 2.0, 1.0]))) / 2
    assert parts["kl"].item() == pytest.approx(kl_expected, rel=1e-5)
    assert parts["aug_ce"].item() == pytest.approx(-math.log(softmax([2.0, 0.0, -1.0])[0]), rel=1e-6)


@pytest.mark.parametrize("stop_gradient", [True, False])
def test_crsd_stop_gradient_on_the_augmented_target(stop_gradient):
    pooled, aug_pooled, logits, aug_logits, labels = _crsd_inputs()
    parts = crsd_losses(pooled, aug_pooled, logits, aug_logits, labels, stop_gradient=stop_gradient)
    g_aug, g_std = torch.autograd.grad(parts["kl"], [aug_logits, logits], allow_unused=True)
    assert g_std is not None and g_std.abs().sum() > 0  # the standard view always learns
    if stop_gradient:
        assert g_aug is None or torch.equal(g_aug, torch.zeros_like(aug_logits))
    else:
        assert g_aug is not None and g_aug.abs().sum() > 1e-4


def test_crsd_masked_rows_change_nothing():
    pooled, aug_pooled, logits, aug_logits, labels = _crsd_inputs()
    ref = crsd_losses(pooled, aug_pooled, logits, aug_logits, torch.tensor([0, 1]))
    cat = lambda t, extra: torch.cat([t.detach(), torch.tensor([extra])])  # noqa: E731
    masked = crsd_losses(cat(pooled, [0.9, 0.1]), cat(aug_pooled, [1.0, 0.05]), cat(logits, [9.0, 0.0, 0.0]),
                         cat(aug_logits, [0.0, 0.0, 9.0]), torch.tensor([0, 1, 2]),
                         mask=torch.tensor([True, True, False]))
    for key in ("contrastive", "kl", "aug_ce"):
        assert masked[key].item() == pytest.approx(ref[key].item(), rel=1e-5), key


def test_kd_target_tail_is_the_teachers_not_a_floor():
    """At T = 4 a class the teacher gives probability 0 keeps target 0 (a floor of 1e-8 before the
    log would give it (1e-8)^(1/4) = 1e-2 of the mass before normalising)."""
    import torch.nn.functional as F

    teacher = torch.tensor([[0.7, 0.3, 0.0, 0.0]])
    student = torch.tensor([[2.0, 1.0, -1.0, 0.5]], requires_grad=True)
    t = 4.0
    target = teacher.pow(1 / t) / teacher.pow(1 / t).sum()
    q = F.log_softmax(student / t, dim=-1)
    expected = t * t * (target[:, :2] * (target[:, :2].log() - q[:, :2])).sum()
    got = kd_loss(student, teacher, temperature=t)
    assert torch.isfinite(got) and got.item() == pytest.approx(expected.item(), rel=1e-6)
    got.backward()
    assert torch.isfinite(student.grad).all()
    # equal to the log-space form wherever the teacher has no zero
    full = torch.tensor([[0.5, 0.25, 0.15, 0.10]])
    ref = t * t * F.kl_div(q, F.log_softmax(full.log() / t, dim=-1), reduction="sum", log_target=True)
    assert kd_loss(student, full, temperature=t).item() == pytest.approx(ref.item(), rel=1e-5)
