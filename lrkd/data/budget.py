"""The gold-label budget: gold grades on a nested, seeded subset of the train queries only.

``data.gold = {fraction: f, seed: s, drop_unlabelled: bool}``. The train queries (those of the
split's train rows, before any pool) are ordered by a permutation seeded by ``s`` (a function of
the sorted query ids and ``s`` only), and the first ``ceil(f * n)`` of them keep their gold grades.
For one seed and one split the subsets are therefore nested: 10 % ⊂ 25 % ⊂ 50 % ⊂ 100 %.

Every other train row that had a grade keeps its features but trains as unlabelled: its ``label``
becomes -1 (``UNLABELLED``: ``ce``/``ordinal`` skip it, or train on the teacher's argmax where
``teacher_label_for_unlabelled``; ``kd`` with ``rows: unlabelled`` distils on it) and its
``relevance`` NaN. The hidden grades stay in the frame's ``gold_label`` (and ``gold_relevance``)
column, for analysis only: nothing that trains reads it. Val and test rows keep their grades (model
selection on val is allowed at every budget). With ``drop_unlabelled`` every unlabelled train row
(the hidden ones, and pool rows) leaves the train split: the gold-only arm trains on its gold rows
alone.

The defaults (fraction 1.0, drop_unlabelled false) change nothing: the frame is returned as is.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from lrkd.schema import UNLABELLED

GOLD_LABEL = "gold_label"            # the grade before the budget hid it (every row; analysis only)
GOLD_RELEVANCE = "gold_relevance"    # the raw relevance before the budget hid it (when the frame has one)
DEFAULT_GOLD = {"fraction": 1.0, "seed": 0, "drop_unlabelled": False}


def gold_options(options: Mapping | None, default_seed: int = 0) -> dict:
    """``data.gold`` checked and completed: {fraction in (0, 1], seed: int, drop_unlabelled: bool}.
    A missing or null seed is ``default_seed`` (the training seed)."""
    given = dict(options or {})
    unknown = set(given) - set(DEFAULT_GOLD)
    if unknown:
        raise ValueError(f"data.gold has unknown keys {sorted(unknown)}; expected {sorted(DEFAULT_GOLD)}")
    out = {**DEFAULT_GOLD, **{k: v for k, v in given.items() if v is not None}}
    out["fraction"] = float(out["fraction"])
    if not 0.0 < out["fraction"] <= 1.0:
        raise ValueError(f"data.gold.fraction must be in (0, 1], got {out['fraction']}")
    out["seed"] = int(given["seed"]) if given.get("seed") is not None else int(default_seed)
    out["drop_unlabelled"] = bool(out["drop_unlabelled"])
    return out


def is_default(options: Mapping) -> bool:
    """Whether the budget leaves the data as it is (every train grade kept, nothing dropped)."""
    return float(options["fraction"]) >= 1.0 and not options["drop_unlabelled"]


def gold_queries(train_query_ids: Sequence, fraction: float, seed: int) -> list:
    """The gold train queries: the distinct ``train_query_ids`` in the order of a permutation seeded
    by ``seed`` (of their sorted ids), the first ``ceil(fraction * n)``. A prefix of one order, so
    smaller fractions give subsets of larger ones for the same ids and seed."""
    queries = sorted(set(train_query_ids), key=str)
    order = np.random.default_rng(int(seed)).permutation(len(queries))
    count = min(len(queries), math.ceil(float(fraction) * len(queries) - 1e-9))
    return [queries[i] for i in order[:count]]


def apply_gold_budget(df: pd.DataFrame, splits: Mapping[str, np.ndarray], options: Mapping,
                      train_queries: Sequence | None = None) -> tuple[pd.DataFrame, dict[str, np.ndarray], list]:
    """Apply ``options`` (:func:`gold_options`) to the frame and the splits (module docstring).

    train_queries: the queries to draw the gold ones from (default: those of ``splits["train"]``;
                   the data module passes those of the split before the pool was appended).
    Returns (frame, splits, gold query ids in draw order). The frame is a copy when anything
    changes (``label``/``relevance`` hidden, ``gold_label``/``gold_relevance`` added); the row
    order and count never change, so row indices, tokens and annotations stay aligned.
    """
    splits = {k: np.asarray(v, dtype=np.int64) for k, v in splits.items()}
    train = splits["train"]
    if train_queries is None:
        train_queries = df["query_id"].iloc[train].tolist()
    gold = gold_queries(train_queries, options["fraction"], options["seed"])
    if is_default(options):
        return df, splits, gold
    out = df.copy()
    out.attrs = dict(df.attrs)
    labels = out["label"].to_numpy(dtype=np.int64).copy()
    out[GOLD_LABEL] = labels.copy()
    in_train = np.zeros(len(out), dtype=bool)
    in_train[train] = True
    hidden = in_train & (labels != UNLABELLED) & ~out["query_id"].isin(set(gold)).to_numpy()
    labels[hidden] = UNLABELLED
    out["label"] = labels
    if "relevance" in out.columns:
        relevance = out["relevance"].to_numpy(dtype=np.float64)
        out[GOLD_RELEVANCE] = relevance
        out["relevance"] = np.where(hidden, np.nan, relevance)
    if options["drop_unlabelled"]:
        splits["train"] = train[labels[train] != UNLABELLED]
    return out, splits, gold


__all__ = ["GOLD_LABEL", "GOLD_RELEVANCE", "DEFAULT_GOLD", "gold_options", "is_default", "gold_queries",
           "apply_gold_budget"]
