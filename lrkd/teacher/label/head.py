"""The teacher's head: its readings of a pair -> a soft label over the grades, fitted on gold labels.

A frozen LLM's readings of a pair (the log-odds of each yes/no question of the panel, the expected
grade of a graded question, and optionally its decision state, reduced by PCA) are the features
x [n, F]. The head is a cumulative-link (ordinal logistic) model over the C grades:

    P(relevance >= k | x) = sigmoid(w . x - theta_k),   k = 1..C-1,  theta increasing,

fitted by maximum likelihood with an L2 penalty on w (features standardised on the fitting rows).
With one feature it is :class:`lrkd.teacher.label.calibration.OrdinalCalibration`. Fitting it on a label
budget's gold pairs is the cheapest supervised fine-tuning of the teacher there is: the LLM stays
frozen, its readings are computed once, and a head costs seconds, so every (fold, budget) cell of
the label-budget study gets a teacher fitted on that cell's gold pairs only.

:func:`cross_fit` predicts the fitting rows themselves out of fold (folds of whole queries), so a
student never distils a head's fit to its own training labels.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy.optimize import minimize
import pandas as pd
import torch
from scipy.special import expit

from lrkd.evaluation.metrics import RelevanceMetrics
from lrkd.teacher.label.calibration import expected_calibration_error

_EPS = 1e-12


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)), clipped away from 0 and 1."""
    p = np.clip(np.asarray(p, np.float64), 1e-6, 1 - 1e-6)
    return np.log(p) - np.log1p(-p)


@dataclass
class OrdinalHead:
    """P(relevance >= k) = sigmoid(w . z - theta_k), z = (x - mean) / std (see the module docstring).

    num_grades: C (grade 0 = most relevant, as ``data.labels``). l2: the penalty on w (per row)."""

    num_grades: int
    l2: float = 1e-2
    weights: list[float] = field(default_factory=list)
    thresholds: list[float] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)

    def _probs(self, z: np.ndarray, w: np.ndarray, theta: np.ndarray) -> np.ndarray:
        """[n, C] probabilities of relevance levels r = 0 (least) .. C-1 (most)."""
        above = expit((z @ w)[:, None] - theta[None, :])
        upper = np.concatenate([np.ones((len(z), 1)), above], axis=1)
        lower = np.concatenate([above, np.zeros((len(z), 1))], axis=1)
        return np.clip(upper - lower, _EPS, None)

    @staticmethod
    def _theta(params: np.ndarray) -> np.ndarray:
        first, steps = params[0], params[1:]
        return np.concatenate([[first], first + np.cumsum(np.exp(steps))])

    def fit(self, features: np.ndarray, grades: np.ndarray) -> "OrdinalHead":
        """Maximum likelihood on (features [n, F], grade index [n]); returns self."""
        x = np.asarray(features, np.float64)
        y = np.asarray(grades, np.int64)
        if x.ndim != 2 or len(x) != len(y) or not len(y):
            raise ValueError(f"need features [n, F] and n grades (n > 0), got {x.shape} and {y.shape}")
        if y.min() < 0 or y.max() >= self.num_grades:
            raise ValueError(f"grades must be in 0..{self.num_grades - 1}")
        mean, std = x.mean(axis=0), x.std(axis=0)
        std[std < 1e-8] = 1.0
        z = (x - mean) / std
        r = (self.num_grades - 1) - y
        f, c = x.shape[1], self.num_grades

        def objective(params):
            w, theta = params[:f], self._theta(params[f:])
            p = self._probs(z, w, theta)
            return -np.log(p[np.arange(len(z)), r]).mean() + self.l2 * float(w @ w)

        start = np.concatenate([np.zeros(f), [-1.0], np.zeros(c - 2)])
        result = minimize(objective, start, method="L-BFGS-B")
        self.weights = [float(v) for v in result.x[:f]]
        self.thresholds = [float(v) for v in self._theta(result.x[f:])]
        self.mean, self.std = [float(v) for v in mean], [float(v) for v in std]
        return self

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """[n, F] -> [n, C] soft labels in grade order (grade 0 = most relevant)."""
        z = (np.asarray(features, np.float64) - np.asarray(self.mean)) / np.asarray(self.std)
        probs = self._probs(z, np.asarray(self.weights), np.asarray(self.thresholds))[:, ::-1]
        return (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)

    def to_dict(self) -> dict:
        return {"method": "ordinal_head", "num_grades": self.num_grades, "l2": self.l2, "weights": self.weights,
                "thresholds": self.thresholds, "mean": self.mean, "std": self.std}


