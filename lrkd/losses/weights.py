"""Class weights for imbalanced grades, and the ``ClassWeighted`` mixin of the terms that use them.

A term's ``class_weight`` config is one of
    null        no weighting (the default: every row weighs 1);
    balanced    w_c = n / (C · n_c) from the train split's gold label counts n_c (n = sum_c n_c),
                as scikit-learn's ``compute_class_weight("balanced")``; a class absent from the
                train split gets weight 1;
    [w_0, ...]  given, one weight per grade in label-set order.
The student module hands the train split's counts to the loss (``WeightedLoss.set_class_counts``)
before training; ``balanced`` resolves then.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from lrkd.schema import UNLABELLED
from lrkd.losses.compose import LossInputError, mean_over_rows


def balanced_class_weights(counts: Sequence[int]) -> np.ndarray:
    """counts: [C] train label counts -> [C] float64 weights n / (C · n_c) (1 where n_c = 0).

    Equals ``sklearn.utils.class_weight.compute_class_weight("balanced", ...)`` on the labels the
    counts come from, when every class occurs (scikit-learn refuses an absent class)."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or len(counts) < 2 or (counts < 0).any():
        raise ValueError(f"class counts must be [C] non-negative numbers, got {counts.tolist()}")
    present = counts > 0
    if not present.any():
        raise ValueError("class counts are all zero: the train split has no labelled row")
    weights = np.ones_like(counts)
    weights[present] = counts.sum() / (len(counts) * counts[present])
    return weights


def resolve_class_weight(spec, counts: Sequence[int] | None, num_classes: int | None = None) -> np.ndarray | None:
    """A ``class_weight`` config (None, "balanced" or a list) -> [C] float64 weights, or None."""
    if spec is None or (isinstance(spec, str) and spec.lower() in ("none", "null", "")):
        return None
    if isinstance(spec, str):
        if spec != "balanced":
            raise ValueError(f"class_weight must be null, 'balanced' or a list of weights, got {spec!r}")
        if counts is None:
            raise ValueError("class_weight=balanced needs the train split's label counts "
                             "(data_spec['train_class_counts']), and none were given")
        weights = balanced_class_weights(counts)
    else:
        weights = np.asarray(list(spec), dtype=np.float64)
        if weights.ndim != 1 or (weights < 0).any() or not np.isfinite(weights).all() or weights.sum() <= 0:
            raise ValueError(f"class_weight must be [C] non-negative finite weights, got {list(spec)}")
    if num_classes is not None and len(weights) != num_classes:
        raise ValueError(f"class_weight has {len(weights)} entries, the label set {num_classes} grades")
    return weights


def weighted_row_mean(values: Tensor, row_weights: Tensor | None, mask: Tensor | None = None) -> Tensor:
    """sum_b m_b w_b v_b / sum_b m_b w_b over ``values [B]`` with ``row_weights [B]`` (None: plain
    :func:`mean_over_rows`) and ``mask [B] bool``; 0 with a grad path when no row (or weight) is left.
    With w_b = w[y_b] this is PyTorch's ``cross_entropy(weight=w, reduction="mean")`` convention."""
    if row_weights is None:
        return mean_over_rows(values, mask)
    w = row_weights.to(device=values.device, dtype=values.dtype)
    if mask is not None:
        w = torch.where(mask.to(device=values.device, dtype=torch.bool), w, torch.zeros_like(w))
    kept = torch.where(w > 0, values * w, torch.zeros_like(values))
    return kept.sum() / w.sum().clamp_min(torch.finfo(values.dtype).tiny)


class ClassWeighted:
    """Mixin for a :class:`~lrkd.losses.compose.LossTerm` with a ``class_weight`` option.

    Call ``_init_class_weight(spec)`` in ``__init__``; the loss's owner calls
    ``set_class_counts(counts [C])``; ``self.class_weights()`` is then the [C] tensor or None.
    The weights live in a non-persistent buffer (recomputed from the config and counts on load)."""

    def _init_class_weight(self, spec) -> None:
        if spec is not None and not isinstance(spec, str):
            spec = [float(x) for x in spec]
        self.class_weight = spec
        resolved = None if isinstance(spec, str) else resolve_class_weight(spec, None)
        self.register_buffer("_class_weight", None if resolved is None else torch.tensor(resolved, dtype=torch.float32),
                             persistent=False)

    def set_class_counts(self, counts: Sequence[int] | None, num_classes: int | None = None) -> None:
        if self.weight == 0:
            return
        resolved = resolve_class_weight(self.class_weight, counts, num_classes)
        self._class_weight = None if resolved is None else torch.tensor(resolved, dtype=torch.float32)

    def class_weights(self) -> Tensor | None:
        """[C] float32 class weights, or None when the term does not weight classes."""
        if self.class_weight is not None and self._class_weight is None:
            raise LossInputError(f"loss term {self.name!r}: class_weight={self.class_weight!r} is not resolved: "
                                 "the train split's label counts were never given (WeightedLoss.set_class_counts)")
        return self._class_weight

    def label_row_weights(self, labels: Tensor) -> Tensor | None:
        """[B] weight of each row's label (``labels [B]``, -1 rows get 0), or None without weights."""
        w = self.class_weights()
        if w is None:
            return None
        w = w.to(labels.device)
        valid = labels != UNLABELLED
        return w[labels.clamp_min(0).long()] * valid.to(w.dtype)


__all__ = ["balanced_class_weights", "resolve_class_weight", "weighted_row_mean", "ClassWeighted"]
