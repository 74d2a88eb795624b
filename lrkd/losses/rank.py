"""``rank_kd``: ranking distillation over each query's candidates in the batch.

The teacher's soft labels say not only how relevant a pair is but how the candidates of one query
rank. This term transfers that order: it compares the rows of the same query in the batch (rows
of different queries are never compared) and needs batches that hold several candidates per query
(``data.sampler=query_groups``, :mod:`lrkd.data.query_batches`).

Scores (one per row, ``score``; the same kind for the teacher and the student):
- ``expected_gain`` (default): the expected nDCG gain, teacher t = p_T @ g from
  ``batch["teacher_probs"] [B, C]``, student s = softmax(logits) @ g from ``out["logits"] [B, C]``,
  with g [C] the label set's gains (chorus_icecat: 3, 2, 1, 0); in gain units, within
  [min g, max g]. What nDCG@10 ranks by.
- ``relevance_logit``: the log-odds of "relevant" (grades 0..relevant_up_to, as ROC-AUC counts
  them): t = log P_T(rel) - log P_T(not rel) (probabilities clamped to [1e-6, 1 - 1e-6]),
  s = logsumexp(logits[:, :r+1]) - logsumexp(logits[:, r+1:]); in nats, unbounded.

Forms (``form``), at temperature T, each scaled by T² (as ``kd``: the gradient scale then does not
depend on T), over the rows selected by ``rows`` among the annotated ones:
- ``ranknet`` (Burges et al., "Learning to Rank using Gradient Descent", ICML 2005; RankGPT's
  permutation distillation, Sun et al., EMNLP 2023, trains its student with RankNet on the
  teacher's order): for every ordered pair (i, j), i != j, of the same query, the target
  P_ij = sigmoid((t_i - t_j) / T) and the student's sigmoid((s_i - s_j) / T); the loss is the binary
  KL divergence between them (the binary cross-entropy minus the target's entropy, so 0 exactly when
  the student's score differences equal the teacher's), averaged over all such pairs of the batch.
- ``listwise``: per query q with >= 2 selected rows, KL(softmax(t_q / T) || softmax(s_q / T)) over
  its rows (ListNet-style softmax KD), averaged over those queries. 0 when s_q = t_q + a constant of
  the query.

Both are 0 with a gradient path when the batch holds no pair of the same query.

Config (torchdistill style, one term of ``WeightedLoss``)::

    rank_kd: {_target_: lrkd.losses.RankKDTerm, weight: 1.0, form: ranknet, score: expected_gain,
              temperature: 1.0, rows: all}

or on the command line ``+loss.terms.rank_kd={_target_: lrkd.losses.RankKDTerm, weight: 1}``, or
the preset ``loss=rank_kd`` (conf/loss/rank_kd.yaml: ce + ordinal + rank_kd).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lrkd.losses.compose import LossTerm, zero_with_grad

RANK_FORMS = ("ranknet", "listwise")
RANK_SCORES = ("expected_gain", "relevance_logit")
PROB_EPS = 1e-6


def default_gains(num_classes: int, device=None) -> Tensor:
    """C-1, ..., 0: the gains of a label set that gives none (``LabelSet``'s default)."""
    return torch.arange(num_classes - 1, -1, -1, dtype=torch.float32, device=device)


def teacher_scores(teacher_probs: Tensor, score: str = "expected_gain", gains: Tensor | None = None,
                   relevant_up_to: int = 0) -> Tensor:
    """teacher_probs [B, C] (rows sum to 1) -> [B] teacher scores (module docstring)."""
    p = teacher_probs.float()
    if score == "expected_gain":
        g = default_gains(p.shape[-1], p.device) if gains is None else gains.to(p.device, torch.float32)
        return p @ g
    if score == "relevance_logit":
        rel = p[:, : relevant_up_to + 1].sum(dim=-1).clamp(PROB_EPS, 1.0 - PROB_EPS)
        return torch.log(rel) - torch.log1p(-rel)
    raise ValueError(f"rank_kd: score must be one of {RANK_SCORES}, got {score!r}")


def student_scores(logits: Tensor, score: str = "expected_gain", gains: Tensor | None = None,
                   relevant_up_to: int = 0) -> Tensor:
    """logits [B, C] -> [B] student scores (module docstring)."""
    x = logits.float()
    if score == "expected_gain":
        g = default_gains(x.shape[-1], x.device) if gains is None else gains.to(x.device, torch.float32)
        return x.softmax(dim=-1) @ g
    if score == "relevance_logit":
        r = relevant_up_to + 1
        return torch.logsumexp(x[:, :r], dim=-1) - torch.logsumexp(x[:, r:], dim=-1)
    raise ValueError(f"rank_kd: score must be one of {RANK_SCORES}, got {score!r}")


def same_query_pairs(query_index: Tensor, mask: Tensor | None = None) -> Tensor:
    """[B, B] bool: (i, j) with i != j, both rows selected by ``mask [B]``, of the same query."""
    same = query_index[:, None] == query_index[None, :]
    same &= ~torch.eye(len(query_index), dtype=torch.bool, device=query_index.device)
    if mask is not None:
        m = mask.to(device=query_index.device, dtype=torch.bool)
        same &= m[:, None] & m[None, :]
    return same


def ranknet_kd(student: Tensor, teacher: Tensor, query_index: Tensor, temperature: float = 1.0,
               mask: Tensor | None = None) -> Tensor:
    """RankNet distillation: T² · mean over same-query ordered pairs (i, j) of
    KL(Bernoulli(sigmoid((t_i - t_j)/T)) ‖ Bernoulli(sigmoid((s_i - s_j)/T))).

    student, teacher: [B] scores; query_index: [B] long; mask: [B] bool rows to use. Scalar (nats)."""
    if temperature <= 0:
        raise ValueError(f"rank_kd: temperature must be > 0, got {temperature}")
    pairs = same_query_pairs(query_index, mask)
    if not bool(pairs.any()):
        return zero_with_grad(student)
    ds = (student[:, None] - student[None, :])[pairs] / temperature
    dt = (teacher[:, None] - teacher[None, :])[pairs].float() / temperature
    target = torch.sigmoid(dt)
    # BCE(target, sigmoid(ds)) - H(target), both with logits: the binary KL, >= 0, 0 iff ds == dt
    cross = F.binary_cross_entropy_with_logits(ds, target, reduction="none")
    entropy = F.binary_cross_entropy_with_logits(dt, target, reduction="none")
    return temperature ** 2 * (cross - entropy).mean()


def listwise_kd(student: Tensor, teacher: Tensor, query_index: Tensor, temperature: float = 1.0,
                mask: Tensor | None = None) -> Tensor:
    """Listwise softmax KD: T² · mean over queries with >= 2 selected rows of
    KL(softmax(t_q/T) ‖ softmax(s_q/T)) over the query's rows.

    student, teacher: [B] scores; query_index: [B] long; mask: [B] bool rows to use. Scalar (nats)."""
    if temperature <= 0:
        raise ValueError(f"rank_kd: temperature must be > 0, got {temperature}")
    keep = torch.ones_like(query_index, dtype=torch.bool) if mask is None else mask.to(query_index.device).bool()
    queries = torch.unique(query_index[keep])
    member = (query_index[None, :] == queries[:, None]) & keep[None, :]       # [Q, B]
    member = member[member.sum(dim=1) >= 2]
    if member.shape[0] == 0:
        return zero_with_grad(student)
    neg = torch.finfo(torch.float32).min
    s = torch.where(member, student.float()[None, :] / temperature, neg).log_softmax(dim=-1)
    t = torch.where(member, teacher.float()[None, :] / temperature, neg).log_softmax(dim=-1)
    per_query = torch.where(member, t.exp() * (t - s), 0.0).sum(dim=-1)
    return temperature ** 2 * per_query.mean()


class RankKDTerm(LossTerm):
    """Ranking distillation from ``batch["teacher_probs"]`` onto ``out["logits"]`` among the rows of
    one query (``batch["query_index"]``); see the module docstring.

    form: ``ranknet`` | ``listwise``; score: ``expected_gain`` | ``relevance_logit``;
    temperature: T > 0 (in the score's units); rows: ``all`` the annotated rows, ``unlabelled`` only
    those without a gold label (the teacher never contradicts a gold grade), ``labelled`` only those
    with one; gains: [C] or null (the data's label set, given by the student module through
    :meth:`set_label_set`; C-1..0 before that); relevant_up_to: int or null (likewise; 0 before).
    """

    needs_annotations = True
    ROWS = ("all", "unlabelled", "labelled")

    def __init__(self, weight: float = 1.0, form: str = "ranknet", score: str = "expected_gain",
                 temperature: float = 1.0, rows: str = "all", gains: Sequence[float] | None = None,
                 relevant_up_to: int | None = None):
        super().__init__(weight)
        if form not in RANK_FORMS:
            raise ValueError(f"rank_kd: form must be one of {RANK_FORMS}, got {form!r}")
        if score not in RANK_SCORES:
            raise ValueError(f"rank_kd: score must be one of {RANK_SCORES}, got {score!r}")
        if rows not in self.ROWS:
            raise ValueError(f"rank_kd: rows must be one of {self.ROWS}, got {rows!r}")
        if temperature <= 0:
            raise ValueError(f"rank_kd: temperature must be > 0, got {temperature}")
        self.form, self.score, self.temperature, self.rows = form, score, float(temperature), rows
        self._given = {"gains": gains is not None, "relevant_up_to": relevant_up_to is not None}
        self.gains = None if gains is None else torch.tensor([float(g) for g in gains])
        self.relevant_up_to = None if relevant_up_to is None else int(relevant_up_to)

    def set_label_set(self, gains: Sequence[float], relevant_up_to: int) -> None:
        """The data's gains and relevance cut, where the config did not give them."""
        if not self._given["gains"]:
            self.gains = torch.tensor([float(g) for g in gains])
        if not self._given["relevant_up_to"]:
            self.relevant_up_to = int(relevant_up_to)

    def forward(self, out: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        teacher_probs = self.batch_annotation(batch, "teacher_probs")
        annotated = self.batch_annotation(batch, "annotated")
        logits = self.output(out, "logits", "the student module must return classifier logits")
        if "query_index" not in batch:
            raise KeyError(f"loss term {self.name!r} needs batch['query_index'] (lrkd.data.batch)")
        if self.gains is not None and len(self.gains) != logits.shape[-1]:
            raise ValueError(f"rank_kd: {len(self.gains)} gains for {logits.shape[-1]} classes")
        mask = annotated.to(torch.bool)
        if self.rows != "all":
            labelled = batch["labels"].to(mask.device) >= 0
            mask = mask & (labelled if self.rows == "labelled" else ~labelled)
        cut = 0 if self.relevant_up_to is None else self.relevant_up_to
        s = student_scores(logits, self.score, self.gains, cut)
        t = teacher_scores(teacher_probs, self.score, self.gains, cut)
        fn = ranknet_kd if self.form == "ranknet" else listwise_kd
        return {"loss": fn(s, t.to(s.device), batch["query_index"].to(s.device), self.temperature, mask=mask)}

    def extra_repr(self) -> str:
        return (f"weight={self.weight}, form={self.form}, score={self.score}, temperature={self.temperature}, "
                f"rows={self.rows}")


__all__ = ["RANK_FORMS", "RANK_SCORES", "teacher_scores", "student_scores", "same_query_pairs", "ranknet_kd",
           "listwise_kd", "RankKDTerm"]
