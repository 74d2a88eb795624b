"""RelevanceMetrics against hand-computed values on small, hand-made cases."""
from __future__ import annotations

import math

import pytest
import torch

from lrkd.schema import LabelSet
from lrkd.evaluation.metrics import RelevanceMetrics

LS3 = LabelSet(names=("exact", "partial", "irrelevant"))  # gains 2, 1, 0
NAN = float("nan")


def one_hot(preds, c=3):
    return torch.nn.functional.one_hot(torch.tensor(preds), c).float()


# ------------------------------------------------------------------------------------ nDCG
# Expected gain = 2·p0 + 1·p1: HIGH 1.6 > MID 1.3 > LOW 0.4
HIGH, MID, LOW = [0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.1, 0.2, 0.7]


def ndcg_case():
    probs = [HIGH, MID, LOW,          # query 0: gold partial, exact, irrelevant (gains 1, 2, 0)
             HIGH, LOW, MID,          # query 1: gold irrelevant, partial, exact (gains 0, 1, 2)
             HIGH, LOW,               # query 2: every item irrelevant -> no ideal order, skipped
             [1.0, 0.0, 0.0]]         # query 0 again, unlabelled: not evaluated
    labels = [1, 0, 2, 2, 1, 0, 2, 2, -1]
    queries = [0, 0, 0, 1, 1, 1, 2, 2, 0]
    return torch.tensor(probs), torch.tensor(labels), torch.tensor(queries)


def test_ndcg_two_queries_hand_formula():
    lg = math.log2
    # query 0 ranked A,B,C -> gains 1,2,0; ideal 2,1,0
    q0 = (1 / lg(2) + 2 / lg(3) + 0 / lg(4)) / (2 / lg(2) + 1 / lg(3) + 0 / lg(4))
    # query 1 ranked item0,item2,item1 -> gains 0,2,1; ideal 2,1,0
    q1 = (0 / lg(2) + 2 / lg(3) + 1 / lg(4)) / (2 / lg(2) + 1 / lg(3) + 0 / lg(4))
    m = RelevanceMetrics(LS3)
    m.update(*ndcg_case())
    assert m.compute()["val/ndcg@10"].item() == pytest.approx((q0 + q1) / 2, rel=1e-5)
    # cut-off k=2: only the first two ranks count
    q0_2 = (1 / lg(2) + 2 / lg(3)) / (2 / lg(2) + 1 / lg(3))
    q1_2 = (0 / lg(2) + 2 / lg(3)) / (2 / lg(2) + 1 / lg(3))
    m2 = RelevanceMetrics(LS3, prefix="test/", ndcg_k=2)
    m2.update(*ndcg_case())
    assert m2.compute()["test/ndcg@2"].item() == pytest.approx((q0_2 + q1_2) / 2, rel=1e-5)


def test_ndcg_with_a_query_split_across_batches():
    probs, labels, queries = ndcg_case()
    whole = RelevanceMetrics(LS3)
    whole.update(probs, labels, queries)
    split = RelevanceMetrics(LS3)
    split.update(probs[:2], labels[:2], queries[:2])
    split.update(probs[2:], labels[2:], queries[2:])
    assert split.compute()["val/ndcg@10"].item() == pytest.approx(whole.compute()["val/ndcg@10"].item())


# ------------------------------------------------------------------------- classification
# (gold, predicted) pairs on 3 classes
PAIRS = [(0, 0), (0, 0), (0, 1), (1, 1), (1, 2), (2, 2), (2, 2), (2, 1), (1, 0), (2, 2)]


def classification_metrics():
    m = RelevanceMetrics(LS3)
    gold = torch.tensor([g for g, _ in PAIRS])
    m.update(one_hot([p for _, p in PAIRS]), gold, torch.arange(len(PAIRS)))
    return m


def test_quadratic_weighted_kappa_by_hand():
    c, n = 3, len(PAIRS)
    observed = [[0] * c for _ in range(c)]
    for g, p in PAIRS:
        observed[g][p] += 1
    assert observed == [[2, 1, 0], [1, 1, 1], [0, 1, 3]]
    rows = [sum(observed[i]) for i in range(c)]
    cols = [sum(observed[i][j] for i in range(c)) for j in range(c)]
    w = lambda i, j: (i - j) ** 2 / (c - 1) ** 2  # noqa: E731
    num = sum(w(i, j) * observed[i][j] for i in range(c) for j in range(c))
    den = sum(w(i, j) * rows[i] * cols[j] / n for i in range(c) for j in range(c))
    kappa = 1 - num / den
    assert kappa == pytest.approx(1 - 4 / 13.8)
    assert classification_metrics().compute()["val/qwk"].item() == pytest.approx(kappa, rel=1e-5)


def test_accuracy_and_f1_per_class_by_hand():
    out = classification_metrics().compute()
    assert out["val/accuracy"].item() == pytest.approx(6 / 10)  # micro accuracy (macro recall is 0.583)
    assert out["val/micro_f1"].item() == pytest.approx(6 / 10)
    # F1 = 2tp / (2tp + fp + fn)
    f1 = {"exact": 2 * 2 / (2 * 2 + 1 + 1), "partial": 2 * 1 / (2 * 1 + 2 + 2), "irrelevant": 2 * 3 / (2 * 3 + 1 + 1)}
    for name, value in f1.items():
        assert out[f"val/f1/{name}"].item() == pytest.approx(value, rel=1e-5), name
    assert out["val/macro_f1"].item() == pytest.approx(sum(f1.values()) / 3, rel=1e-5)


