"""Decision rules: class probabilities [N, C] -> one grade per row, chosen by config (conf/decision/).

``argmax``      the most probable grade (the default; what the ``<split>/<metric>`` keys report).
``thresholds``  cut a score s = sum_c p_c · v_c (v = the label set's ``values`` for
                ``score=expected_relevance``, its ``gains`` for ``expected_gain``) at C-1 ascending
                thresholds t_1 < ... < t_{C-1} fitted on the **val** split to maximise ``metric``
                (``qwk`` or ``macro_f1``). A row whose score has j thresholds <= s falls in bin j
                (0 = below t_1); bin j is the grade with the j-th smallest v.

A rule is a small JSON-able dict (``to_dict`` / :func:`rule_from_dict`): the checkpoint, the ONNX
sidecar and the ``save_pretrained`` form store it, so predict and serving decide as the test did.

Fitting (:meth:`ThresholdRule.fit`): coordinate ascent. Start from the midpoints between adjacent
grade values (rounding s to the nearest grade); then, pass after pass, move each threshold to the
best of up to ``max_candidates`` candidate cut points (midpoints between consecutive distinct val
scores, subsampled by quantile) strictly between its neighbours, the others fixed; stop when a pass
gains nothing. Monotone by construction. The metrics are :mod:`lrkd.evaluation.confusion`'s (the
same QWK and macro-F1 as the logged ``<split>/<metric>`` keys).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping

import numpy as np

from lrkd.evaluation.confusion import grade_metric

DECISION_KINDS = ("argmax", "thresholds")
DECISION_SCORES = ("expected_relevance", "expected_gain")
DECISION_METRICS = ("qwk", "macro_f1")


# ---------------------------------------------------------------------------------------- rules
@dataclass(frozen=True)
class ArgmaxRule:
    """The most probable grade."""

    kind = "argmax"

    def decide(self, probs) -> np.ndarray:
        """probs [N, C] -> grades [N] int64."""
        return np.asarray(probs).argmax(axis=-1).astype(np.int64)

    def to_dict(self) -> dict:
        return {"kind": "argmax"}

    @property
    def fitted(self) -> bool:
        return True


@dataclass(frozen=True)
class ThresholdRule:
    """Cut the expected score at fitted thresholds (module docstring).

    score_values: [C] v_c per grade (label-set order), distinct; score: what v is (informative);
    metric: what ``fit`` maximises; thresholds: [C-1] ascending, or None before fitting (then the
    midpoints between adjacent sorted v: rounding to the nearest grade value).
    """

    score_values: tuple[float, ...]
    score: str = "expected_relevance"
    metric: str = "qwk"
    thresholds: tuple[float, ...] | None = None
    max_candidates: int = 256
    max_passes: int = 10
    kind = "thresholds"

    def __post_init__(self):
        v = tuple(float(x) for x in self.score_values)
        object.__setattr__(self, "score_values", v)
        if len(v) < 2 or len(set(v)) != len(v):
            raise ValueError(f"a threshold rule needs >= 2 distinct score values (one per grade), got {v}")
        if self.score not in DECISION_SCORES:
            raise ValueError(f"decision score must be one of {DECISION_SCORES}, got {self.score!r}")
        if self.metric not in DECISION_METRICS:
            raise ValueError(f"decision metric must be one of {DECISION_METRICS}, got {self.metric!r}")
        if self.thresholds is not None:
            t = tuple(float(x) for x in self.thresholds)
            if len(t) != len(v) - 1 or any(b <= a for a, b in zip(t, t[1:])):
                raise ValueError(f"thresholds must be {len(v) - 1} strictly ascending numbers, got {t}")
            object.__setattr__(self, "thresholds", t)

    @property
    def num_classes(self) -> int:
        return len(self.score_values)

    @property
    def fitted(self) -> bool:
        return self.thresholds is not None

    @property
    def order(self) -> np.ndarray:
        """[C] grade of each bin: the grades sorted by ascending score value."""
        return np.argsort(np.asarray(self.score_values), kind="stable")

    def initial_thresholds(self) -> np.ndarray:
        v = np.sort(np.asarray(self.score_values))
        return (v[:-1] + v[1:]) / 2

    def current_thresholds(self) -> np.ndarray:
        return np.asarray(self.thresholds if self.thresholds is not None else self.initial_thresholds(), np.float64)

    def scores(self, probs) -> np.ndarray:
        """probs [N, C] -> s [N] float64 = probs @ score_values."""
        return np.asarray(probs, dtype=np.float64) @ np.asarray(self.score_values)

    def decide_scores(self, scores, thresholds=None) -> np.ndarray:
        """s [N] -> grades [N] int64 (the bin of s among the thresholds, mapped to its grade)."""
        t = self.current_thresholds() if thresholds is None else np.asarray(thresholds, np.float64)
        return self.order[np.searchsorted(t, np.asarray(scores, np.float64), side="right")].astype(np.int64)

    def decide(self, probs) -> np.ndarray:
        """probs [N, C] -> grades [N] int64."""
        return self.decide_scores(self.scores(probs))

    def fit(self, probs, labels) -> "ThresholdRule":
        """A copy with thresholds fitted on ``probs [N, C]`` and gold ``labels [N]`` (val rows)."""
        return self.fit_scores(self.scores(probs), labels)

    def fit_scores(self, scores, labels) -> "ThresholdRule":
        """A copy with thresholds fitted on scores ``s [N]`` and gold ``labels [N]`` (module docstring).
        With fewer than two distinct scores or gold grades, the initial thresholds are kept."""
        s = np.asarray(scores, np.float64)
        y = np.asarray(labels, np.int64)
        keep = (y >= 0) & np.isfinite(s)
        s, y = s[keep], y[keep]
        c = self.num_classes
        t = self.initial_thresholds()
        distinct = np.unique(s)
        if len(distinct) < 2 or len(np.unique(y)) < 2:
            return replace(self, thresholds=tuple(t.tolist()))
        cuts = (distinct[:-1] + distinct[1:]) / 2  # every split of the sorted scores
        if len(cuts) > self.max_candidates:
            cuts = np.unique(np.quantile(cuts, np.linspace(0, 1, self.max_candidates)))
        # keep the start strictly ascending and inside the candidates' range
        lo, hi = cuts[0], cuts[-1]
        t = np.clip(t, lo, hi)
        for k in range(1, c - 1):
            if t[k] <= t[k - 1]:
                t[k] = np.nextafter(t[k - 1], np.inf)
        score_of = lambda th: grade_metric(self.decide_scores(s, th), y, c, self.metric)  # noqa: E731
        best = score_of(t)
        for _ in range(self.max_passes):
            improved = False
            for k in range(c - 1):
                left = t[k - 1] if k > 0 else -np.inf
                right = t[k + 1] if k < c - 2 else np.inf
                options = cuts[(cuts > left) & (cuts < right)]
                for cand in options:
                    trial = t.copy()
                    trial[k] = cand
                    value = score_of(trial)
                    if value > best + 1e-12:
                        best, t, improved = value, trial, True
            if not improved:
                break
        return replace(self, thresholds=tuple(float(x) for x in t))

    def to_dict(self) -> dict:
        return {"kind": "thresholds", "score": self.score, "metric": self.metric,
                "score_values": list(self.score_values),
                "thresholds": None if self.thresholds is None else list(self.thresholds)}


def rule_from_dict(d: Mapping | None, label_set=None):
    """A rule from its dict (``to_dict``, or a ``conf/decision`` config: kind, score, metric,
    thresholds?, max_candidates?, max_passes?). ``score_values`` come from the dict, else from
    ``label_set`` (its values or gains, by ``score``). None or kind argmax -> :class:`ArgmaxRule`."""
    if not d or d.get("kind", "argmax") == "argmax":
        return ArgmaxRule()
    kind = d.get("kind")
    if kind != "thresholds":
        raise ValueError(f"decision.kind must be one of {DECISION_KINDS}, got {kind!r}")
    score = d.get("score", "expected_relevance")
    values = d.get("score_values")
    if values is None:
        if label_set is None:
            raise ValueError("a threshold rule needs score_values or a label set")
        values = label_set.values if score == "expected_relevance" else label_set.gains
    extra = {k: int(d[k]) for k in ("max_candidates", "max_passes") if d.get(k) is not None}
    thresholds = d.get("thresholds")
    return ThresholdRule(score_values=tuple(values), score=score, metric=d.get("metric", "qwk"),
                         thresholds=None if thresholds is None else tuple(thresholds), **extra)


__all__ = ["DECISION_KINDS", "DECISION_SCORES", "DECISION_METRICS", "ArgmaxRule", "ThresholdRule", "rule_from_dict"]
