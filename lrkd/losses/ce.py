"""``ce``: cross-entropy with the gold label, or the teacher's hard label on the unlabelled pool."""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from lrkd.data.schema import UNLABELLED
from lrkd.losses.compose import LossTerm, masked_mean


def cross_entropy(logits: Tensor, labels: Tensor, ignore_index: int = UNLABELLED,
                  label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy over the rows whose label is not ``ignore_index``.

    logits: [B, C] float; labels: [B] long class indices. Returns a scalar (nats); 0 with a grad
    path when no row has a label.
    """
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"cross_entropy expects logits [B,C] and labels [B], got {tuple(logits.shape)} "
                         f"and {tuple(labels.shape)}")
    valid = labels != ignore_index
    safe_labels = torch.where(valid, labels, torch.zeros_like(labels))
    per_row = F.cross_entropy(logits.float(), safe_labels.long(), reduction="none",
                              label_smoothing=label_smoothing)
    return masked_mean(per_row, valid)


def ce_targets(labels: Tensor, teacher_probs: Tensor | None = None, annotated: Tensor | None = None) -> Tensor:
    """The labels CE trains on: gold ``labels [B]``; where a row is unlabelled (-1) but annotated,
    the teacher's hard label ``argmax teacher_probs [B,C]``. Rows with neither stay -1."""
    if teacher_probs is None or annotated is None:
        return labels
    fallback = (labels == UNLABELLED) & annotated.to(device=labels.device, dtype=torch.bool)
    return torch.where(fallback, teacher_probs.argmax(dim=-1).to(labels.dtype), labels)


class CETerm(LossTerm):
    """Cross-entropy on ``out["logits"]`` against ``batch["labels"]``.

    teacher_label_for_unlabelled: rows with label -1 that the teacher annotated train on the
        teacher's argmax label (used only when the batch carries ``teacher_probs``/``annotated``).
    """

    def __init__(self, weight: float = 1.0, label_smoothing: float = 0.0,
                 teacher_label_for_unlabelled: bool = True):
        super().__init__(weight)
        self.label_smoothing = float(label_smoothing)
        self.teacher_label_for_unlabelled = bool(teacher_label_for_unlabelled)

    def forward(self, out: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        logits = self.output(out, "logits", "the student module must return classifier logits")
        labels = batch["labels"]
        if self.teacher_label_for_unlabelled and "teacher_probs" in batch and "annotated" in batch:
            labels = ce_targets(labels, batch["teacher_probs"], batch["annotated"])
        return {"loss": cross_entropy(logits, labels, label_smoothing=self.label_smoothing)}

    def extra_repr(self) -> str:
        return (f"weight={self.weight}, label_smoothing={self.label_smoothing}, "
                f"teacher_label_for_unlabelled={self.teacher_label_for_unlabelled}")
