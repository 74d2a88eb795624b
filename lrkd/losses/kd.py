"""``kd``: soft-label knowledge distillation, T² · KL(softmax(t/T) ‖ softmax(s/T)), t = log p_T."""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from lrkd.losses.compose import LossTerm, mean_over_rows
from lrkd.losses.weights import ClassWeighted, weighted_row_mean


def kl_per_row(target_log_probs: Tensor, log_probs: Tensor) -> Tensor:
    """KL(p ‖ q) per row, from log p (the target) and log q, both [B, C]. Returns [B] (nats)."""
    return F.kl_div(log_probs, target_log_probs, reduction="none", log_target=True).sum(dim=-1)


def kd_loss(student_logits: Tensor, teacher_probs: Tensor, temperature: float = 2.0,
            mask: Tensor | None = None, row_weights: Tensor | None = None) -> Tensor:
    """Hinton distillation loss, masked mean over rows.

    student_logits: [B, C] s; teacher_probs: [B, C] p_T (rows sum to 1), read as logits t = log p_T;
    mask: [B] bool, rows to use (all when ``None``). Returns the scalar
    ``T² · mean_b KL(softmax(t_b / T) ‖ softmax(s_b / T))``; 0 with a grad path when no row is valid.
    The T² factor keeps the gradient scale independent of T.

    The target softmax(log p_T / T) = p_T^(1/T) / sum_c p_T(c)^(1/T) is computed from the
    probabilities themselves, and the KL with ``xlogy`` (0 · log 0 = 0): a class the teacher gives
    probability 0 keeps target 0 at any T. (Flooring p_T at 1e-8 before the log would give such a
    class 1e-2 of the mass before normalising at T = 4: the floor, not the teacher, would set the tail.) row_weights: optional [B] row weights
    w_b: then the mean is sum_b w_b KL_b / sum_b w_b over the valid rows.
    """
    if student_logits.shape != teacher_probs.shape:
        raise ValueError(f"kd_loss: student logits {tuple(student_logits.shape)} and teacher probs "
                         f"{tuple(teacher_probs.shape)} must both be [B, C] with the same C")
    if temperature <= 0:
        raise ValueError(f"kd_loss: temperature must be > 0, got {temperature}")
    powered = teacher_probs.float().clamp_min(0.0).pow(1.0 / temperature)
    total = powered.sum(dim=-1, keepdim=True)
    # a row without any mass (never a valid teacher row) gets a uniform target, so it stays finite
    target = torch.where(total > 0, powered / total.clamp_min(torch.finfo(powered.dtype).tiny),
                         torch.full_like(powered, 1.0 / powered.shape[-1]))
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    per_row = (torch.special.xlogy(target, target) - target * student).sum(dim=-1)
    if row_weights is None:
        return temperature ** 2 * mean_over_rows(per_row, mask)
    return temperature ** 2 * weighted_row_mean(per_row, row_weights, mask)


class KDTerm(ClassWeighted, LossTerm):
    """KD from ``batch["teacher_probs"]`` onto ``out["logits"]`` over the annotated rows.

    class_weight: null (default), ``balanced`` or [C] weights w: a row weighs its expected class
    weight under the teacher, w_b = sum_c p_T(c|b)·w_c (defined on unlabelled pool rows too).
    rows: ``all`` (default) the annotated rows; ``unlabelled`` only those without a gold label (the
    transfer pool: distil where the student has no grade of its own); ``labelled`` only those with one."""

    needs_annotations = True
    ROWS = ("all", "unlabelled", "labelled")

    def __init__(self, weight: float = 1.0, temperature: float = 2.0, class_weight=None, rows: str = "all"):
        super().__init__(weight)
        self.temperature = float(temperature)
        self._init_class_weight(class_weight)
        if rows not in self.ROWS:
            raise ValueError(f"kd: rows must be one of {self.ROWS}, got {rows!r}")
        self.rows = rows

    def forward(self, out: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        teacher_probs = self.batch_annotation(batch, "teacher_probs")
        annotated = self.batch_annotation(batch, "annotated")
        logits = self.output(out, "logits", "the student module must return classifier logits")
        w = self.class_weights()
        row_weights = None if w is None else teacher_probs.float() @ w.to(teacher_probs.device)
        mask = annotated.to(torch.bool)
        if self.rows != "all":
            labelled = batch["labels"].to(mask.device) >= 0
            mask = mask & (labelled if self.rows == "labelled" else ~labelled)
        return {"loss": kd_loss(logits, teacher_probs, self.temperature, mask=mask, row_weights=row_weights)}

    def extra_repr(self) -> str:
        return (f"weight={self.weight}, temperature={self.temperature}, class_weight={self.class_weight}, "
                f"rows={self.rows}")
