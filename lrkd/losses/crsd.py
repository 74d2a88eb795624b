"""``crsd``: contrastive reasoning self-distillation between the standard view x and the
reasoning-augmented view x⁺ = ``[CLS] q [SEP] p [SEP] r [SEP]`` of the same student."""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from lrkd.schema import UNLABELLED
from lrkd.losses.ce import cross_entropy, training_labels
from lrkd.losses.compose import LossTerm, mean_over_rows
from lrkd.losses.infonce import info_nce
from lrkd.losses.kd import kl_per_row
from lrkd.losses.weights import ClassWeighted

_AUG_VIEW_FIX = ("call the student with with_augmented_view=True (WeightedLoss.needs_augmented_view says "
                 "when) and give the batch the aug_* inputs")


def crsd_losses(pooled: Tensor, aug_pooled: Tensor, logits: Tensor, aug_logits: Tensor, labels: Tensor,
                temperature: float = 0.05, stop_gradient: bool = True,
                mask: Tensor | None = None, class_weight: Tensor | None = None) -> dict[str, Tensor]:
    """The three CRSD sub-losses, each a masked mean over rows (``mask [B] bool``, all when ``None``).

    pooled, aug_pooled: [B, H] h and h⁺; logits, aug_logits: [B, C]; labels: [B] long, -1 = none.
    Returns ``{"contrastive": InfoNCE(h, h⁺) at temperature τ with in-batch negatives,
    "kl": KL(p(·|x⁺) ‖ p(·|x)) with the augmented view as the target (detached when stop_gradient),
    "aug_ce": CE(aug_logits, labels) over the labelled valid rows}``; each a scalar in nats.
    class_weight: optional [C] class weights of ``aug_ce`` (the one sub-loss with labels).
    """
    if logits.shape != aug_logits.shape or labels.shape != logits.shape[:1]:
        raise ValueError(f"crsd_losses: logits {tuple(logits.shape)}, aug_logits {tuple(aug_logits.shape)} "
                         f"and labels {tuple(labels.shape)} must be [B,C], [B,C], [B]")
    contrastive = info_nce(pooled, aug_pooled, temperature, mask)
    target_logits = aug_logits.detach() if stop_gradient else aug_logits
    kl = mean_over_rows(kl_per_row(F.log_softmax(target_logits.float(), dim=-1),
                                F.log_softmax(logits.float(), dim=-1)), mask)
    if mask is not None:
        labels = torch.where(mask.to(device=labels.device, dtype=torch.bool), labels,
                             torch.full_like(labels, UNLABELLED))
    aug_ce = cross_entropy(aug_logits, labels, ignore_index=UNLABELLED, weight=class_weight)
    return {"contrastive": contrastive, "kl": kl, "aug_ce": aug_ce}


class CRSDTerm(ClassWeighted, LossTerm):
    """CRSD over the rows whose augmented view carries the teacher's rationales (``has_rationale``;
    ``annotated`` when the batch has no such key).

    ``loss = contrastive_weight · contrastive + kl_weight · kl + aug_ce_weight · aug_ce``;
    the three sub-terms are logged unweighted. class_weight (null, ``balanced`` or [C]) weights the
    ``aug_ce`` rows by their label; the contrastive and KL view-matching sub-losses stay unweighted.
    teacher_label_for_unlabelled: as the ``ce`` term (:func:`lrkd.losses.ce.training_labels`), an
    annotated pool row without a gold label trains ``aug_ce`` on the teacher's argmax label.
    """

    needs_annotations = True
    needs_augmented_view = True

    def __init__(self, weight: float = 1.0, temperature: float = 0.05, contrastive_weight: float = 1.0,
                 kl_weight: float = 1.0, aug_ce_weight: float = 1.0, stop_gradient: bool = True,
                 class_weight=None, teacher_label_for_unlabelled: bool = True):
        super().__init__(weight)
        self.teacher_label_for_unlabelled = bool(teacher_label_for_unlabelled)
        self._init_class_weight(class_weight)
        self.temperature = float(temperature)
        self.sub_weights = {"contrastive": float(contrastive_weight), "kl": float(kl_weight),
                            "aug_ce": float(aug_ce_weight)}
        self.stop_gradient = bool(stop_gradient)

    def forward(self, out: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        # rows whose augmented view carries a rationale (an artefact may hold rationales for a subset)
        annotated = batch["has_rationale"] if "has_rationale" in batch else self.batch_annotation(batch, "annotated")
        parts = crsd_losses(
            pooled=self.output(out, "pooled", "the student module must return the pooled vector"),
            aug_pooled=self.output(out, "aug_pooled", _AUG_VIEW_FIX),
            logits=self.output(out, "logits", "the student module must return classifier logits"),
            aug_logits=self.output(out, "aug_logits", _AUG_VIEW_FIX),
            labels=training_labels(batch, self.teacher_label_for_unlabelled), temperature=self.temperature, stop_gradient=self.stop_gradient,
            mask=annotated.to(torch.bool), class_weight=self.class_weights())
        loss = sum(self.sub_weights[k] * v for k, v in parts.items())
        return {"loss": loss, **parts}

    def extra_repr(self) -> str:
        return (f"weight={self.weight}, temperature={self.temperature}, sub_weights={self.sub_weights}, "
                f"stop_gradient={self.stop_gradient}, class_weight={self.class_weight}")