def test_macro_f1_ignores_a_class_absent_from_gold_and_predictions():
    m = RelevanceMetrics(LS3)
    m.update(one_hot([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1]), torch.zeros(4, dtype=torch.long))
    out = m.compute()
    f_exact, f_partial = 2 * 1 / (2 + 1 + 0), 2 * 2 / (4 + 0 + 1)
    assert out["val/macro_f1"].item() == pytest.approx((f_exact + f_partial) / 2, rel=1e-5)
    assert out["val/f1/irrelevant"].item() == 0.0


def test_confusion_matrix_rows_are_gold():
    cm = classification_metrics().confusion()
    assert cm.tolist() == [[2, 1, 0], [1, 1, 1], [0, 1, 3]]


# ------------------------------------------------------------------------------------ AUC
def test_auc_relevant_vs_not_uses_summed_relevant_probability():
    ls = LabelSet(names=("exact", "partial", "irrelevant"), relevant_up_to=1)
    probs = torch.tensor([[0.5, 0.4, 0.1],    # gold exact      score 0.9
                          [0.1, 0.3, 0.6],    # gold partial    score 0.4
                          [0.3, 0.3, 0.4],    # gold irrelevant score 0.6
                          [0.1, 0.1, 0.8],    # gold irrelevant score 0.2
                          [0.05, 0.05, 0.9]])  # gold irrelevant score 0.1
    m = RelevanceMetrics(ls)
    m.update(probs, torch.tensor([0, 1, 2, 2, 2]), torch.zeros(5, dtype=torch.long))
    # positive/negative pairs ranked correctly: 0.9 beats all 3 negatives, 0.4 beats 0.2 and 0.1
    assert m.compute()["val/auc"].item() == pytest.approx(5 / 6, rel=1e-5)


# ----------------------------------------------------------------------------------- RMSE
def test_rmse_of_expected_value_skips_nan_relevance_and_unlabelled_rows():
    ls = LabelSet(names=("exact", "partial", "irrelevant"), values=(3.0, 2.0, 1.0))
    probs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.0, 1.0, 0.0], [0.2, 0.2, 0.6]])
    labels = torch.tensor([0, 2, 1, -1])
    relevance = torch.tensor([2.67, 1.0, NAN, 3.0])
    m = RelevanceMetrics(ls, has_relevance=True)
    m.update(probs, labels, torch.tensor([0, 0, 1, 1]), relevance)
    # expected values 3.0 and 1.5 against 2.67 and 1.0
    expected = math.sqrt(((3.0 - 2.67) ** 2 + (1.5 - 1.0) ** 2) / 2)
    out = m.compute()
    assert out["val/rmse"].item() == pytest.approx(expected, rel=1e-5)
    without = RelevanceMetrics(ls)  # has_relevance=False: no rmse key, relevance ignored
    without.update(probs, labels, torch.tensor([0, 0, 1, 1]), relevance)
    assert "val/rmse" not in without.compute()


# ------------------------------------------------------------------------------ contract
def test_keys_reset_and_bad_input():
    m = RelevanceMetrics(LS3, prefix="val/")
    m.update(*ndcg_case())
    assert set(m.compute()) == {"val/accuracy", "val/macro_f1", "val/micro_f1", "val/f1/exact", "val/f1/partial",
                                "val/f1/irrelevant", "val/qwk", "val/auc", "val/ndcg@10"}
    m.reset()
    m.update(one_hot([0, 0]), torch.tensor([0, 1]), torch.tensor([0, 0]))
    assert m.compute()["val/accuracy"].item() == pytest.approx(0.5)  # nothing left from before the reset
    with pytest.raises(ValueError, match="not a class index"):
        m.update(one_hot([0]), torch.tensor([3]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"probs \[B,3\]"):
        m.update(torch.ones(2, 4) / 4, torch.tensor([0, 1]), torch.tensor([0, 0]))


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_no_labelled_row_gives_nan_ranking_metrics():
    m = RelevanceMetrics(LS3)
    m.update(one_hot([0, 1]), torch.tensor([-1, -1]), torch.tensor([0, 1]))
    out = m.compute()
    assert math.isnan(out["val/ndcg@10"].item()) and math.isnan(out["val/auc"].item())


def test_auc_is_nan_when_only_one_side_is_present():
    """0.0 would read as the worst model: one class only leaves AUC undefined (scikit-learn raises)."""
    ls = LabelSet(names=("exact", "partial", "irrelevant"))
    m = RelevanceMetrics(ls, prefix="")
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3]])
    m.update(probs, torch.tensor([1, 2, 2]), torch.tensor([0, 0, 1]))  # no row is relevant (grade 0)
    assert torch.isnan(m.compute()["auc"])
    m.update(torch.tensor([[0.9, 0.05, 0.05]]), torch.tensor([0]), torch.tensor([1]))
    assert not torch.isnan(m.compute()["auc"])
