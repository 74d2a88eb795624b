import numpy as np
import pytest

from lrkd.data.splits import query_folds, split_by_query, split_by_query_fold, split_from_config


def _query_ids(sizes, prefix="q"):
    """Row-level query ids: query i repeated sizes[i] times, rows interleaved (not grouped)."""
    ids = np.concatenate([[f"{prefix}{i}"] * s for i, s in enumerate(sizes)])
    return np.random.default_rng(0).permutation(ids).tolist()


def _query_sets(query_ids, splits):
    ids = np.asarray(query_ids)
    return {name: set(ids[rows]) for name, rows in splits.items()}


def test_splits_partition_rows_and_never_share_a_query():
    sizes = np.random.default_rng(1).integers(1, 8, size=60)
    qids = _query_ids(sizes)
    splits = split_by_query(qids, seed=3)
    assert list(splits) == ["train", "val", "test"]
    all_rows = np.concatenate(list(splits.values()))
    assert sorted(all_rows.tolist()) == list(range(len(qids)))  # union = all rows, no row twice
    for rows in splits.values():
        assert rows.dtype == np.int64 and np.all(np.diff(rows) > 0)  # sorted
    sets = _query_sets(qids, splits)
    assert not sets["train"] & sets["val"] and not sets["train"] & sets["test"] and not sets["val"] & sets["test"]


def test_same_seed_same_split_other_seed_other_split():
    qids = _query_ids([3] * 40)
    a, b = split_by_query(qids, seed=7), split_by_query(qids, seed=7)
    c = split_by_query(qids, seed=8)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_split_does_not_depend_on_row_order():
    qids = _query_ids([2, 5, 1, 4, 3, 6, 2, 2, 1, 7])
    order = np.random.default_rng(5).permutation(len(qids))
    shuffled = [qids[i] for i in order]
    assert _query_sets(qids, split_by_query(qids, seed=1)) == _query_sets(shuffled, split_by_query(shuffled, seed=1))


def test_pair_fractions_respected_within_two_query_sizes():
    sizes = np.random.default_rng(2).integers(1, 11, size=200)
    qids = _query_ids(sizes)
    fractions = {"train": 0.6, "val": 0.25, "test": 0.15}
    splits = split_by_query(qids, fractions, seed=0)
    for name, frac in fractions.items():
        assert abs(len(splits[name]) - frac * len(qids)) <= 2 * sizes.max(), name


def test_fractions_are_of_pairs_not_of_queries():
    # 5 queries of 100 pairs and 95 of one pair: 20 % of the 595 pairs is 119. A split taking 20 % of
    # the QUERIES holds no large query with probability ~0.32 (20 pairs); by pairs it must hold one.
    qids = [f"big{i}" for i in range(5) for _ in range(100)] + [f"small{i}" for i in range(95)]
    for seed in range(10):
        splits = split_by_query(qids, {"a": 0.8, "b": 0.2}, seed=seed)
        assert abs(len(splits["b"]) - 119) <= 50, seed


def test_three_queries_give_three_non_empty_splits():
    # with two 1-pair queries and a 100-pair one, greedy dealing alone can leave val/test empty
    for qids in (["x", "y", "z", "z", "z", "z"], ["x", "y"] + ["z"] * 100):
        for seed in range(10):
            splits = split_by_query(qids, seed=seed)
            assert sorted({len(s) for s in _query_sets(qids, splits).values()}) == [1], (qids, seed)


def test_zero_fraction_split_is_empty_and_bad_fractions_raise():
    qids = _query_ids([2] * 10)
    splits = split_by_query(qids, {"train": 1.0, "val": 0.0, "test": 0.0})
    assert len(splits["train"]) == len(qids) and len(splits["val"]) == len(splits["test"]) == 0
    with pytest.raises(ValueError, match="sum to 1"):
        split_by_query(qids, {"train": 0.7, "val": 0.2})
    with pytest.raises(ValueError, match=">= 0"):
        split_by_query(qids, {"train": 1.2, "val": -0.2})


# ------------------------------------------------------------------------------- cross-validation


def test_every_query_is_a_test_query_in_exactly_one_fold():
    sizes = np.random.default_rng(4).integers(1, 30, size=50)
    qids = _query_ids(sizes)
    folds = [split_by_query_fold(qids, 5, i, val=0.15, seed=11) for i in range(5)]
    tested = [set(np.asarray(qids)[f["test"]]) for f in folds]
    assert set().union(*tested) == set(qids)
    assert sum(len(t) for t in tested) == len(set(qids))            # pairwise disjoint
    for f in folds:
        assert sorted(np.concatenate(list(f.values())).tolist()) == list(range(len(qids)))
        sets = _query_sets(qids, f)
        assert not sets["train"] & sets["val"] and not sets["train"] & sets["test"] and not sets["val"] & sets["test"]
        # folds balanced by pairs: test about 1/5 of the pairs, val about 0.15, each within one large query
        assert abs(len(f["test"]) - len(qids) / 5) <= 2 * sizes.max()
        assert abs(len(f["val"]) - 0.15 * len(qids)) <= 2 * sizes.max()


def test_folds_are_deterministic_under_the_seed_and_vary_with_it():
    qids = _query_ids([3, 7, 2, 9, 4, 4, 6, 1, 8, 5] * 3)
    a = split_by_query_fold(qids, 3, 1, seed=5)
    b = split_by_query_fold(list(qids), 3, 1, seed=5)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(query_folds(qids, 3, seed=5), query_folds(qids, 3, seed=6))
    # the val carved from fold 0's and fold 1's remaining queries is drawn separately
    assert not np.array_equal(split_by_query_fold(qids, 3, 0, seed=5)["val"], a["val"])


def test_fold_settings_are_checked():
    qids = _query_ids([2] * 6)
    with pytest.raises(ValueError, match="folds must be in"):
        query_folds(qids, 7)
    with pytest.raises(ValueError, match="fold must be in"):
        split_by_query_fold(qids, 3, 3)
    with pytest.raises(ValueError, match="leave train pairs"):
        split_by_query_fold(qids, 2, 0, val=0.5)


def test_split_from_config_without_folds_is_split_by_query():
    qids = _query_ids(np.random.default_rng(6).integers(1, 9, size=40))
    config = {"train": 0.7, "val": 0.15, "test": 0.15, "seed": 42, "folds": None, "fold": 0}
    a, b = split_from_config(qids, config), split_by_query(qids, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=42)
    assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)
    c = split_from_config(qids, {**config, "folds": 4, "fold": 2})
    d = split_by_query_fold(qids, 4, 2, val=0.15, seed=42)
    assert all(np.array_equal(c[k], d[k]) for k in c)
    with pytest.raises(ValueError, match="train.*val.*test"):
        split_from_config(qids, {"train": 0.8, "valid": 0.2})
