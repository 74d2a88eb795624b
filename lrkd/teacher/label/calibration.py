"""Calibration of the teacher's readings, fitted on the val split (never on test).

Two maps from a reading to a soft label over the C grades (grade 0 = most relevant, as
``data.labels``), each fitted by maximum likelihood of the gold grades:

- :class:`OrdinalCalibration` for a scalar relevance score s (the judgement reading's
  ``logit P(yes)``): a cumulative-link model, P(grade >= k) = sigmoid(a * s - theta_k) for the
  C-1 boundaries k = 1..C-1, theta increasing: a temperature (1/a) and one bias per grade boundary.
- :class:`TemperatureBias` for a C-grade reading (probabilities over the grade tokens):
  softmax(log p / T + b), a temperature and one bias per grade (b_0 = 0).

:func:`expected_calibration_error` is torchmetrics' top-label ECE (equal-width bins).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import torch
from scipy.optimize import minimize
from scipy.special import expit, log_softmax
from torchmetrics.functional.classification import multiclass_calibration_error

_EPS = 1e-12


def judgement_score(answer_probs: np.ndarray) -> np.ndarray:
    """[n, 2] (P(yes), P(no)) -> [n] log P(yes) - log P(no)."""
    p = np.clip(np.asarray(answer_probs, np.float64), _EPS, None)
    return np.log(p[:, 0]) - np.log(p[:, 1])


def raw_grade_probs(answer_probs: np.ndarray, num_grades: int) -> np.ndarray:
    """The uncalibrated soft label of a yes/no reading: P(yes) on the top grade, P(no) on the
    bottom one, nothing between: [n, C]."""
    p = np.asarray(answer_probs, np.float64)
    out = np.zeros((len(p), int(num_grades)))
    out[:, 0], out[:, -1] = p[:, 0], p[:, 1]
    return out


@dataclass
class OrdinalCalibration:
    """P(grade >= k) = sigmoid(a * s - theta_k) for k = 1..C-1 (see the module docstring).

    scale: a (> 0 when higher s means more relevant). thresholds: theta_1 < ... < theta_{C-1}."""

    num_grades: int
    scale: float = 1.0
    thresholds: list[float] = field(default_factory=list)

    @staticmethod
    def _unpack(params: np.ndarray) -> tuple[float, np.ndarray]:
        a, first, steps = params[0], params[1], params[2:]
        return float(a), np.concatenate([[first], first + np.cumsum(np.exp(steps))])

    def _relevance_probs(self, s: np.ndarray, a: float, theta: np.ndarray) -> np.ndarray:
        """[n, C] probabilities of relevance levels r = 0 (least) .. C-1 (most)."""
        above = expit(a * s[:, None] - theta[None, :])  # P(r >= k), k = 1..C-1, decreasing in k
        upper = np.concatenate([np.ones((len(s), 1)), above], axis=1)
        lower = np.concatenate([above, np.zeros((len(s), 1))], axis=1)
        return np.clip(upper - lower, _EPS, None)

    def fit(self, scores: np.ndarray, grades: np.ndarray) -> "OrdinalCalibration":
        """Maximum likelihood on (score [n], grade index [n]); returns self."""
        s = np.asarray(scores, np.float64)
        r = (self.num_grades - 1) - np.asarray(grades, np.int64)  # relevance level
        if len(s) != len(r) or not len(s):
            raise ValueError(f"need as many scores as grades (> 0), got {len(s)} and {len(r)}")
        if r.min() < 0 or r.max() >= self.num_grades:
            raise ValueError(f"grades must be in 0..{self.num_grades - 1}")

        def nll(params):
            a, theta = self._unpack(params)
            return -np.log(self._relevance_probs(s, a, theta)[np.arange(len(s)), r]).mean()

        start = np.concatenate([[1.0, -1.0], np.zeros(self.num_grades - 2)])
        result = minimize(nll, start, method="L-BFGS-B")
        self.scale, theta = self._unpack(result.x)
        self.thresholds = [float(t) for t in theta]
        return self

    def predict_proba(self, scores: np.ndarray) -> np.ndarray:
        """[n] scores -> [n, C] soft labels in grade order (grade 0 = most relevant)."""
        probs = self._relevance_probs(np.asarray(scores, np.float64), self.scale, np.asarray(self.thresholds))
        probs = probs[:, ::-1]
        return (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)

    def to_dict(self) -> dict:
        return {"method": "ordinal", **asdict(self)}


@dataclass
class TemperatureBias:
    """softmax(log p / T + b) over C grades (b_0 = 0); fitted by maximum likelihood."""

    num_grades: int
    temperature: float = 1.0
    bias: list[float] = field(default_factory=list)

    def _logits(self, probs: np.ndarray, t: float, b: np.ndarray) -> np.ndarray:
        return np.log(np.clip(np.asarray(probs, np.float64), _EPS, None)) / t + b[None, :]

    def fit(self, probs: np.ndarray, grades: np.ndarray) -> "TemperatureBias":
        probs, y = np.asarray(probs, np.float64), np.asarray(grades, np.int64)

        def nll(params):
            t, b = np.exp(params[0]), np.concatenate([[0.0], params[1:]])
            return -log_softmax(self._logits(probs, t, b), axis=1)[np.arange(len(y)), y].mean()

        result = minimize(nll, np.zeros(self.num_grades), method="L-BFGS-B")
        self.temperature = float(np.exp(result.x[0]))
        self.bias = [0.0] + [float(v) for v in result.x[1:]]
        return self

    def predict_proba(self, probs: np.ndarray) -> np.ndarray:
        z = self._logits(probs, self.temperature, np.asarray(self.bias))
        return np.exp(log_softmax(z, axis=1)).astype(np.float32)

    def to_dict(self) -> dict:
        return {"method": "temperature_bias", **asdict(self)}


def expected_calibration_error(probs: np.ndarray, grades: np.ndarray, n_bins: int = 10) -> float:
    """Top-label expected calibration error (torchmetrics ``MulticlassCalibrationError``, l1)."""
    p = torch.as_tensor(np.asarray(probs, np.float32))
    return float(multiclass_calibration_error(p, torch.as_tensor(np.asarray(grades, np.int64)),
                                              num_classes=p.shape[1], n_bins=int(n_bins), norm="l1"))


def nll(probs: np.ndarray, grades: Sequence[int]) -> float:
    """Mean negative log-likelihood of the gold grades under ``probs`` [n, C]."""
    p = np.clip(np.asarray(probs, np.float64), _EPS, None)
    return float(-np.log(p[np.arange(len(p)), np.asarray(grades, np.int64)]).mean())


__all__ = ["OrdinalCalibration", "TemperatureBias", "judgement_score", "raw_grade_probs",
           "expected_calibration_error", "nll"]
