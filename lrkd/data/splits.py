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
