"""The quality cost of an export: any scorers, on any dataset's labelled batches."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lrkd.schema import LabelSet
from lrkd.serve.quality import format_quality, quality_cost

LABELS = LabelSet(names=("good", "fair", "bad"))


def _batches():
    """Two batches whose first input id is the gold grade (what the fake scorers read)."""
    out = []
    for labels in ([0, 1, 2, 0], [2, 2, 1, 0]):
        y = torch.tensor(labels)
        ids = torch.stack([y, torch.zeros_like(y)], 1)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
                    "labels": y, "query_index": torch.tensor([0, 0, 1, 1]), "relevance": 1.0 - y.float() / 2})
    return out


def _scorer(shift_row: int | None = None):
    def score(input_ids, attention_mask, token_type_ids):
        grades = np.asarray(input_ids)[:, 0].copy()
        if shift_row is not None:
            grades[shift_row] = (grades[shift_row] + 1) % 3
        return np.eye(3, dtype=np.float32)[grades] * 0.9 + 0.1 / 3
    return score


def test_quality_cost_compares_each_scorer_with_the_one_before():
    report = quality_cost({"exact": _scorer(), "same": _scorer(), "worse": _scorer(shift_row=0)}, _batches(), LABELS,
                          progress=False)
    assert report["pairs"] == 8
    assert report["metrics"]["exact"]["accuracy"] == pytest.approx(1.0)
    assert report["metrics"]["worse"]["accuracy"] == pytest.approx(6 / 8)
    same, worse = report["differences"]["same_vs_exact"], report["differences"]["worse_vs_same"]
    assert same["max_abs_prob_diff"] == 0.0 and same["argmax_agreement"] == 1.0 and same["qwk"] == 0.0
    assert worse["argmax_agreement"] == pytest.approx(6 / 8) and worse["accuracy"] == pytest.approx(-2 / 8)
    table = format_quality(report)
    assert "| worse - same |" in table and table.count("\n") == 2 + 3 + 2 - 1
