"""``ce``: cross-entropy with the gold label, or the teacher's hard label on the unlabelled pool."""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from lrkd.schema import UNLABELLED
from lrkd.losses.compose import LossTerm, mean_over_rows
from lrkd.losses.weights import ClassWeighted, weighted_row_mean


def cross_entropy(logits: Tensor, labels: Tensor, ignore_index: int = UNLABELLED,
                  label_smoothing: float = 0.0, weight: Tensor | None = None) -> Tensor:
    """Mean cross-entropy over the rows whose label is not ``ignore_index``.

    logits: [B, C] float; labels: [B] long class indices; weight: optional [C] class weights w:
    then the mean is sum_b w[y_b]·CE_b / sum_b w[y_b] (PyTorch's ``weight=`` convention; with label
    smoothing the smoothed row loss is weighted by its label's weight). Returns a scalar (nats); 0
    with a grad path when no row has a label.
    """
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"cross_entropy expects logits [B,C] and labels [B], got {tuple(logits.shape)} "
                         f"and {tuple(labels.shape)}")
    valid = labels != ignore_index
    safe_labels = torch.where(valid, labels, torch.zeros_like(labels))
    per_row = F.cross_entropy(logits.float(), safe_labels.long(), reduction="none",
                              label_smoothing=label_smoothing)
    if weight is None:
        return mean_over_rows(per_row, valid)
    row_weights = weight.to(per_row.device, per_row.dtype)[safe_labels.long()]
    return weighted_row_mean(per_row, row_weights, valid)


def ce_targets(labels: Tensor, teacher_probs: Tensor | None = None, annotated: Tensor | None = None) -> Tensor:
    """The labels CE trains on: gold ``labels [B]``; where a row is unlabelled (-1) but annotated,
    the teacher's hard label ``argmax teacher_probs [B,C]``. Rows with neither stay -1."""
    if teacher_probs is None or annotated is None:
        return labels
    fallback = (labels == UNLABELLED) & annotated.to(device=labels.device, dtype=torch.bool)
    return torch.where(fallback, teacher_probs.argmax(dim=-1).to(labels.dtype), labels)


def training_labels(batch: Mapping[str, Tensor], teacher_label_for_unlabelled: bool) -> Tensor:
    """The batch's gold labels [B], with the teacher's argmax on unlabelled annotated rows when
    ``teacher_label_for_unlabelled`` and the batch carries ``teacher_probs``/``annotated``."""
    labels = batch["labels"]
    if teacher_label_for_unlabelled and "teacher_probs" in batch and "annotated" in batch:
        labels = ce_targets(labels, batch["teacher_probs"], batch["annotated"])
    return labels


class CETerm(ClassWeighted, LossTerm):
    """Cross-entropy on ``out["logits"]`` against ``batch["labels"]``.

    teacher_label_for_unlabelled: rows with label -1 that the teacher annotated train on the
        teacher's argmax label (used only when the batch carries ``teacher_probs``/``annotated``).
    class_weight: null (default), ``balanced`` (from the train split's counts) or [C] weights;
        a row weighs the weight of the label it trains on (see :mod:`lrkd.losses.weights`).
    """

    def __init__(self, weight: float = 1.0, label_smoothing: float = 0.0,
                 teacher_label_for_unlabelled: bool = True, class_weight=None):
        super().__init__(weight)
        self.label_smoothing = float(label_smoothing)
        self.teacher_label_for_unlabelled = bool(teacher_label_for_unlabelled)
        self._init_class_weight(class_weight)

    def forward(self, out: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        logits = self.output(out, "logits", "the student module must return classifier logits")
        labels = training_labels(batch, self.teacher_label_for_unlabelled)
        return {"loss": cross_entropy(logits, labels, label_smoothing=self.label_smoothing,
                                      weight=self.class_weights())}

    def extra_repr(self) -> str:
        return (f"weight={self.weight}, label_smoothing={self.label_smoothing}, "
                f"teacher_label_for_unlabelled={self.teacher_label_for_unlabelled}, class_weight={self.class_weight}")
