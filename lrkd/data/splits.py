"""Split judged pairs by query: every query's pairs land in exactly one split.

The fractions are fractions of **pairs**, reached by assigning **whole queries** greedily: queries
are visited in a seeded random order and each goes to the split furthest below its target number of
pairs. A split therefore misses its target by at most the size of one query, and a query with many
judged items does not skew the split sizes the way a per-query fraction would.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

DEFAULT_FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}
SPLIT_NAMES = ("train", "val", "test")


def split_by_query(query_ids: Sequence, fractions: Mapping[str, float] | None = None,
                   seed: int = 42) -> dict[str, np.ndarray]:
    """Assign row indices to splits so that no query is in two splits.

    query_ids: [N] the query id of every row (any hashable; typically ``df["query_id"]``).
    fractions: split name -> target fraction of the N pairs; >= 0, summing to 1. Default
               70/15/15 train/val/test. The result keeps this key order.
    seed:      the order in which queries are dealt out; the split depends only on the seed and on
               the set of (query id, pair count), not on the row order.

    Returns split name -> sorted int64 array of row indices; the arrays partition ``range(N)``.
    Every split with a positive fraction gets at least one query when there are as many queries as
    such splits (then a split may miss its target by more than one query's size).
    """
    fractions = dict(DEFAULT_FRACTIONS if fractions is None else fractions)
    if not fractions:
        raise ValueError("split_by_query needs at least one split")
    names = list(fractions)
    target = np.array([float(fractions[n]) for n in names])
    if (target < 0).any() or not np.isclose(target.sum(), 1.0, atol=1e-6):
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")

    codes, _ = pd.factorize(pd.Series(list(query_ids), dtype=object), sort=True)
    n_rows = len(codes)
    if n_rows and (codes < 0).any():
        raise ValueError("query ids must not be missing (None/NaN)")
    pairs_per_query = np.bincount(codes, minlength=codes.max() + 1 if n_rows else 0)
    order = np.random.default_rng(seed).permutation(len(pairs_per_query))

    target_pairs = target * n_rows
    assigned = np.zeros(len(names))
    split_of_query = np.empty(len(pairs_per_query), dtype=np.int64)
    active = target > 0
    for q in order:  # deal each query to the split furthest below its target (ties: the earlier split)
        k = int(np.argmax(np.where(active, target_pairs - assigned, -np.inf)))
        split_of_query[q] = k
        assigned[k] += pairs_per_query[q]
    # A split with a positive target left without a query (a few large queries took everything) gets
    # the smallest query of the split furthest above its target among those holding >= 2 queries.
    for k in np.flatnonzero(active):
        if (split_of_query == k).any():
            continue
        counts = np.bincount(split_of_query, minlength=len(names))
        donors = np.flatnonzero(counts >= 2)
        if len(donors) == 0:
            break  # fewer queries than splits
        donor = donors[np.argmax((assigned - target_pairs)[donors])]
        members = np.flatnonzero(split_of_query == donor)
        q = members[np.argmin(pairs_per_query[members])]
        split_of_query[q] = k
        assigned[donor] -= pairs_per_query[q]
        assigned[k] += pairs_per_query[q]

    split_of_row = split_of_query[codes] if n_rows else np.empty(0, dtype=np.int64)
    return {name: np.flatnonzero(split_of_row == k).astype(np.int64) for k, name in enumerate(names)}


def sample_queries(df: pd.DataFrame, max_pairs: int, seed: int) -> pd.DataFrame:
    """Whole queries in a seeded random order, until at least ``max_pairs`` pairs; file order kept."""
    if len(df) <= max_pairs:
        return df
    sizes = df.groupby("query_id", sort=False).size()
    order = np.random.default_rng(seed).permutation(len(sizes))
    count = int(np.searchsorted(np.cumsum(sizes.to_numpy()[order]), max_pairs) + 1)
    chosen = set(sizes.index[order[:count]])
    out = df[df["query_id"].isin(chosen)].reset_index(drop=True)
    out.attrs = dict(df.attrs)
    return out


# --------------------------------------------------------------------------- cross-validation by query
def query_folds(query_ids: Sequence, folds: int, seed: int = 42) -> np.ndarray:
    """[N] the fold (0..folds-1) of every row: whole queries dealt into ``folds`` folds of about
    equal pair counts by :func:`split_by_query`'s greedy deal (the same seeded query order). The
    assignment depends only on the seed and the set of (query id, pair count), not on which fold
    is tested, so the folds partition the queries: every query is in exactly one fold."""
    folds = int(folds)
    n_queries = len(set(query_ids))
    if folds < 2 or folds > n_queries:
        raise ValueError(f"data.split.folds must be in [2, {n_queries}] (the number of queries), got {folds}")
    parts = split_by_query(query_ids, {f"fold{k}": 1.0 / folds for k in range(folds)}, seed=seed)
    fold_of_row = np.empty(len(query_ids), dtype=np.int64)
    for k, rows in enumerate(parts.values()):
        fold_of_row[rows] = k
    return fold_of_row


def split_by_query_fold(query_ids: Sequence, folds: int, fold: int, val: float = 0.15,
                        seed: int = 42) -> dict[str, np.ndarray]:
    """Cross-validation by query: fold ``fold`` of :func:`query_folds` is the test split; val is
    carved from the other queries (``val`` = a fraction of ALL pairs, dealt greedily as
    :func:`split_by_query` deals, seeded by (seed, fold)); train is the rest.

    Returns {"train", "val", "test"} -> sorted int64 row indices, a partition of ``range(N)`` in
    which no query is in two splits. Over fold = 0..folds-1 every query is a test query exactly once.
    """
    folds, fold, val = int(folds), int(fold), float(val)
    if not 0 <= fold < folds:
        raise ValueError(f"data.split.fold must be in [0, {folds - 1}] for folds={folds}, got {fold}")
    rest_share = 1.0 - 1.0 / folds
    if not 0.0 <= val < rest_share:
        raise ValueError(f"data.split.val={val} must be >= 0 and leave train pairs beside the test fold "
                         f"(< {rest_share:.3f} with {folds} folds)")
    fold_of_row = query_folds(query_ids, folds, seed)
    test = np.flatnonzero(fold_of_row == fold).astype(np.int64)
    rest = np.flatnonzero(fold_of_row != fold)
    ids = np.asarray(list(query_ids), dtype=object)
    if val == 0.0:
        return {"train": rest.astype(np.int64), "val": np.empty(0, dtype=np.int64), "test": test}
    # the val share of the remaining pairs that makes val about `val` of all pairs
    share = min(val * len(ids) / max(len(rest), 1), 1.0)
    val_seed = int(np.random.SeedSequence([int(seed), fold]).generate_state(1)[0])
    inner = split_by_query(ids[rest].tolist(), {"train": 1.0 - share, "val": share}, seed=val_seed)
    return {"train": rest[inner["train"]].astype(np.int64), "val": rest[inner["val"]].astype(np.int64),
            "test": test}


def split_from_config(query_ids: Sequence, split: Mapping, default_seed: int = 42) -> dict[str, np.ndarray]:
    """The splits of ``data.split``: ``{train, val, test: fractions of pairs, seed}`` for one split
    (:func:`split_by_query`), or with ``folds: K`` (an int, not null) cross-validation by query,
    ``fold: i`` the test fold and ``val`` the val fraction of all pairs (:func:`split_by_query_fold`;
    train and test fractions are then not used). ``seed`` defaults to ``default_seed``."""
    split = dict(split or {})
    seed = int(split.pop("seed", default_seed) if split.get("seed") is not None else default_seed)
    folds, fold = split.pop("folds", None), split.pop("fold", None)
    if folds is not None:
        return split_by_query_fold(query_ids, int(folds), 0 if fold is None else int(fold),
                                   val=float(split.get("val", DEFAULT_FRACTIONS["val"])), seed=seed)
    fractions = {k: float(v) for k, v in split.items()}
    if set(fractions) != set(SPLIT_NAMES):
        raise ValueError(f"split needs fractions for exactly {SPLIT_NAMES} (plus an optional seed, or folds and "
                         f"fold), got {list(split)}")
    return split_by_query(query_ids, fractions, seed=seed)
