"""Decision rules: threshold fitting recovers planted cut points; metrics match scikit-learn; the
rule round-trips through its dict."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, f1_score

from lrkd.schema import LabelSet
from lrkd.evaluation.confusion import grade_metric
from lrkd.evaluation.decision import ArgmaxRule, ThresholdRule, rule_from_dict
from lrkd.evaluation.metrics import RelevanceMetrics, decision_metrics

LS = LabelSet(names=("exact", "substitute", "complement", "irrelevant"))  # gains = values = 3, 2, 1, 0


@pytest.mark.parametrize("metric", ["qwk", "macro_f1"])
def test_threshold_fitting_recovers_planted_cut_points(metric):
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.0, 3.0, 3000)
    planted = np.array([0.8, 1.3, 2.6])  # far from the default midpoints 0.5, 1.5, 2.5
    rule = ThresholdRule(score_values=LS.values, metric=metric)
    labels = rule.order[np.searchsorted(planted, scores, side="right")]  # score bin -> grade (3 = lowest)
    assert set(labels.tolist()) == {0, 1, 2, 3}
    fitted = rule.fit_scores(scores, labels)
    np.testing.assert_allclose(fitted.thresholds, planted, atol=0.03)
    assert grade_metric(fitted.decide_scores(scores), labels, 4, metric) > 0.98
    # the fit never does worse on val than its start (rounding to the nearest grade)
    assert grade_metric(fitted.decide_scores(scores), labels, 4, metric) >= \
        grade_metric(rule.decide_scores(scores), labels, 4, metric)


def test_fit_is_robust_to_noisy_labels_and_keeps_thresholds_monotone():
    rng = np.random.default_rng(1)
    scores = rng.uniform(0.0, 3.0, 2000)
    planted = np.array([0.9, 1.4, 2.2])
    rule = ThresholdRule(score_values=LS.values)
    labels = rule.order[np.searchsorted(planted, scores + rng.normal(0, 0.1, scores.shape), side="right")]
    t = np.asarray(rule.fit_scores(scores, labels).thresholds)
    assert np.all(np.diff(t) > 0)
    np.testing.assert_allclose(t, planted, atol=0.1)


def test_probabilities_are_scored_by_the_expected_value_and_binned_in_value_order():
    # values ascending with the class index (grade 0 has the lowest value): bins map straight
    rule = ThresholdRule(score_values=(0.0, 1.0, 2.0), thresholds=(0.5, 1.5))
    probs = np.array([[1.0, 0.0, 0.0], [0.2, 0.6, 0.2], [0.0, 0.2, 0.8], [0.5, 0.0, 0.5]])
    np.testing.assert_allclose(rule.scores(probs), [0.0, 1.0, 1.8, 1.0])
    assert rule.decide(probs).tolist() == [0, 1, 2, 1]
    # the usual order (grade 0 most relevant, highest value): the highest bin is grade 0
    rule = ThresholdRule(score_values=(2.0, 1.0, 0.0), thresholds=(0.5, 1.5))
    np.testing.assert_allclose(rule.scores(probs), [2.0, 1.0, 0.2, 1.0])
    assert rule.decide(probs).tolist() == [0, 1, 2, 1]
    assert rule.decide_scores([0.4, 0.6, 1.6]).tolist() == [2, 1, 0]
    assert ArgmaxRule().decide(probs).tolist() == [0, 1, 2, 0]


def test_metrics_match_sklearn():
    rng = np.random.default_rng(2)
    y, p = rng.integers(0, 4, 500), rng.integers(0, 4, 500)
    p[p == 2] = 1  # a class absent from the predictions
    assert grade_metric(p, y, 4, "qwk") == pytest.approx(cohen_kappa_score(y, p, weights="quadratic"))
    assert grade_metric(p, y, 4, "macro_f1") == pytest.approx(f1_score(y, p, average="macro"))


def test_the_logged_metrics_and_the_fitted_rule_share_one_qwk_and_macro_f1():
    """RelevanceMetrics (argmax), decision_metrics (tuned grades) and ThresholdRule.fit read the same
    functions of the confusion matrix (lrkd.evaluation.confusion)."""
    import torch

    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(4), 400).astype(np.float32)
    y = rng.integers(0, 4, 400)
    m = RelevanceMetrics(LS, prefix="")
    m.update(torch.from_numpy(probs), torch.from_numpy(y), torch.zeros(400, dtype=torch.long))
    out, argmax = m.compute(), probs.argmax(1)
    tuned = decision_metrics(torch.from_numpy(argmax), torch.from_numpy(y), LS, prefix="")
    for name in ("qwk", "macro_f1"):
        assert out[name].item() == np.float32(grade_metric(argmax, y, 4, name))
        assert tuned[name].item() == out[name].item()


def test_rule_dict_round_trip_and_config_defaults():
    rule = rule_from_dict({"kind": "thresholds", "metric": "macro_f1", "score": "expected_gain"},
                          LabelSet(names=("a", "b", "c"), gains=(3.0, 1.0, 0.0), values=(1.0, 0.5, 0.0)))
    assert rule.score_values == (3.0, 1.0, 0.0) and not rule.fitted
    fitted = rule.fit_scores(np.array([0.1, 0.2, 1.2, 1.4, 2.9, 2.5]), np.array([2, 2, 1, 1, 0, 0]))
    again = rule_from_dict(fitted.to_dict())
    assert again.to_dict() == fitted.to_dict() and again.thresholds == fitted.thresholds
    assert isinstance(rule_from_dict(None), ArgmaxRule) and isinstance(rule_from_dict({"kind": "argmax"}), ArgmaxRule)
    with pytest.raises(ValueError, match="decision.kind"):
        rule_from_dict({"kind": "median"}, LS)
    with pytest.raises(ValueError, match="ascending"):
        ThresholdRule(score_values=(0.0, 1.0, 2.0), thresholds=(1.0, 0.5))
