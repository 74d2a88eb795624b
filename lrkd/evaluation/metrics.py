"""Evaluation metrics for graded relevance: classification, "relevant vs not" AUC, per-query nDCG.

Built from torchmetrics so states reduce across DDP ranks. ``RelevanceMetrics.compute`` returns flat
keys (with ``prefix``, e.g. ``"val/"``):

    accuracy, macro_f1, micro_f1, f1/<grade>   from argmax of the class probabilities
    qwk       Cohen's kappa with quadratic weights (grades are ordinal)
    auc       ROC-AUC of "relevant" (classes 0..label_set.relevant_up_to) vs the rest, scored by the
              summed probability of the relevant classes
    ndcg@k    per query over its judged items, items ranked by the expected gain sum_c p_c·gain_c,
              ideal order by the gold grade's gain; linear gain, log2 discount; mean over queries
    rmse      (only with has_relevance) RMSE between sum_c p_c·value_c and the raw relevance

Conventions (documented choices, with torchmetrics' behaviour where it decides):
- Rows with label -1 (unlabelled) are not evaluated by any metric; RMSE further skips rows whose
  relevance is NaN.
- Macro-F1 averages over the classes that occur in the gold labels or the predictions (as
  scikit-learn does); a class absent from both gets F1 = 0 in ``f1/<grade>`` but no weight in the mean.
- nDCG: a query whose judged items all have gain 0 has IDCG = 0, so nDCG is undefined; such queries
  are **skipped** (``empty_target_action="skip"``), since every ranking of them is equally good.
  The mean is over queries with at least one item of positive gain (0 if there is none). Tied
  expected gains are averaged over the tie (torchmetrics, like scikit-learn's ``ndcg_score``).
- AUC when the evaluated rows hold only one side (all relevant or none) is undefined and returned
  as NaN (torchmetrics would return 0, which reads as the worst model; scikit-learn raises).
- nDCG@k differs here from trec_eval, which scores an all-zero-gain query 0 and so lowers the mean;
  reports state the convention under their tables.

Accuracy, F1 and QWK are read from the confusion matrix (:func:`grade_metrics`,
:mod:`lrkd.evaluation.confusion`), the same functions the decision rules are fitted with.

Tuned decisions (``decision=thresholds``, :mod:`lrkd.evaluation.decision`): :func:`decision_metrics` gives the
decision-dependent keys (accuracy, macro_f1, micro_f1, f1/<grade>, qwk) of hard grades under the
prefix ``<split>/tuned/``; the threshold-free ones (auc, ndcg, rmse) do not depend on the decision.
:class:`PredictionStore` keeps an epoch's labelled probabilities and labels (gathered over DDP ranks).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torchmetrics import MeanSquaredError, Metric, SumMetric
from torchmetrics.classification import BinaryAUROC, MulticlassConfusionMatrix
from torchmetrics.retrieval import RetrievalNormalizedDCG
from torchmetrics.utilities import dim_zero_cat

from lrkd.evaluation import confusion as cm_metrics
from lrkd.schema import UNLABELLED, LabelSet


class RelevanceMetrics(nn.Module):
    """Accumulates predictions over an epoch; ``compute()`` gives the metrics dict (see module doc).

    label_set:     the grades (names, gains for nDCG, values for RMSE, relevant_up_to for AUC).
    prefix:        key prefix, e.g. ``"val/"`` or ``"test/"``.
    ndcg_k:        cut-off of nDCG (key ``ndcg@<k>``).
    has_relevance: also compute ``rmse`` against the raw numeric relevance.
    """

    def __init__(self, label_set: LabelSet, prefix: str = "val/", ndcg_k: int = 10, has_relevance: bool = False):
        super().__init__()
        self.label_set = label_set
        self.prefix = prefix
        self.ndcg_k = int(ndcg_k)
        self.has_relevance = bool(has_relevance)
        c = label_set.num_classes
        # accuracy, F1 and QWK are read from it (lrkd.evaluation.confusion: one implementation)
        self.confusion_matrix = MulticlassConfusionMatrix(num_classes=c)
        self.auc = BinaryAUROC()
        self.auc_rows = SumMetric()       # labelled rows seen, and how many of them are relevant:
        self.auc_relevant = SumMetric()   # AUC is NaN unless both sides occur (summed over ranks)
        self.ndcg = RetrievalNormalizedDCG(top_k=self.ndcg_k, empty_target_action="skip")
        self.rmse = MeanSquaredError(squared=False) if self.has_relevance else None
        self.register_buffer("gains", torch.tensor(label_set.gains, dtype=torch.float32), persistent=False)
        self.register_buffer("values", torch.tensor(label_set.values, dtype=torch.float32), persistent=False)

    @torch.no_grad()
    def update(self, probs: Tensor, labels: Tensor, query_index: Tensor, relevance: Tensor | None = None) -> None:
        """probs: [B, C] class probabilities (rows sum to 1); labels: [B] long (-1 = skip);
        query_index: [B] long dense query id; relevance: [B] float raw relevance, NaN = none."""
        c = self.label_set.num_classes
        if probs.dim() != 2 or probs.shape[1] != c or labels.shape != probs.shape[:1] \
                or query_index.shape != labels.shape:
            raise ValueError(f"RelevanceMetrics.update expects probs [B,{c}], labels [B], query_index [B], got "
                             f"{tuple(probs.shape)}, {tuple(labels.shape)}, {tuple(query_index.shape)}")
        keep = labels != UNLABELLED
        if not bool(keep.any()):
            return
        probs, labels, query_index = probs[keep].float(), labels[keep].long(), query_index[keep].long()
        if bool(((labels < 0) | (labels >= c)).any()):
            bad = labels[(labels < 0) | (labels >= c)][0].item()
            raise ValueError(f"RelevanceMetrics.update: label {bad} is not a class index in [0, {c})")
        self.confusion_matrix.update(probs, labels)
        r = self.label_set.relevant_up_to
        self.auc.update(probs[:, : r + 1].sum(dim=-1).clamp(0.0, 1.0), (labels <= r).long())
        self.auc_rows.update(float(len(labels)))
        self.auc_relevant.update(float((labels <= r).sum()))
        self.ndcg.update(probs @ self.gains, self.gains[labels], indexes=query_index)
        if self.rmse is not None and relevance is not None:
            relevance = relevance[keep].float()
            finite = torch.isfinite(relevance)
            if bool(finite.any()):
                self.rmse.update((probs @ self.values)[finite], relevance[finite])

    def compute(self) -> dict[str, Tensor]:
        """``{prefix + name: 0-dim float tensor}``; see the module docstring for the names."""
        p = self.prefix
        counts = self.confusion_matrix.compute()
        out = {p + k: counts.new_tensor(v, dtype=torch.float32)
               for k, v in grade_metrics(counts.cpu().numpy(), self.label_set).items()}
        rows, relevant = float(self.auc_rows.compute()), float(self.auc_relevant.compute())  # same on every rank
        out[f"{p}auc"] = _compute_or_nan(self.auc) if 0 < relevant < rows else self.gains.new_tensor(float("nan"))
        out[f"{p}ndcg@{self.ndcg_k}"] = _compute_or_nan(self.ndcg)
        if self.rmse is not None:
            out[f"{p}rmse"] = self.rmse.compute()
        return {k: v.float() for k, v in out.items()}

    def confusion(self) -> Tensor:
        """[C, C] long counts, rows = gold grade, columns = predicted grade (argmax), in label-set order."""
        return self.confusion_matrix.compute()

    def reset(self) -> None:
        for module in self.children():
            module.reset()


def grade_metrics(counts, label_set: LabelSet) -> dict[str, float]:
    """The decision-dependent metrics of a [C, C] confusion matrix (rows = gold): ``{accuracy,
    macro_f1, micro_f1, f1/<grade>, qwk}`` (:mod:`lrkd.evaluation.confusion`; micro-F1 = accuracy
    with one label per row)."""
    out = {"accuracy": cm_metrics.accuracy(counts), "macro_f1": cm_metrics.macro_f1(counts),
           "micro_f1": cm_metrics.accuracy(counts)}
    for name, value in zip(label_set.names, cm_metrics.class_f1(counts)):
        out[f"f1/{name}"] = float(value)
    out["qwk"] = cm_metrics.qwk(counts)
    return out


def decision_metrics(preds: Tensor, labels: Tensor, label_set: LabelSet, prefix: str = "val/tuned/") -> dict[str, Tensor]:
    """The decision-dependent metrics of hard grades ``preds [N]`` against gold ``labels [N]`` (long,
    no -1): ``{prefix + accuracy | macro_f1 | micro_f1 | f1/<grade> | qwk: 0-dim float}``, computed
    as :class:`RelevanceMetrics` computes them from the argmax (:func:`grade_metrics`)."""
    counts = cm_metrics.confusion(preds.long().cpu().numpy(), labels.long().cpu().numpy(), label_set.num_classes)
    return {prefix + k: torch.tensor(v, dtype=torch.float32, device=preds.device)
            for k, v in grade_metrics(counts, label_set).items()}


class PredictionStore(Metric):
    """An epoch's labelled rows: ``update(probs [B, C], labels [B])`` (label -1 rows dropped);
    ``compute() -> (probs [N, C] float32, labels [N] long)``, concatenated over batches and ranks."""

    full_state_update = False

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = int(num_classes)
        self.add_state("probs", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, probs: Tensor, labels: Tensor) -> None:
        keep = labels != UNLABELLED
        self.probs.append(probs[keep].detach().float())
        self.labels.append(labels[keep].detach().long())

    def compute(self) -> tuple[Tensor, Tensor]:
        if isinstance(self.probs, list) and not self.probs:
            return torch.zeros(0, self.num_classes), torch.zeros(0, dtype=torch.long)
        return dim_zero_cat(self.probs), dim_zero_cat(self.labels)


def _compute_or_nan(metric) -> Tensor:
    """``metric.compute()`` for a metric that keeps its samples in a list; NaN when it has none at
    all (no labelled row was ever seen: torchmetrics raises "No samples to concatenate"). Every rank
    still calls ``compute``, so the DDP gather stays in step (torchmetrics pads an empty rank)."""
    try:
        return metric.compute()
    except ValueError as err:
        if "No samples" not in str(err):
            raise
        return torch.tensor(float("nan"))


__all__ = ["RelevanceMetrics", "grade_metrics", "decision_metrics", "PredictionStore"]
