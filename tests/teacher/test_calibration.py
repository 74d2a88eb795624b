"""Calibration of the teacher's readings: planted miscalibrations are recovered, and fitting lowers
the expected calibration error."""
import numpy as np
import pytest
from scipy.special import expit, softmax

from lrkd.teacher.label.calibration import (OrdinalCalibration, TemperatureBias, expected_calibration_error,
                                      judgement_score, nll, raw_grade_probs)


def _ordinal_sample(n, scale, thresholds, seed=0):
    """Scores and grades (0 = most relevant) drawn from the cumulative-link model."""
    rng = np.random.default_rng(seed)
    s = rng.normal(0, 2, n)
    above = expit(scale * s[:, None] - np.asarray(thresholds)[None, :])  # P(level >= k)
    u = rng.random(n)
    level = (u[:, None] < above).sum(axis=1)  # 0..C-1, higher = more relevant
    return s, (len(thresholds)) - level


def test_ordinal_recovers_planted_parameters():
    s, grades = _ordinal_sample(20000, 1.7, [-2.0, 0.5, 1.5])
    cal = OrdinalCalibration(4).fit(s, grades)
    assert cal.scale == pytest.approx(1.7, rel=0.06)
    np.testing.assert_allclose(cal.thresholds, [-2.0, 0.5, 1.5], atol=0.12)
    probs = cal.predict_proba(s)
    assert probs.shape == (20000, 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    # a higher score puts more mass on the top grade (grade 0)
    assert probs[np.argmax(s), 0] > probs[np.argmin(s), 0]


def test_ordinal_probabilities_by_hand():
    cal = OrdinalCalibration(3, scale=2.0, thresholds=[-1.0, 1.0])
    p = cal.predict_proba(np.array([0.5]))[0]
    above1, above2 = expit(2 * 0.5 + 1), expit(2 * 0.5 - 1)  # P(level>=1), P(level>=2)
    # grade 0 = level 2 (most relevant)
    np.testing.assert_allclose(p, [above2, above1 - above2, 1 - above1], rtol=1e-5)


def test_temperature_bias_recovers_planted_distortion():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, (20000, 4))
    truth = softmax(logits, axis=1)
    grades = np.array([rng.choice(4, p=p) for p in truth])
    distorted = softmax(3.0 * logits - np.array([0.0, 1.0, -0.5, 2.0]), axis=1)  # T = 1/3 and a bias
    cal = TemperatureBias(4).fit(distorted, grades)
    assert cal.temperature == pytest.approx(3.0, rel=0.05)
    fixed = cal.predict_proba(distorted)
    np.testing.assert_allclose(fixed, truth, atol=0.03)
    assert expected_calibration_error(fixed, grades) < 0.5 * expected_calibration_error(distorted, grades)
    assert nll(fixed, grades) < nll(distorted, grades)


def test_calibration_lowers_ece_of_an_overconfident_yes():
    s, grades = _ordinal_sample(5000, 1.0, [-1.0, 0.0, 1.0], seed=3)
    p_yes = expit(4 * s + 2)  # a reader that says "yes" far too often and too sharply
    answers = np.stack([p_yes, 1 - p_yes], axis=1)
    raw = raw_grade_probs(answers, 4)
    cal = OrdinalCalibration(4).fit(judgement_score(answers), grades)
    fixed = cal.predict_proba(judgement_score(answers))
    assert expected_calibration_error(fixed, grades) < expected_calibration_error(raw, grades) - 0.1


def test_ece_against_a_known_case():
    # two bins: confidence 0.9 (accuracy 1/2) and 0.6 (accuracy 1): ECE = 0.5*0.4 + 0.5*0.4
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    assert expected_calibration_error(probs, np.array([0, 1, 0, 0])) == pytest.approx(0.4, abs=1e-6)