def query_folds(query_ids: Sequence, k: int, seed: int = 0) -> np.ndarray:
    """[n] fold index 0..k-1 of each row, whole queries to a fold (seeded, sizes balanced by rows)."""
    _, codes = np.unique(np.asarray(query_ids).astype(str), return_inverse=True)
    sizes = np.bincount(codes)
    order = np.random.default_rng(int(seed)).permutation(len(sizes))
    load = np.zeros(int(k))
    fold_of_query = np.empty(len(sizes), dtype=np.int64)
    for q in order:
        f = int(np.argmin(load))
        fold_of_query[q] = f
        load[f] += sizes[q]
    return fold_of_query[codes]


def cross_fit(features: np.ndarray, grades: np.ndarray, query_ids: Sequence, fit_rows: np.ndarray, *,
              num_grades: int, l2: float = 1e-2, folds: int = 5, seed: int = 0) -> tuple[np.ndarray, OrdinalHead]:
    """Soft labels [n, C] for every row: the fitting rows (``fit_rows``, with gold grades) out of
    fold, by heads fitted on the other folds' queries; every other row by the head fitted on all
    fitting rows (returned too)."""
    x = np.asarray(features, np.float64)
    y = np.asarray(grades, np.int64)
    fit_rows = np.asarray(fit_rows, dtype=np.int64)
    if len(fit_rows) == 0:
        raise ValueError("the teacher head needs gold-labelled rows to fit on")
    head = OrdinalHead(num_grades, l2).fit(x[fit_rows], y[fit_rows])
    out = head.predict_proba(x)
    qids = np.asarray(query_ids).astype(str)[fit_rows]
    k = min(int(folds), len(np.unique(qids)))
    if k >= 2:
        fold = query_folds(qids, k, seed)
        for f in range(k):
            held = fold == f
            part = OrdinalHead(num_grades, l2).fit(x[fit_rows[~held]], y[fit_rows[~held]])
            out[fit_rows[held]] = part.predict_proba(x[fit_rows[held]])
    return out, head


def pca_projection(latents: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(mean [D], components [D, dim] scaled so the projected coordinates have unit mean variance,
    explained variance ratio) of the rows of ``latents`` [n, D] (numpy SVD)."""
    mean = latents.mean(axis=0)
    centred = latents - mean
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    dim = min(int(dim), vt.shape[0])
    variance = sv ** 2 / max(len(latents) - 1, 1)
    scale = np.sqrt(variance[:dim].mean())
    return mean, vt[:dim].T / scale, float(variance[:dim].sum() / variance.sum())


def reading_metrics(probs: np.ndarray, frame, rows: np.ndarray, label_set, n_bins: int) -> dict:
    """macro-F1, QWK, AUC, nDCG@10, accuracy (:class:`lrkd.evaluation.metrics.RelevanceMetrics`) and ECE of
    soft labels ``probs`` [n, C] on the labelled dataset ``rows``."""
    labels = frame["label"].to_numpy()[rows]
    metrics = RelevanceMetrics(label_set, prefix="")
    metrics.update(torch.as_tensor(probs, dtype=torch.float32), torch.as_tensor(labels, dtype=torch.long),
                   torch.as_tensor(pd.factorize(frame["query_id"])[0][rows], dtype=torch.long))
    values = metrics.compute()
    out = {k: float(values[k]) for k in ("macro_f1", "qwk", "auc", "ndcg@10", "accuracy")}
    out["ece"] = expected_calibration_error(probs, labels, n_bins)
    out["pairs"] = int(len(rows))
    return out


__all__ = ["OrdinalHead", "cross_fit", "query_folds", "logit", "pca_projection", "reading_metrics"]
