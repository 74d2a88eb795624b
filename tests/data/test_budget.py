"""The gold-label budget: nested seeded subsets of the train queries, labels hidden on the rest of train."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lrkd.data.budget import GOLD_LABEL, GOLD_RELEVANCE, apply_gold_budget, gold_options, gold_queries
from lrkd.data.splits import split_by_query


def make_frame(num_queries=40, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for q in range(num_queries):
        for i in range(int(rng.integers(1, 6))):
            label = int(rng.integers(0, 3))
            rows.append({"query_id": f"q{q:02d}", "query": f"query {q}", "item_id": f"i{q}-{i}",
                         "item_title": f"item {i}", "label": label, "relevance": 3.0 - label})
    return pd.DataFrame(rows)


def test_gold_queries_are_nested_across_fractions_and_sized_by_ceil():
    queries = [f"q{i}" for i in range(99)]
    subsets = {f: gold_queries(queries, f, seed=3) for f in (0.1, 0.25, 0.5, 1.0)}
    assert [len(subsets[f]) for f in (0.1, 0.25, 0.5, 1.0)] == [10, 25, 50, 99]
    assert set(subsets[0.1]) < set(subsets[0.25]) < set(subsets[0.5]) < set(subsets[1.0]) == set(queries)
    # a function of the set of queries and the seed: not of their order or repetition
    assert gold_queries(list(reversed(queries)) * 3, 0.25, seed=3) == subsets[0.25]
    assert set(gold_queries(queries, 0.25, seed=4)) != set(subsets[0.25])
    assert len(gold_queries([f"q{i}" for i in range(80)], 0.1, seed=0)) == 8   # 0.1 * 80 is 8.000000000000002


def test_budget_hides_labels_exactly_on_the_non_gold_train_rows():
    df = make_frame()
    splits = split_by_query(df["query_id"].tolist(), seed=1)
    out, new_splits, gold = apply_gold_budget(df, splits, gold_options({"fraction": 0.25, "seed": 7}))
    train_queries = set(df["query_id"].iloc[splits["train"]])
    assert len(gold) == int(np.ceil(0.25 * len(train_queries))) and set(gold) <= train_queries
    in_train = np.zeros(len(df), bool)
    in_train[splits["train"]] = True
    hidden = in_train & ~df["query_id"].isin(gold).to_numpy()
    assert (out["label"].to_numpy()[hidden] == -1).all() and out["relevance"].to_numpy()[hidden].tolist() == \
        pytest.approx([np.nan] * int(hidden.sum()), nan_ok=True)
    assert (out["label"].to_numpy()[~hidden] == df["label"].to_numpy()[~hidden]).all()   # gold train, val, test
    assert out[GOLD_LABEL].tolist() == df["label"].tolist() and out[GOLD_RELEVANCE].tolist() == df["relevance"].tolist()
    assert all(np.array_equal(new_splits[k], splits[k]) for k in splits)                  # rows stay
    assert out[["query_id", "item_id", "query", "item_title"]].equals(df[["query_id", "item_id", "query", "item_title"]])
    assert "gold_label" not in df and df["label"].min() >= 0                              # the input is not touched


def test_drop_unlabelled_keeps_the_gold_train_rows_alone():
    df = make_frame()
    df.loc[len(df)] = {"query_id": "q00", "query": "query 0", "item_id": "pool", "item_title": "pool item",
                       "label": -1, "relevance": np.nan}                                   # an unlabelled pool row
    splits = split_by_query(df["query_id"].tolist(), seed=1)
    out, kept, gold = apply_gold_budget(df, splits, gold_options({"fraction": 0.5, "seed": 2, "drop_unlabelled": True}))
    assert set(out["query_id"].iloc[kept["train"]]) == set(gold)
    assert (out["label"].iloc[kept["train"]] >= 0).all()
    expected = [r for r in splits["train"] if df["query_id"].iloc[r] in set(gold) and df["label"].iloc[r] >= 0]
    assert kept["train"].tolist() == expected
    assert np.array_equal(kept["val"], splits["val"]) and np.array_equal(kept["test"], splits["test"])
    # at 100 % gold, drop_unlabelled drops the unlabelled rows only
    _, all_gold, _ = apply_gold_budget(df, splits, gold_options({"drop_unlabelled": True}))
    assert all_gold["train"].tolist() == [r for r in splits["train"] if df["label"].iloc[r] >= 0]


def test_the_default_budget_changes_nothing():
    df = make_frame()
    splits = split_by_query(df["query_id"].tolist(), seed=1)
    out, same, gold = apply_gold_budget(df, splits, gold_options(None))
    assert out is df and all(np.array_equal(same[k], splits[k]) for k in splits)
    assert set(gold) == set(df["query_id"].iloc[splits["train"]])


def test_gold_options_are_checked():
    assert gold_options({"seed": None}, default_seed=5)["seed"] == 5
    for bad, match in (({"fraction": 0}, "fraction"), ({"fraction": 1.5}, "fraction"), ({"share": 1}, "unknown")):
        with pytest.raises(ValueError, match=match):
            gold_options(bad)
