"""data.sampler=query_groups: batches of whole queries, order a function of (seed, epoch), exact resume."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from lrkd.data.query_batches import (QueryGroupBatchSampler, QueryGroupOrder, make_query_group_loader,
                                     num_query_group_batches, sampler_options)

SIZES = [5, 1, 12, 3, 7, 2, 9, 4]


def item_queries(sizes=SIZES, seed=0):
    """[N] query of each item, interleaved (items of one query are not adjacent)."""
    q = np.concatenate([[i] * s for i, s in enumerate(sizes)])
    return np.random.default_rng(seed).permutation(q)


def batches(query_index, queries_per_batch=3, items_per_query=None, seed=0, epoch=0):
    sampler = QueryGroupBatchSampler(QueryGroupOrder(query_index, items_per_query, seed=seed), queries_per_batch)
    sampler.set_epoch(epoch)
    return sampler, list(sampler)


def test_each_query_is_in_one_batch_and_every_item_once():
    q = item_queries()
    sampler, out = batches(q, queries_per_batch=3)
    assert sorted(i for b in out for i in b) == list(range(len(q)))
    for query in range(len(SIZES)):
        holding = [k for k, b in enumerate(out) if query in set(q[b])]
        assert len(holding) == 1, query
    assert all(len(set(q[b])) <= 3 for b in out) and len(out) == len(sampler) == 3


def test_items_per_query_cuts_long_queries_into_groups():
    q = item_queries()
    sampler, out = batches(q, queries_per_batch=2, items_per_query=4)
    assert sorted(i for b in out for i in b) == list(range(len(q)))
    assert max(len(b) for b in out) <= 8
    groups = [g for g, _ in sampler.sampler.groups()]
    assert all(len(g) <= 4 and len(set(q[g])) == 1 for g in groups)
    assert len(groups) == sum(-(-s // 4) for s in SIZES) and len(out) == len(sampler)
    dataset = SimpleNamespace(query_index=np.concatenate([q, [99]]), rows=np.arange(len(q)))
    assert num_query_group_batches(dataset, {"queries_per_batch": 2, "items_per_query": 4}) == len(out)


def test_labelled_per_batch_puts_gold_queries_in_every_batch():
    q = item_queries([6, 3, 5, 2, 7, 4, 3, 5, 6, 2])
    labelled = np.isin(q, [1, 4])                       # 2 of the 10 queries hold gold grades
    order = QueryGroupOrder(q, 4, seed=3, labelled=labelled)
    sampler = QueryGroupBatchSampler(order, 3, labelled_per_batch=1)
    out = list(sampler)
    gold_groups = sum(-(-s // 4) for s in (3, 7))        # 3 groups of the labelled queries
    other_groups = order.num_groups - gold_groups
    assert len(out) == len(sampler) == max(gold_groups, -(-other_groups // 2))
    for batch in out:
        assert labelled[batch].any() and (~labelled[batch]).any()
        assert len(set(q[batch][labelled[batch]])) == 1  # one labelled group (a chunk of one query)
    unlabelled_seen = sorted(i for b in out for i in b if not labelled[i])
    assert unlabelled_seen == np.flatnonzero(~labelled).tolist()       # each other item once an epoch
    assert set(i for b in out for i in b if labelled[i]) == set(np.flatnonzero(labelled))  # gold cycled
    assert out == list(QueryGroupBatchSampler(QueryGroupOrder(q, 4, seed=3, labelled=labelled), 3, 1))
    # every query labelled (or none): plain batches
    plain = QueryGroupBatchSampler(QueryGroupOrder(q, 4, seed=3, labelled=np.ones(len(q), bool)), 3, 1)
    assert list(plain) == batches(q, queries_per_batch=3, items_per_query=4, seed=3)[1]


def test_order_is_a_function_of_seed_and_epoch():
    q = item_queries()
    assert batches(q, seed=1, epoch=2)[1] == batches(q, seed=1, epoch=2)[1]
    assert batches(q, seed=1, epoch=2)[1] != batches(q, seed=1, epoch=3)[1]
    assert batches(q, seed=1, epoch=2)[1] != batches(q, seed=2, epoch=2)[1]


def test_resume_mid_epoch_yields_exactly_the_remaining_batches():
    q = item_queries()
    sampler, full = batches(q, queries_per_batch=2, items_per_query=5, seed=4, epoch=1)
    first = QueryGroupBatchSampler(QueryGroupOrder(q, 5, seed=4), 2)
    first.set_epoch(1)
    it = iter(first)
    done = [next(it) for _ in range(2)]
    state = first.state_dict()
    assert state == {"epoch": 1, "consumed": 2, "seed": 4}
    resumed = QueryGroupBatchSampler(QueryGroupOrder(q, 5, seed=4), 2)
    resumed.load_state_dict(state)
    assert done + list(resumed) == full
    assert list(resumed) == full        # the next epoch iteration starts at its beginning again


def test_loader_skips_the_batches_the_checkpointed_run_trained_on():
    q = item_queries()

    class Items(list):  # a dataset of item positions, with the PairDataset's rows and per-row query_index
        query_index, rows = q, np.arange(len(q))

    options = {"queries_per_batch": 2, "items_per_query": None}
    # a trainer restored mid-epoch 2 after 3 batches (what lrkd.lightning.compat.batches_done_this_epoch reads)
    progress = SimpleNamespace(current=SimpleNamespace(processed=3))
    trainer = SimpleNamespace(world_size=1, current_epoch=2,
                              fit_loop=SimpleNamespace(restarting=True, epoch_loop=SimpleNamespace(batch_progress=progress)))
    loader = make_query_group_loader(Items(range(len(q))), options=options, collate_fn=list, seed=7, trainer=trainer)
    _, full = batches(q, queries_per_batch=2, seed=7, epoch=2)
    assert list(loader) == full[3:]
    assert loader.state_dict() == {"epoch": 2, "seed": 7}
    with pytest.raises(ValueError, match="one process only"):
        make_query_group_loader(Items(range(len(q))), options=options, collate_fn=list, seed=7,
                                trainer=SimpleNamespace(world_size=2))


def test_sampler_options_are_checked():
    assert sampler_options("shuffle", None) == ("shuffle", {"queries_per_batch": 2, "items_per_query": 16,
                                                             "labelled_per_batch": None})
    assert sampler_options("query_groups", {"items_per_query": None})[1]["items_per_query"] is None
    for sampler, options, match in (("random", None, "data.sampler"), ("query_groups", {"queries_per_batch": 0}, ">= 1"),
                                    ("query_groups", {"items_per_query": 1}, ">= 2"),
                                    ("query_groups", {"size": 3}, "unknown"),
                                    ("query_groups", {"queries_per_batch": 2, "labelled_per_batch": 2}, "labelled_per_batch")):
        with pytest.raises(ValueError, match=match):
            sampler_options(sampler, options)
