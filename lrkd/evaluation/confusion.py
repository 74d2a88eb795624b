"""Metrics of hard grades, read from their confusion matrix: lrkd's one QWK and one macro-F1.

:class:`lrkd.evaluation.metrics.RelevanceMetrics` (the argmax over an epoch, summed over DDP
ranks), :func:`lrkd.evaluation.metrics.decision_metrics` (a tuned rule's grades) and
:meth:`lrkd.evaluation.decision.ThresholdRule.fit` (every candidate threshold) all compute them here,
from a [C, C] count matrix (rows = gold grade, columns = predicted grade), in float64. Numpy only:
serving reads the decision rules without torchmetrics.

Conventions (scikit-learn's, and torchmetrics'):
- F1 of a class = 2·TP / (gold + predicted); 0 for a class absent from both.
- Macro-F1 averages over the classes present in the gold labels or the predictions; 0 when none is.
- QWK is Cohen's kappa with quadratic weights; NaN when undefined (no rows, or gold and predictions
  all on one and the same grade: every ranking agrees by chance).
- Accuracy (= micro-F1 for one label per row) is 0 without rows.
"""
from __future__ import annotations

import numpy as np


def confusion(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """[C, C] counts of grades ``preds [N]`` against gold ``labels [N]`` (ints in [0, C)), rows = gold."""
    preds, labels = np.asarray(preds, np.int64), np.asarray(labels, np.int64)
    return np.bincount(labels * num_classes + preds, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def accuracy(cm: np.ndarray) -> float:
    """Share of rows on the diagonal; 0 without rows."""
    n = cm.sum()
    return float(np.trace(cm) / n) if n else 0.0


def class_f1(cm: np.ndarray) -> np.ndarray:
    """[C] float64 F1 of each class (0 for a class absent from gold and predictions)."""
    tp = np.diag(cm).astype(np.float64)
    total = (cm.sum(1) + cm.sum(0)).astype(np.float64)
    return np.divide(2 * tp, total, out=np.zeros_like(tp), where=total > 0)


def macro_f1(cm: np.ndarray) -> float:
    """Mean F1 over the classes present in the gold labels or the predictions (0 when none is)."""
    present = (cm.sum(1) + cm.sum(0)) > 0
    return float(class_f1(cm)[present].mean()) if present.any() else 0.0


def qwk(cm: np.ndarray) -> float:
    """Cohen's kappa with quadratic weights (as scikit-learn's ``cohen_kappa_score``); NaN when undefined."""
    cm = cm.astype(np.float64)
    n = cm.sum()
    if n == 0:
        return float("nan")
    idx = np.arange(cm.shape[0])
    w = (idx[:, None] - idx[None, :]) ** 2
    expected = np.outer(cm.sum(1), cm.sum(0)) / n
    denom = (w * expected).sum()
    return float("nan") if denom == 0 else float(1.0 - (w * cm).sum() / denom)


METRICS = {"qwk": qwk, "macro_f1": macro_f1, "accuracy": accuracy}


def grade_metric(preds: np.ndarray, labels: np.ndarray, num_classes: int, name: str) -> float:
    """``name`` (qwk | macro_f1 | accuracy) of grades ``preds [N]`` against ``labels [N]``."""
    return METRICS[name](confusion(preds, labels, num_classes))


__all__ = ["confusion", "accuracy", "class_f1", "macro_f1", "qwk", "METRICS", "grade_metric"]
