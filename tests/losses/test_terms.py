"""LossTerm modules and WeightedLoss: batch/output plumbing, masking, weights, clear errors."""
from __future__ import annotations

import math

import pytest
import torch

from lrkd.losses import (CETerm, CRSDTerm, KDTerm, LatentTerm, LossInputError, LossTerm, WeightedLoss,
                         crsd_losses, cross_entropy, kd_loss, latent_alignment)
from lrkd.losses.ce import training_labels


def softmax(xs):
    z = sum(math.exp(x) for x in xs)
    return [math.exp(x) / z for x in xs]


def make_out_batch(b=4, c=3, k=2, d=5, h=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {"logits": torch.randn(b, c, generator=g, requires_grad=True),
           "pooled": torch.randn(b, h, generator=g, requires_grad=True),
           "latent_pred": torch.randn(b, k, d, generator=g, requires_grad=True),
           "aug_logits": torch.randn(b, c, generator=g, requires_grad=True),
           "aug_pooled": torch.randn(b, h, generator=g, requires_grad=True)}
    batch = {"labels": torch.tensor([0, 2, -1, -1])[:b],
             "annotated": torch.tensor([True, False, True, False])[:b],
             "teacher_probs": torch.softmax(torch.randn(b, c, generator=g), -1),
             "latent_targets": torch.randn(b, k, d, generator=g)}
    return out, batch


# -------------------------------------------------------------------------------------- CETerm
def test_ce_term_uses_teacher_label_for_unlabelled_annotated_rows():
    out = {"logits": torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 3.0], [2.0, 2.0, 0.0]])}
    batch = {"labels": torch.tensor([0, -1, -1]), "annotated": torch.tensor([False, True, False]),
             "teacher_probs": torch.tensor([[0.1, 0.1, 0.8], [0.2, 0.7, 0.1], [0.9, 0.05, 0.05]])}
    # row 0: gold 0; row 1: teacher argmax = 1; row 2: unlabelled and not annotated -> skipped
    expected = (-math.log(softmax([1.0, 0.0, 0.0])[0]) - math.log(softmax([0.0, 1.0, 3.0])[1])) / 2
    assert CETerm()(out, batch)["loss"].item() == pytest.approx(expected, rel=1e-6)
    gold_only = -math.log(softmax([1.0, 0.0, 0.0])[0])
    assert CETerm(teacher_label_for_unlabelled=False)(out, batch)["loss"].item() == pytest.approx(gold_only)
    # without an artefact the batch has no teacher keys: gold labels only, no error
    plain = {"labels": batch["labels"]}
    assert CETerm()(out, plain)["loss"].item() == pytest.approx(gold_only, rel=1e-6)


# ------------------------------------------------------------------------------ KD / latent / CRSD
def test_kd_term_masks_unannotated_rows():
    out, batch = make_out_batch()
    got = KDTerm(temperature=3.0)(out, batch)["loss"]
    ref = kd_loss(out["logits"][[0, 2]], batch["teacher_probs"][[0, 2]], temperature=3.0)
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)


def test_latent_term_masks_unannotated_rows():
    out, batch = make_out_batch()
    for distance in ("mse", "cosine", "infonce"):
        got = LatentTerm(distance=distance)(out, batch)["loss"]
        ref = latent_alignment(out["latent_pred"][[0, 2]], batch["latent_targets"][[0, 2]], distance)
        assert got.item() == pytest.approx(ref.item(), rel=1e-6), distance


def test_crsd_term_is_the_weighted_sum_of_its_sub_terms():
    out, batch = make_out_batch()
    term = CRSDTerm(temperature=0.1, contrastive_weight=0.5, kl_weight=2.0, aug_ce_weight=0.0)
    parts = term(out, batch)
    labels = training_labels(batch, True)  # the teacher's label on annotated rows without a gold one, as ce
    ref = crsd_losses(out["pooled"][[0, 2]], out["aug_pooled"][[0, 2]], out["logits"][[0, 2]],
                      out["aug_logits"][[0, 2]], labels[[0, 2]], temperature=0.1)
    for key in ("contrastive", "kl", "aug_ce"):
        assert parts[key].item() == pytest.approx(ref[key].item(), rel=1e-5), key
    assert parts["loss"].item() == pytest.approx(0.5 * ref["contrastive"].item() + 2.0 * ref["kl"].item(), rel=1e-5)


def test_crsd_aug_ce_uses_the_teacher_label_fallback_of_the_ce_term():
    out, batch = make_out_batch()
    annotated = batch["annotated"].bool()
    assert bool(((batch["labels"] < 0) & annotated).any())  # the fixture has an unlabelled annotated row
    gold_only = batch["labels"].masked_fill(~annotated, -1)
    with_teacher = training_labels(batch, True).masked_fill(~annotated, -1)
    aug_ce = CRSDTerm()(out, batch)["aug_ce"]
    assert aug_ce.item() == pytest.approx(cross_entropy(out["aug_logits"], with_teacher).item(), rel=1e-5)
    plain_ce = CRSDTerm(teacher_label_for_unlabelled=False)(out, batch)["aug_ce"]
    assert plain_ce.item() == pytest.approx(cross_entropy(out["aug_logits"], gold_only).item(), rel=1e-5)


