"""Per-perspective diagnostics of a multi-perspective teacher (the analysis of the LRKD paper).

Each perspective k gives its own verdict on a pair: a grade distribution read after its rationale
alone (:class:`lrkd.teacher.label.readers.PerspectiveVerdictReader`). The teacher's *final* label is
the distribution read after all K rationales. For every perspective, over the gold-labelled pairs
where its rationale is not empty:

- ``agree_gold``: share whose verdict (argmax) equals the gold grade; ``agree_gold_binary``: the
  same for relevant (grades 0..relevant_up_to) against not; ``auc``: ROC-AUC of its P(relevant);
  ``qwk`` and ``macro_f1`` against gold (lrkd's one implementation, :mod:`lrkd.evaluation.confusion`);
- ``agree_final``: share whose verdict equals the final label;
- ``corrects``: pairs the final label gets wrong and this perspective gets right, as a count and as
  a share of the final label's mistakes; ``breaks``: the reverse (final right, perspective wrong);
- ``corrected`` [C, C]: those corrected pairs by (gold grade, final grade), i.e. which mismatches
  the perspective corrects; ``confusion`` [C, C]: gold grade (rows) against its verdict.

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
    return float(binary_auroc(torch.as_tensor(p_relevant, dtype=torch.float64), torch.as_tensor(relevant.astype(np.int64))))


def perspective_diagnostics(verdicts: np.ndarray, final: np.ndarray, gold: np.ndarray, names: Sequence[str],
                            relevant_up_to: int = 0, has_rationale: np.ndarray | None = None) -> dict:
    """The diagnostics above. ``verdicts`` [N, K, C] and ``final`` [N, C]: grade distributions;
    ``gold`` [N]: grade ints (< 0 = unlabelled, left out); ``names``: the K perspectives;
    ``has_rationale`` [N, K] bool (default all True). Returns {"pairs": n labelled,
    "perspectives": {name or "final": {metric: value, "confusion": [[..]], "corrected": [[..]]}}}."""
    verdicts, final, gold = np.asarray(verdicts, np.float64), np.asarray(final, np.float64), np.asarray(gold)
    n, k, c = verdicts.shape
    if final.shape != (n, c) or gold.shape != (n,) or len(names) != k:
        raise ValueError(f"verdicts {verdicts.shape}, final {final.shape}, gold {gold.shape} and {len(names)} "
                         f"names do not agree (want [N, K, C], [N, C], [N], K)")
    has = np.ones((n, k), bool) if has_rationale is None else np.asarray(has_rationale, bool)
    labelled = gold >= 0
    final_grade = final.argmax(axis=1)
    final_right = final_grade == gold

    def row(dist: np.ndarray, keep: np.ndarray) -> dict:
        g, d, fg = gold[keep].astype(np.int64), dist[keep], final_grade[keep]
        grade = d.argmax(axis=1)
        cm = confusion(grade, g, c)
        relevant = g <= relevant_up_to
        wrong_final = fg != g
        corrects = wrong_final & (grade == g)
        breaks = ~wrong_final & (grade != g)
        return {"pairs": int(keep.sum()), "agree_gold": accuracy(cm),
                "agree_gold_binary": float(np.mean((grade <= relevant_up_to) == relevant)) if len(g) else float("nan"),
                "auc": _auc(d[:, :relevant_up_to + 1].sum(axis=1), relevant),
                "qwk": qwk(cm), "macro_f1": macro_f1(cm),
                "agree_final": float(np.mean(grade == fg)) if len(g) else float("nan"),
                "corrects": int(corrects.sum()),
                "corrects_share": float(corrects.sum() / wrong_final.sum()) if wrong_final.any() else float("nan"),
                "breaks": int(breaks.sum()),
                "confusion": cm.tolist(), "corrected": confusion(fg[corrects], g[corrects], c).tolist()}

    out = {name: row(verdicts[:, i], labelled & has[:, i]) for i, name in enumerate(names)}
    out[FINAL] = row(final, labelled)
    return {"pairs": int(labelled.sum()), "final_mistakes": int((labelled & ~final_right).sum()), "perspectives": out}


__all__ = ["perspective_diagnostics", "FINAL"]
