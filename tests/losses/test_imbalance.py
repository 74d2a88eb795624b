"""Imbalance-aware and ordinal loss terms: class weights from known counts, weighted CE/KD/CRSD,
the ordinal term against hand-computed values, and the one-override configs."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from sklearn.utils.class_weight import compute_class_weight

from lrkd.losses import (CETerm, CRSDTerm, KDTerm, LossInputError, OrdinalTerm, WeightedLoss,
                         balanced_class_weights, crsd_losses, kd_loss, ordinal_loss, resolve_class_weight)

CONF = Path(__file__).resolve().parents[2] / "conf"


def test_balanced_weights_from_a_known_label_count_match_sklearn():
    counts = [10, 20, 70]
    w = balanced_class_weights(counts)
    np.testing.assert_allclose(w, [100 / 30, 100 / 60, 100 / 210])
    labels = np.repeat(np.arange(3), counts)
    np.testing.assert_allclose(w, compute_class_weight("balanced", classes=np.arange(3), y=labels))
    # a class absent from train gets weight 1; the others as if it were not there
    np.testing.assert_allclose(balanced_class_weights([30, 0, 10]), [40 / 90, 1.0, 40 / 30])
    assert resolve_class_weight(None, counts) is None
    np.testing.assert_allclose(resolve_class_weight([1, 2, 3], None, 3), [1, 2, 3])
    with pytest.raises(ValueError, match="entries"):
        resolve_class_weight([1, 2], None, 3)
    with pytest.raises(ValueError, match="label counts"):
        resolve_class_weight("balanced", None, 3)


def test_weighted_ce_equals_torch_weighted_cross_entropy_and_balanced_resolves_from_counts():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 3, generator=g)
    labels = torch.tensor([0, 2, 2, -1, 1, 2])
    term = CETerm(class_weight="balanced")
    with pytest.raises(LossInputError, match="not resolved"):
        term({"logits": logits}, {"labels": labels})
    WeightedLoss({"ce": term}).set_class_counts([10, 20, 70], 3)
    w = torch.tensor(balanced_class_weights([10, 20, 70]), dtype=torch.float32)
    keep = labels >= 0
    ref = F.cross_entropy(logits[keep], labels[keep], weight=w)
    assert term({"logits": logits}, {"labels": labels})["loss"].item() == pytest.approx(ref.item(), rel=1e-6)
    # default: unchanged, unweighted
    plain = CETerm()({"logits": logits}, {"labels": labels})["loss"]
    assert plain.item() == pytest.approx(F.cross_entropy(logits[keep], labels[keep]).item(), rel=1e-6)


def test_kd_rows_weigh_their_expected_class_weight_under_the_teacher():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 3, generator=g)
    teacher = torch.softmax(torch.randn(4, 3, generator=g), -1)
    annotated = torch.tensor([True, True, False, True])
    w = torch.tensor([3.0, 1.0, 0.5])
    term = KDTerm(temperature=2.0, class_weight=w.tolist())
    got = term({"logits": logits}, {"teacher_probs": teacher, "annotated": annotated})["loss"]
    row_w = teacher @ w
    per_row = torch.stack([kd_loss(logits[[i]], teacher[[i]], 2.0) for i in range(4)])
    ref = (per_row * row_w)[annotated].sum() / row_w[annotated].sum()
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)


def test_crsd_class_weight_weighs_aug_ce_only():
    g = torch.Generator().manual_seed(2)
    args = dict(pooled=torch.randn(4, 5, generator=g), aug_pooled=torch.randn(4, 5, generator=g),
                logits=torch.randn(4, 3, generator=g), aug_logits=torch.randn(4, 3, generator=g),
                labels=torch.tensor([0, 1, 2, 2]))
    w = torch.tensor([4.0, 2.0, 1.0])
    plain, weighted = crsd_losses(**args), crsd_losses(**args, class_weight=w)
    assert weighted["contrastive"].item() == pytest.approx(plain["contrastive"].item())
    assert weighted["kl"].item() == pytest.approx(plain["kl"].item())
    ref = F.cross_entropy(args["aug_logits"], args["labels"], weight=w)
    assert weighted["aug_ce"].item() == pytest.approx(ref.item(), rel=1e-6)
    assert CRSDTerm(class_weight="balanced").class_weight == "balanced"


def test_ordinal_cumulative_and_expected_grade_against_hand_computed_values():
    # p = (0.5, 0.3, 0.2); gold grade 1: cut 0 -> F_0 = 0.5, target 0; cut 1 -> F_1 = 0.8, target 1
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    labels = torch.tensor([1])
    expected_cum = (-math.log(1 - 0.5) - math.log(0.8)) / 2
    assert ordinal_loss(logits, labels, "cumulative").item() == pytest.approx(expected_cum, rel=1e-6)
    # E[grade] = 0.3 + 0.4 = 0.7; ((0.7 - 1) / 2)^2
    assert ordinal_loss(logits, labels, "expected_grade").item() == pytest.approx(0.0225, rel=1e-5)
    # gold grade 0: both cut points have target 1 -> (-log 0.5 - log 0.8) / 2; grade 2: (-log 0.5 - log 0.2) / 2
    two = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]))
    rows = [(-math.log(0.5) - math.log(0.8)) / 2, (-math.log(0.5) - math.log(0.2)) / 2]
    got = ordinal_loss(two, torch.tensor([0, 2, -1]), "cumulative")
    assert got.item() == pytest.approx(sum(rows) / 2, rel=1e-6)
    # class weights weigh the rows by their label; the term reads out/batch and has a grad path
    weighted = ordinal_loss(two, torch.tensor([0, 2, -1]), "cumulative", weight=torch.tensor([1.0, 1.0, 3.0]))
    assert weighted.item() == pytest.approx((rows[0] + 3 * rows[1]) / 4, rel=1e-6)
    x = logits.clone().requires_grad_(True)
    loss = OrdinalTerm(kind="cumulative")({"logits": x}, {"labels": labels})["loss"]
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def _compose(name, overrides):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF / "loss"), version_base="1.3"):
            return compose(name, overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


def test_one_override_enables_class_weights_and_the_ordinal_preset():
    loss = instantiate(_compose("ordinal", []))
    assert set(loss.active_terms) == {"ce", "ordinal"} and isinstance(loss.terms["ordinal"], OrdinalTerm)
    loss = instantiate(_compose("full", ["+terms.ce.class_weight=balanced", "+terms.kd.class_weight=[1,2,3,4]"]))
    loss.set_class_counts([5, 10, 20, 65], 4)
    np.testing.assert_allclose(loss.terms["ce"].class_weights().numpy(), balanced_class_weights([5, 10, 20, 65]),
                               rtol=1e-6)
    np.testing.assert_allclose(loss.terms["kd"].class_weights().numpy(), [1, 2, 3, 4])
    assert loss.terms["crsd"].class_weights() is None