# ------------------------------------------------------------------------------------- errors
def test_missing_annotations_name_the_term_and_the_fix():
    out, batch = make_out_batch()
    plain = {"labels": batch["labels"]}
    loss = WeightedLoss({"ce": CETerm(), "kd": KDTerm()})
    with pytest.raises(LossInputError, match=r"'kd'.*data\.annotations=<artefact dir>"):
        loss(out, plain)


def test_latent_term_without_extractor_says_to_set_one():
    out, batch = make_out_batch()
    del out["latent_pred"]
    with pytest.raises(LossInputError, match=r"'latent' needs a latent reasoning extractor: set extractor=mlp\|poly\|gat"):
        WeightedLoss({"latent": LatentTerm()})(out, batch)


def test_crsd_term_without_augmented_view_says_so():
    out, batch = make_out_batch()
    del out["aug_logits"], out["aug_pooled"]
    with pytest.raises(LossInputError, match="'crsd'.*with_augmented_view=True"):
        WeightedLoss({"crsd": CRSDTerm()})(out, batch)


# ------------------------------------------------------------------------------- WeightedLoss
def test_weighted_loss_total_and_logs():
    out, batch = make_out_batch()
    loss = WeightedLoss({"ce": CETerm(weight=1.0), "kd": KDTerm(weight=0.5),
                         "crsd": CRSDTerm(weight=2.0), "latent": LatentTerm(weight=0.1)})
    total, logs = loss(out, batch)
    parts = {n: loss.terms[n](out, batch)["loss"].item() for n in ("ce", "kd", "crsd", "latent")}
    expected = parts["ce"] + 0.5 * parts["kd"] + 2.0 * parts["crsd"] + 0.1 * parts["latent"]
    assert total.item() == pytest.approx(expected, rel=1e-6)
    assert set(logs) == {"ce", "kd", "crsd", "latent", "crsd/contrastive", "crsd/kl", "crsd/aug_ce"}
    assert logs["kd"].item() == pytest.approx(parts["kd"], rel=1e-6)  # logs are unweighted
    assert all(not v.requires_grad for v in logs.values())
    total.backward()
    assert out["logits"].grad is not None and out["latent_pred"].grad is not None


class _Exploding(LossTerm):
    needs_annotations = True
    needs_augmented_view = True

    def forward(self, out, batch):
        raise AssertionError("a zero-weight term must not be computed")


def test_zero_weight_terms_are_skipped():
    out, batch = make_out_batch()
    plain = {"labels": batch["labels"]}  # no artefact: kd / crsd / latent inputs are all missing
    loss = WeightedLoss({"ce": CETerm(), "kd": KDTerm(weight=0), "crsd": CRSDTerm(weight=0.0),
                         "boom": _Exploding(weight=0)})
    total, logs = loss(out, plain)
    assert set(logs) == {"ce"}
    assert total.item() == pytest.approx(CETerm()(out, plain)["loss"].item())
    assert loss.active_terms == ["ce"]
    assert not loss.needs_annotations and not loss.needs_augmented_view


def test_needs_flags_follow_the_active_terms():
    assert WeightedLoss({"ce": CETerm(), "kd": KDTerm()}).needs_annotations
    assert not WeightedLoss({"ce": CETerm(), "kd": KDTerm()}).needs_augmented_view
    loss = WeightedLoss({"ce": CETerm(), "crsd": CRSDTerm()})
    assert loss.needs_augmented_view and loss.needs_annotations
    loss.terms["crsd"].weight = 0.0
    assert not loss.needs_augmented_view and loss.active_terms == ["ce"]


def test_term_parameters_are_registered_and_none_terms_dropped():
    class Learned(LossTerm):
        def __init__(self, weight=1.0):
            super().__init__(weight)
            self.scale = torch.nn.Parameter(torch.tensor(2.0))

        def forward(self, out, batch):
            return {"loss": self.scale * out["logits"].sum()}

    loss = WeightedLoss({"ce": CETerm(), "learned": Learned(), "gone": None})
    assert list(loss.terms) == ["ce", "learned"]
    assert any(p is loss.terms["learned"].scale for p in loss.parameters())


def test_invalid_compositions_are_rejected():
    with pytest.raises(ValueError, match="no active term"):
        WeightedLoss({"ce": CETerm(weight=0)})
    with pytest.raises(TypeError, match="'ce'"):
        WeightedLoss({"ce": torch.nn.Linear(2, 2)})


def test_kd_term_rows_unlabelled_distils_the_pool_rows_only():
    """rows=unlabelled: the annotated rows without a gold label (row 2 of 4); labelled: row 0."""
    out, batch = make_out_batch()
    logits, teacher = out["logits"], batch["teacher_probs"]

    def kl_row(i, t=2.0):
        p = torch.softmax(teacher[i].log() / t, -1)
        q = torch.log_softmax(logits[i] / t, -1)
        return float((p * (p.log() - q)).sum()) * t * t

    assert KDTerm(rows="unlabelled")(out, batch)["loss"].item() == pytest.approx(kl_row(2), rel=1e-5)
    assert KDTerm(rows="labelled")(out, batch)["loss"].item() == pytest.approx(kl_row(0), rel=1e-5)
    assert KDTerm()(out, batch)["loss"].item() == pytest.approx((kl_row(0) + kl_row(2)) / 2, rel=1e-5)
    with pytest.raises(ValueError, match="rows must be one of"):
        KDTerm(rows="pool")
