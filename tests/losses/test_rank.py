"""rank_kd: RankNet and listwise distillation among the rows of one query, against hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch

from lrkd.losses import RankKDTerm, WeightedLoss, listwise_kd, ranknet_kd


def softmax(xs):
    z = sum(math.exp(x) for x in xs)
    return [math.exp(x) / z for x in xs]


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def bernoulli_kl(p, q):
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


# two queries interleaved in the batch (q0: rows 0, 2; q1: rows 1, 3, 4), C = 3, gains 2, 1, 0;
# row 4 is not annotated (the teacher has no reading of it) and must never count
QUERY = [0, 1, 0, 1, 1]
TEACHER = [[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.2, 0.6], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]]
LOGITS = [[2.0, 0.0, -1.0], [0.0, 0.5, 1.0], [1.0, 1.0, 0.0], [-1.0, 0.0, 2.0], [3.0, 0.0, 0.0]]
ANNOTATED = [True, True, True, True, False]


def make_batch(labels=(0, -1, 1, -1, -1)):
    out = {"logits": torch.tensor(LOGITS, requires_grad=True)}
    batch = {"teacher_probs": torch.tensor(TEACHER), "annotated": torch.tensor(ANNOTATED),
             "query_index": torch.tensor(QUERY), "labels": torch.tensor(list(labels))}
    return out, batch


def hand_scores():
    """Expected gains (gains 2, 1, 0), teacher and student, by hand."""
    t = [2 * p[0] + p[1] for p in TEACHER]
    s = [2 * p[0] + p[1] for p in map(softmax, LOGITS)]
    return t, s


def test_ranknet_against_a_hand_computed_value():
    t, s = hand_scores()
    assert t[:4] == pytest.approx([1.6, 0.5, 0.6, 1.5])
    temperature = 2.0
    # ordered pairs of the same query among annotated rows: (0,2), (2,0), (1,3), (3,1); (i,j) and (j,i)
    # give the same binary KL, so the mean over the four is the mean over (0,2) and (1,3)
    kl = [bernoulli_kl(sigmoid((t[i] - t[j]) / temperature), sigmoid((s[i] - s[j]) / temperature))
          for i, j in ((0, 2), (1, 3))]
    expected = temperature ** 2 * sum(kl) / 2
    out, batch = make_batch()
    got = RankKDTerm(form="ranknet", temperature=temperature)(out, batch)["loss"]
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # comparing across queries (rows 0 and 1, ...) would have given another value
    everything = [bernoulli_kl(sigmoid((t[i] - t[j]) / temperature), sigmoid((s[i] - s[j]) / temperature))
                  for i in range(4) for j in range(4) if i != j]
    assert abs(temperature ** 2 * sum(everything) / len(everything) - expected) > 1e-3


def test_listwise_against_a_hand_computed_value():
    t, s = hand_scores()
    temperature = 0.5
    expected = 0.0
    for rows in ((0, 2), (1, 3)):
        p = softmax([t[r] / temperature for r in rows])
        q = softmax([s[r] / temperature for r in rows])
        expected += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)) / 2
    out, batch = make_batch()
    got = RankKDTerm(form="listwise", temperature=temperature)(out, batch)["loss"]
    assert got.item() == pytest.approx(temperature ** 2 * expected, rel=1e-5)


@pytest.mark.parametrize("form", ["ranknet", "listwise"])
def test_zero_when_the_student_ranks_as_the_teacher_per_query_but_not_across(form):
    # relevance logits: the student's equals the teacher's plus a constant OF ITS QUERY (3 for q0,
    # -2 for q1). Within each query the score differences match: 0. A loss that compared rows of
    # different queries (or one softmax over the batch) sees a mismatch of 5 and is positive.
    probs = torch.tensor([[0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.9, 0.1]])
    query = torch.tensor([0, 1, 0, 1])
    t = torch.log(probs[:, 0] / probs[:, 1])
    shift = torch.tensor([3.0, -2.0, 3.0, -2.0])
    logits = torch.stack([t + shift, torch.zeros(4)], dim=1)
    batch = {"teacher_probs": probs, "annotated": torch.ones(4, dtype=torch.bool), "query_index": query,
             "labels": torch.full((4,), -1)}
    term = RankKDTerm(form=form, score="relevance_logit", temperature=1.5)
    assert term({"logits": logits}, batch)["loss"].item() == pytest.approx(0.0, abs=1e-6)
    one_query = {**batch, "query_index": torch.zeros(4, dtype=torch.long)}
    assert term({"logits": logits}, one_query)["loss"].item() > 0.1


def test_functions_need_a_pair_of_one_query_and_keep_a_gradient_path():
    s = torch.tensor([0.3, 0.1, 0.9], requires_grad=True)
    t = torch.tensor([1.0, 0.0, 2.0])
    for fn in (ranknet_kd, listwise_kd):
        value = fn(s, t, torch.tensor([0, 1, 2]))    # three queries of one row each: nothing to compare
        assert value.item() == 0.0 and value.requires_grad
        masked = fn(s, t, torch.tensor([0, 0, 1]), mask=torch.tensor([True, False, True]))
        assert masked.item() == 0.0


def test_gradient_reaches_the_compared_rows_only():
    out, batch = make_batch()
    for form in ("ranknet", "listwise"):
        out["logits"].grad = None
        RankKDTerm(form=form)(out, batch)["loss"].backward()
        grad = out["logits"].grad.abs().sum(dim=1)
        assert (grad[:4] > 0).all() and grad[4] == 0, form


def test_rows_unlabelled_compares_the_rows_without_a_gold_grade():
    # labels: rows 0, 2 (q0) gold; rows 1, 3 (q1) unlabelled -> only the pair (1, 3)
    t, s = hand_scores()
    out, batch = make_batch(labels=(0, -1, 1, -1, -1))
    got = RankKDTerm(rows="unlabelled")(out, batch)["loss"].item()
    assert got == pytest.approx(bernoulli_kl(sigmoid(t[1] - t[3]), sigmoid(s[1] - s[3])), rel=1e-5)
    got = RankKDTerm(rows="labelled")(out, batch)["loss"].item()
    assert got == pytest.approx(bernoulli_kl(sigmoid(t[0] - t[2]), sigmoid(s[0] - s[2])), rel=1e-5)


def test_gains_come_from_the_label_set_unless_given():
    given = RankKDTerm(gains=[1.0, 0.0, 0.0])
    loss = WeightedLoss({"rank_kd": RankKDTerm(), "given": given})
    loss.set_label_set((3.0, 2.0, 1.0), 1)
    assert loss.terms["rank_kd"].gains.tolist() == [3.0, 2.0, 1.0] and loss.terms["rank_kd"].relevant_up_to == 1
    assert given.gains.tolist() == [1.0, 0.0, 0.0] and given.relevant_up_to == 1
    # gains 3, 2, 1 are gains 2, 1, 0 plus one: the same score differences, the same loss
    out, batch = make_batch()
    assert loss.terms["rank_kd"](out, batch)["loss"].item() == pytest.approx(
        RankKDTerm()(out, batch)["loss"].item(), rel=1e-5)


def test_bad_settings_and_missing_inputs_are_clear_errors():
    for kwargs, match in (({"form": "pointwise"}, "form"), ({"score": "argmax"}, "score"),
                          ({"rows": "some"}, "rows"), ({"temperature": 0}, "temperature")):
        with pytest.raises(ValueError, match=match):
            RankKDTerm(**kwargs)
    out, batch = make_batch()
    with pytest.raises(KeyError, match="query_index"):
        RankKDTerm()(out, {k: v for k, v in batch.items() if k != "query_index"})
    with pytest.raises(LookupError, match="data.annotations"):
        RankKDTerm()(out, {"query_index": batch["query_index"], "labels": batch["labels"]})
