"""The teacher evaluated as a classifier of the labelled pairs (``stage.evaluate`` of the teacher
stages): it generates its rationales and reads the grade at the label position, as annotation does."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from lrkd.schema import UNLABELLED, LabelSet
from lrkd.evaluation.metrics import RelevanceMetrics
from lrkd.teacher.label.annotate import label_pairs, pair_prompts
from lrkd.teacher.prompts import Perspective
from lrkd.teacher.tokens import grade_token_ids


def evaluate_teacher(model, tokenizer, frame: pd.DataFrame, rows: Sequence[int], perspectives: Sequence[Perspective],
                     grade_names: Sequence[str], *, batch_size: int = 8, max_new_tokens: int = 256,
                     progress: bool = True, max_item_words: int | None = None, calibrate: bool = False,
                     no_repeat_ngram_size: int = 0) -> dict[str, float]:
    """The teacher as a classifier on labelled rows: generate, then the argmax of the soft label at
    the (teacher-forced) label position (calibrated with ``calibrate``, as the annotation's).
    Returns {macro_f1, qwk, ndcg@10, auc, accuracy, parse_rate, pairs}
    (:class:`lrkd.evaluation.metrics.RelevanceMetrics`; unlabelled rows are skipped)."""
    rows = np.asarray([r for r in rows if int(frame["label"].iloc[int(r)]) != UNLABELLED], dtype=np.int64)
    metrics = RelevanceMetrics(LabelSet(tuple(grade_names)), prefix="")
    grade_ids = grade_token_ids(tokenizer, grade_names)
    query_index = pd.factorize(frame["query_id"])[0]
    parsed = 0
    was_training = model.training
    model.eval()
    try:
        for b in tqdm(range(0, len(rows), int(batch_size)), desc="evaluate teacher", disable=not progress):
            batch_rows = rows[b:b + int(batch_size)]
            prompts = pair_prompts(tokenizer, frame, batch_rows, perspectives, grade_names, max_item_words)
            out = label_pairs(model, tokenizer, prompts, perspectives, grade_names, max_new_tokens, grade_ids=grade_ids,
                              calibrate=calibrate, no_repeat_ngram_size=no_repeat_ngram_size)
            parsed += sum(e is None for e in out.errors)
            metrics.update(torch.from_numpy(out.soft_labels),
                           torch.as_tensor(frame["label"].to_numpy()[batch_rows], dtype=torch.long),
                           torch.as_tensor(query_index[batch_rows], dtype=torch.long))
    finally:
        model.train(was_training)
    if not len(rows):
        return {"pairs": 0}
    values = metrics.compute()
    return {"macro_f1": float(values["macro_f1"]), "qwk": float(values["qwk"]),
            "ndcg@10": float(values["ndcg@10"]), "auc": float(values["auc"]),
            "accuracy": float(values["accuracy"]), "parse_rate": parsed / len(rows), "pairs": int(len(rows))}


__all__ = ["evaluate_teacher"]
