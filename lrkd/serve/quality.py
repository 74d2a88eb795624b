"""The quality cost of serving an export: several scorers of one student (eager, its fp32 ONNX
export, the int8 one, ...) scored side by side on the same labelled batches of any dataset
(``lrkd export --measure-quality`` builds them from a ``conf/data`` option, chorus_icecat's test
split by default). A scorer is anything with the :class:`lrkd.serve.scorers.Scorer` call."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from lrkd.data.batch import INPUT_KEYS
from lrkd.evaluation.metrics import RelevanceMetrics
from lrkd.schema import LabelSet
from lrkd.serve.scorers import Scorer


def quality_cost(scorers: Mapping[str, Scorer], batches: Iterable[Mapping[str, Any]], label_set: LabelSet, *,
                 has_relevance: bool = True, progress: bool = True) -> dict:
    """Quality of each scorer on ``batches`` (dicts of tensors: the model inputs ``INPUT_KEYS`` [B, L],
    ``labels`` [B], ``query_index`` [B], ``relevance`` [B]; a data module's test loader), and how far
    each scorer moves from the one before it (in ``scorers``' order).

    Returns {"pairs", "metrics": {scorer: {metric: value}}, "differences": {"<b>_vs_<a>":
    {"max_abs_prob_diff", "argmax_agreement", <metric>: value of b - value of a}}}. Metrics are
    :class:`lrkd.evaluation.metrics.RelevanceMetrics` (macro_f1, qwk, ndcg@10, ...) without prefix."""
    names = list(scorers)
    pairs = list(zip(names, names[1:]))
    metrics = {k: RelevanceMetrics(label_set, prefix="", has_relevance=has_relevance) for k in names}
    max_diff = {pair: 0.0 for pair in pairs}
    agree = {pair: 0 for pair in pairs}
    total = 0
    for batch in tqdm(batches, desc="quality", disable=not progress):
        inputs = {k: np.asarray(batch[k]) for k in INPUT_KEYS}
        probs = {k: np.asarray(s(**inputs), dtype=np.float32) for k, s in scorers.items()}
        for k, p in probs.items():
            metrics[k].update(torch.from_numpy(p), batch["labels"], batch["query_index"], batch.get("relevance"))
        for a, b in pairs:
            max_diff[a, b] = max(max_diff[a, b], float(np.abs(probs[b] - probs[a]).max()))
            agree[a, b] += int((probs[b].argmax(-1) == probs[a].argmax(-1)).sum())
        total += len(batch["labels"])
    values = {k: {name: float(v) for name, v in m.compute().items()} for k, m in metrics.items()}
    differences = {f"{b}_vs_{a}": {"max_abs_prob_diff": max_diff[a, b], "argmax_agreement": agree[a, b] / max(total, 1),
                                   **{name: values[b][name] - values[a][name] for name in values[a]}}
                   for a, b in pairs}
    return {"pairs": total, "metrics": values, "differences": differences}


def format_quality(report: dict, keys=("macro_f1", "qwk", "ndcg@10", "accuracy")) -> str:
    """A small Markdown table of :func:`quality_cost`'s result: a row per scorer, then a row per
    difference (``b - a``)."""
    lines = ["| model | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name, m in report["metrics"].items():
        lines.append(f"| {name} | " + " | ".join(f"{m[k]:.4f}" for k in keys) + " |")
    for name, d in report["differences"].items():
        lines.append(f"| {name.replace('_vs_', ' - ')} | " + " | ".join(f"{d[k]:+.4f}" for k in keys) + " |")
    return "\n".join(lines)


__all__ = ["quality_cost", "format_quality"]
