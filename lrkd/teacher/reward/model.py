"""A learned reward model for candidate pools without gold labels: ridge regression heads on frozen
embeddings (one per reward dimension, as the first stage of ArmoRM), and optionally a linear
Bradley-Terry scalar reward on the same embeddings.

Shapes: X [N, D] float (a frozen encoder's embedding of prompt + completion), Y [N, K] float (the
rule scores of K dimensions), groups [N] (the prompt each candidate answers). Quality is the
held-out *pair accuracy*: over the held-out prompts' candidate pairs whose true scores differ, the
share the predictions order the same way (0.5 = chance).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression, Ridge


def group_split(groups: Sequence, heldout_fraction: float, seed: int) -> np.ndarray:
    """[N] bool: True for the rows of a seeded ``heldout_fraction`` of the groups (whole prompts)."""
    codes, uniques = pd.factorize(pd.Series([str(g) for g in groups]))
    n_out = int(round(len(uniques) * float(heldout_fraction)))
    if len(uniques) >= 2:
        n_out = min(max(n_out, 1), len(uniques) - 1)
    chosen = np.random.default_rng(seed).permutation(len(uniques))[:n_out]
    return np.isin(codes, chosen)


def pair_accuracy(pred: np.ndarray, true: np.ndarray, groups: Sequence, eps: float = 1e-9) -> tuple[float, int]:
    """(accuracy, pairs): within each group, over candidate pairs with |true_i - true_j| > eps, the
    share with sign(pred_i - pred_j) == sign(true_i - true_j) (a predicted tie counts half). NaN
    without any such pair."""
    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    codes = pd.factorize(pd.Series([str(g) for g in groups]))[0]
    hits, total = 0.0, 0
    for g in np.unique(codes):
        idx = np.flatnonzero(codes == g)
        dt = true[idx][:, None] - true[idx][None, :]
        dp = pred[idx][:, None] - pred[idx][None, :]
        upper = np.triu(np.abs(dt) > eps, k=1)
        total += int(upper.sum())
        agree = np.sign(dt) == np.sign(dp)
        hits += float((agree & upper).sum()) + 0.5 * float(((dp == 0) & upper).sum())
    return (hits / total if total else float("nan")), total


class RidgeRewardModel:
    """One ridge regression head per dimension on frozen embeddings (standardised features)."""

    def __init__(self, dimensions: Sequence[str], alpha: float = 1.0):
        self.dimensions, self.alpha = list(dimensions), float(alpha)
        self.heads: list[Ridge] = []
        self.mean = self.scale = None

    def _x(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, np.float64) - self.mean) / self.scale

    def fit(self, x: np.ndarray, y: np.ndarray) -> "RidgeRewardModel":
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if y.ndim != 2 or y.shape != (len(x), len(self.dimensions)):
            raise ValueError(f"targets must be [N={len(x)}, K={len(self.dimensions)}], got {y.shape}")
        self.mean, self.scale = x.mean(axis=0), np.maximum(x.std(axis=0), 1e-8)
        self.heads = [Ridge(alpha=self.alpha).fit(self._x(x), y[:, k]) for k in range(y.shape[1])]
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        """[N, K] predicted dimension scores."""
        if not self.heads:
            raise RuntimeError("RidgeRewardModel.predict before fit")
        xs = self._x(x)
        return np.stack([h.predict(xs) for h in self.heads], axis=1)


def evaluate_ridge(x: np.ndarray, y: np.ndarray, groups: Sequence, dimensions: Sequence[str], *, alpha: float = 1.0,
                   heldout_fraction: float = 0.25, seed: int = 0) -> tuple[RidgeRewardModel, dict[str, float]]:
    """Fit on the other prompts, score the held-out ones: (model fitted on every row,
    {"<dim>/pair_accuracy", "<dim>/pairs", "<dim>/r2"})."""
    y = np.asarray(y, np.float64)
    out_rows = group_split(groups, heldout_fraction, seed)
    held_groups = [g for g, o in zip(groups, out_rows) if o]
    model = RidgeRewardModel(dimensions, alpha).fit(x[~out_rows], y[~out_rows])
    pred = model.predict(x[out_rows])
    report: dict[str, float] = {}
    for k, dim in enumerate(dimensions):
        acc, n = pair_accuracy(pred[:, k], y[out_rows, k], held_groups)
        resid = ((pred[:, k] - y[out_rows, k]) ** 2).sum()
        var = ((y[out_rows, k] - y[out_rows, k].mean()) ** 2).sum()
        report[f"{dim}/pair_accuracy"] = round(acc, 4) if n else float("nan")
        report[f"{dim}/pairs"] = int(n)
        report[f"{dim}/r2"] = round(1.0 - resid / var, 4) if var > 0 else float("nan")
    return RidgeRewardModel(dimensions, alpha).fit(x, y), report


def cross_fitted(x: np.ndarray, y: np.ndarray, groups: Sequence, dimensions: Sequence[str], *, alpha: float = 1.0,
                 folds: int = 5, seed: int = 0) -> np.ndarray:
    """[N, K] out-of-fold predictions (folds of whole prompts): every candidate scored by a model
    that never saw its prompt, as on a pool without gold labels."""
    codes, uniques = pd.factorize(pd.Series([str(g) for g in groups]))
    fold_of = np.random.default_rng(seed).permutation(len(uniques)) % max(int(folds), 2)
    out = np.zeros((len(codes), len(dimensions)))
    for f in np.unique(fold_of):
        test = fold_of[codes] == f
        out[test] = RidgeRewardModel(dimensions, alpha).fit(x[~test], y[~test]).predict(x[test])
    return out


def bradley_terry(x: np.ndarray, combined: np.ndarray, groups: Sequence, *, heldout_fraction: float = 0.25,
                  c: float = 1.0, seed: int = 0) -> dict[str, float]:
    """A linear scalar reward r(x) = w·x fitted with the Bradley-Terry likelihood (logistic regression
    on the embedding differences of every within-prompt pair ordered by ``combined``); its held-out
    pair accuracy against ``combined``."""
    x, combined = np.asarray(x, np.float64), np.asarray(combined, np.float64)
    codes = pd.factorize(pd.Series([str(g) for g in groups]))[0]
    out_rows = group_split(groups, heldout_fraction, seed)
    mean, scale = x[~out_rows].mean(axis=0), np.maximum(x[~out_rows].std(axis=0), 1e-8)
    xs = (x - mean) / scale
    diffs = []
    for g in np.unique(codes[~out_rows]):
        idx = np.flatnonzero(codes == g)
        for a in idx:
            for b in idx:
                if combined[a] > combined[b] + 1e-9:
                    diffs.append(xs[a] - xs[b])
    if not diffs:
        return {"bradley_terry/pair_accuracy": float("nan"), "bradley_terry/pairs": 0}
    d = np.asarray(diffs)
    clf = LogisticRegression(C=float(c), fit_intercept=False, max_iter=1000).fit(
        np.concatenate([d, -d]), np.r_[np.ones(len(d)), np.zeros(len(d))])
    pred = xs[out_rows] @ clf.coef_[0]
    acc, n = pair_accuracy(pred, combined[out_rows], [g for g, o in zip(groups, out_rows) if o])
    return {"bradley_terry/pair_accuracy": round(acc, 4) if n else float("nan"), "bradley_terry/pairs": int(n)}


__all__ = ["RidgeRewardModel", "evaluate_ridge", "cross_fitted", "bradley_terry", "pair_accuracy", "group_split"]
