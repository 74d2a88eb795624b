"""Per-perspective diagnostics of a multi-perspective teacher (the analysis of the LRKD paper).

Each perspective k gives its own verdict on a pair: a distribution over the teacher's answers read
after its rationale alone (:class:`lrkd.teacher.label.readers.PerspectiveVerdictReader`). The answers
are the C grades (compared with gold grade for grade) or yes/no (A = 2: answer 0 = relevant,
compared with gold relevant, grades 0..relevant_up_to). The teacher's *final* label is the verdict
after all K rationales. For every perspective, over the gold-labelled pairs where its rationale is
not empty:

- ``agree_gold``: share whose verdict (argmax) equals the gold target (grade, or relevant/not);
  ``agree_gold_binary``: the same for relevant against not; ``auc``: ROC-AUC of its P(relevant);
  ``qwk`` and ``macro_f1`` against the gold target (:mod:`lrkd.evaluation.confusion`);
- ``agree_final``: share whose verdict equals the final label;
- ``corrects``: pairs the final label gets wrong and this perspective gets right, as a count and as
  a share of the final label's mistakes; ``breaks``: the reverse (final right, perspective wrong);
- ``corrected`` [C, A]: those corrected pairs by (gold grade, final answer), i.e. which mismatches
  the perspective corrects; ``confusion`` [C, A]: gold grade (rows) against its verdict.

The final label gets the same row (its ``corrects`` are 0 by construction).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torchmetrics.functional.classification import binary_auroc

from lrkd.evaluation.confusion import accuracy, confusion, macro_f1, qwk

FINAL = "final"


def _auc(p_relevant: np.ndarray, relevant: np.ndarray) -> float:
    if len(np.unique(relevant)) < 2:
        return float("nan")
    return float(binary_auroc(torch.as_tensor(p_relevant, dtype=torch.float64),
                              torch.as_tensor(relevant.astype(np.int64))))


def perspective_diagnostics(verdicts: np.ndarray, final: np.ndarray, gold: np.ndarray, names: Sequence[str],
                            num_grades: int, relevant_up_to: int = 0,
                            has_rationale: np.ndarray | None = None) -> dict:
    """The diagnostics above. ``verdicts`` [N, K, A] and ``final`` [N, A]: answer distributions
    (A = ``num_grades``, or 2 for yes/no); ``gold`` [N]: grade ints (< 0 = unlabelled, left out);
    ``names``: the K perspectives; ``has_rationale`` [N, K] bool (default all True). Returns
    {"pairs", "final_mistakes", "answers": "grades" | "yes_no", "relevant_up_to", "perspectives": {name or "final":
    {metric: value, "confusion": [[..]], "corrected": [[..]]}}}."""
    verdicts, final, gold = np.asarray(verdicts, np.float64), np.asarray(final, np.float64), np.asarray(gold)
    n, k, a = verdicts.shape
    c = int(num_grades)
    if final.shape != (n, a) or gold.shape != (n,) or len(names) != k or a not in (c, 2):
        raise ValueError(f"verdicts {verdicts.shape}, final {final.shape}, gold {gold.shape}, {len(names)} names "
                         f"and {c} grades do not agree (want [N, K, A], [N, A], [N], K names, A = {c} or 2)")
    yes_no = a == 2 and c != 2
    has = np.ones((n, k), bool) if has_rationale is None else np.asarray(has_rationale, bool)
    labelled = gold >= 0
    target = np.where(gold > relevant_up_to, 1, 0) if yes_no else gold  # what a verdict is compared with
    relevant_answers = 1 if yes_no else relevant_up_to + 1  # answers 0..this-1 are "relevant"
    final_answer = final.argmax(axis=1)

    def row(dist: np.ndarray, keep: np.ndarray) -> dict:
        g, t, d, fa = gold[keep].astype(np.int64), target[keep].astype(np.int64), dist[keep], final_answer[keep]
        answer = d.argmax(axis=1)
        cm = confusion(answer, t, a)
        relevant = g <= relevant_up_to
        wrong_final = fa != t
        corrects = wrong_final & (answer == t)
        breaks = ~wrong_final & (answer != t)
        return {"pairs": int(keep.sum()), "agree_gold": accuracy(cm),
                "agree_gold_binary": (float(np.mean((answer < relevant_answers) == relevant)) if len(g)
                                      else float("nan")),
                "auc": _auc(d[:, :relevant_answers].sum(axis=1), relevant),
                "qwk": qwk(cm), "macro_f1": macro_f1(cm),
                "agree_final": float(np.mean(answer == fa)) if len(g) else float("nan"),
                "corrects": int(corrects.sum()),
                "corrects_share": float(corrects.sum() / wrong_final.sum()) if wrong_final.any() else float("nan"),
                "breaks": int(breaks.sum()),
                "confusion": _counts(g, answer, c, a), "corrected": _counts(g[corrects], fa[corrects], c, a)}

    out = {name: row(verdicts[:, i], labelled & has[:, i]) for i, name in enumerate(names)}
    out[FINAL] = row(final, labelled)
    return {"pairs": int(labelled.sum()), "final_mistakes": int((labelled & (final_answer != target)).sum()),
            "answers": "yes_no" if yes_no else "grades", "relevant_up_to": int(relevant_up_to), "perspectives": out}


def _counts(grades: np.ndarray, answers: np.ndarray, c: int, a: int) -> list[list[int]]:
    """[C, A] counts of (gold grade, answer)."""
    return np.bincount(grades * a + answers, minlength=c * a).reshape(c, a).tolist()


__all__ = ["perspective_diagnostics", "FINAL"]
