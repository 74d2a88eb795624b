"""``ordinal``: a loss term that uses the grades' order, on the classifier's existing logits.

Grades are class indices 0..C-1 in label-set order (0 = most relevant), so the order is the index
order; no new head is needed and export/serving are unchanged. With p = softmax(logits) [B, C]:

``cumulative`` (cumulative-link / CORAL-style): for each of the C-1 cut points k = 0..C-2,
    F_k = P(grade <= k) = sum_{c<=k} p_c is a binary prediction of "at least as relevant as k",
    with target t_k = 1[y <= k]; the row loss is the mean over k of the binary cross-entropy
    -[t_k log F_k + (1 - t_k) log(1 - F_k)], computed in log space (logsumexp of logit slices).
``expected_grade``: regression of the expected grade on the gold grade, both scaled to [0, 1]:
    ((sum_c p_c · c - y) / (C - 1))².

Use it beside ``ce`` (``conf/loss/ordinal.yaml``: ce + ordinal), or alone.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from lrkd.schema import UNLABELLED
from lrkd.losses.ce import training_labels
from lrkd.losses.compose import LossTerm
from lrkd.losses.weights import ClassWeighted, weighted_row_mean

ORDINAL_KINDS = ("cumulative", "expected_grade")


def _check(logits: Tensor, labels: Tensor) -> None:
    if logits.dim() != 2 or logits.shape[1] < 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"ordinal losses expect logits [B,C>=2] and labels [B], got {tuple(logits.shape)} "
                         f"and {tuple(labels.shape)}")


def cumulative_link_per_row(logits: Tensor, labels: Tensor) -> Tensor:
    """logits [B, C], labels [B] long in [0, C) (other values give a finite, meaningless row) ->
    [B] mean over the C-1 cut points of the binary cross-entropy of F_k = P(grade <= k) (nats)."""
    _check(logits, labels)
    x = logits.float()
    c = x.shape[1]
    total = torch.logsumexp(x, dim=-1)
    log_le = torch.stack([torch.logsumexp(x[:, : k + 1], dim=-1) for k in range(c - 1)], dim=-1) - total[:, None]
    log_gt = torch.stack([torch.logsumexp(x[:, k + 1:], dim=-1) for k in range(c - 1)], dim=-1) - total[:, None]
    cuts = torch.arange(c - 1, device=x.device)
    target = (labels.long()[:, None] <= cuts[None, :]).to(x.dtype)  # [B, C-1]
    return -(target * log_le + (1.0 - target) * log_gt).mean(dim=-1)


def expected_grade_per_row(logits: Tensor, labels: Tensor) -> Tensor:
    """logits [B, C], labels [B] -> [B] squared error ((E_p[grade] - y) / (C-1))², in [0, 1]."""
    _check(logits, labels)
    c = logits.shape[1]
    grades = torch.arange(c, device=logits.device, dtype=torch.float32)
    expected = logits.float().softmax(dim=-1) @ grades
    return ((expected - labels.float()) / (c - 1)) ** 2


def ordinal_loss(logits: Tensor, labels: Tensor, kind: str = "cumulative", weight: Tensor | None = None) -> Tensor:
    """Mean of the ``kind`` row loss over the labelled rows (label -1 skipped), each row weighted by
    its label's class weight when ``weight [C]`` is given. Scalar; 0 with a grad path without rows."""
    if kind not in ORDINAL_KINDS:
        raise ValueError(f"ordinal loss kind must be one of {ORDINAL_KINDS}, got {kind!r}")
    valid = labels != UNLABELLED
    safe = torch.where(valid, labels, torch.zeros_like(labels)).long()
    per_row = (cumulative_link_per_row if kind == "cumulative" else expected_grade_per_row)(logits, safe)
    row_weights = None if weight is None else weight.to(per_row.device, per_row.dtype)[safe]
    return weighted_row_mean(per_row, row_weights, valid)


class OrdinalTerm(ClassWeighted, LossTerm):
    """An order-aware term on ``out["logits"]`` against ``batch["labels"]`` (module docstring).

    kind: ``cumulative`` | ``expected_grade``; teacher_label_for_unlabelled and class_weight as in
    :class:`~lrkd.losses.ce.CETerm`.
    """

    def __init__(self, weight: float = 1.0, kind: str = "cumulative", teacher_label_for_unlabelled: bool = True,
                 class_weight=None):
        super().__init__(weight)
        if kind not in ORDINAL_KINDS:
            raise ValueError(f"OrdinalTerm: kind must be one of {ORDINAL_KINDS}, got {kind!r}")
        self.kind = kind
        self.teacher_label_for_unlabelled = bool(teacher_label_for_unlabelled)
        self._init_class_weight(class_weight)

    def forward(self, out: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        logits = self.output(out, "logits", "the student module must return classifier logits")
        labels = training_labels(batch, self.teacher_label_for_unlabelled)
        return {"loss": ordinal_loss(logits, labels, self.kind, self.class_weights())}

    def extra_repr(self) -> str:
        return f"weight={self.weight}, kind={self.kind!r}, class_weight={self.class_weight}"


__all__ = ["ORDINAL_KINDS", "cumulative_link_per_row", "expected_grade_per_row", "ordinal_loss", "OrdinalTerm"]
