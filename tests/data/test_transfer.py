"""Generated queries' filters and transfer pairs (lrkd.data.transfer) on a slice of chorus_icecat:
planted leaks of val and test queries are dropped, no kept query is near a query of the dataset,
a query must bring its own product back, duplicates go, and data.transfer adds train rows only."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hydra.utils import instantiate

from lrkd.data.pool import load_catalogue
from lrkd.data.transfer import (candidate_pairs, embed_queries, filter_queries, query_key, query_problem,
                                read_transfer, write_transfer)
from lrkd.schema import DataError, UNLABELLED, dataset_fingerprint
from tests.fixtures.catalogue import tiny_chorus

FIELDS = ["brand", "description", "attributes"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_chorus(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def data(make_cfg, tiny):
    def _data(*overrides):
        cfg = make_cfg(f"data.source.path={tiny[0]}", "data.annotations=null", *overrides)
        dm = instantiate(cfg.data, seed=cfg.seed, _recursive_=False)
        dm.setup("fit")
        return dm
    return _data


def test_query_problems_and_keys():
    title = "HP 255 G7 Notebook Black 39.6 cm"
    assert query_problem("", title, 8, 80) == "empty" and query_problem(" -- ", title, 8, 80) == "empty"
    assert query_problem("a b c d e f g h i", title, 8, 80) == "too_long"
    assert query_problem("x" * 81, title, 8, 80) == "too_long"
    assert query_problem("hp 255 g7 notebook black 39.6 cm", title, 8, 80) == "title_echo"
    assert query_problem("HP 255 G7 Notebook Black 39.6", title, 8, 80) == "title_echo"  # most of the title
    assert query_problem("hp 255 notebook", title, 8, 80) is None
    assert query_key("Gaming Laptops!") == query_key("laptop  gaming") == query_key("gaming-laptop")
    assert query_key("smart watch") == query_key("Smartwatch") and query_key("batteries") == query_key("battery")
    assert query_key("laptop bag") != query_key("laptop")


def test_planted_leaks_of_val_and_test_queries_are_dropped(data, tiny):
    dm = data()
    frame, splits = dm.frame, dm.splits
    held_out = sorted(set(frame["query"].iloc[np.concatenate([splits["val"], splits["test"]])]))
    catalogue = load_catalogue(tiny[1], FIELDS)
    exact = next(q for q in held_out if not q.endswith("s"))
    # a near-equal variant of a held-out query: the one MiniLM puts closest ("a <query>")
    variants = [f"a {q}" for q in held_out]
    vectors = embed_queries(variants + held_out)
    cos = (vectors[:len(held_out)] * vectors[len(held_out):]).sum(axis=1)
    near = variants[int(cos.argmax())]
    assert cos.max() >= 0.9, "no near variant to plant"
    items = catalogue["item_id"].astype(str).tolist()
    title_words = lambda i: " ".join(catalogue["item_title"].iloc[i].split()[:3])  # noqa: E731
    generated = pd.DataFrame({"item_id": items[:5] + items[4:5] + items[6:8], "query": [
        f"  {exact.upper()} ",              # a test/val query again (case, spaces)
        f"{exact}s",                        # its plural
        near,                               # near-equal by embedding
        title_words(3), title_words(4),     # ordinary queries from the products' own words
        title_words(4).upper(),             # the same query again (its product's, say from a later sample)
        "zqxv wubbly frobnicator",          # retrieves nothing
        title_words(7)]})
    labelled = sorted(set(frame["query"]))
    table, counts = filter_queries(generated, catalogue, labelled, leak_threshold=0.9, retrieval_k=10)
    reasons = table["reason"].tolist()
    assert reasons[0] == "leak_text" and reasons[1] == "leak_text"
    assert reasons[2] == "leak_embedding" and table["nearest_cosine"].iloc[2] >= 0.9
    assert reasons[3] is None and reasons[4] is None and reasons[5] == "duplicate" and reasons[7] is None
    assert reasons[6] == "not_retrieved" and table["source_rank"].iloc[6] == 0
    assert counts == {"generated": 8, "parsed": 8, "no_leak": 5, "self_retrieved": 4, "kept": 3}
    kept = table[table["reason"].isna()]
    assert kept["query_id"].str.startswith("gen-").all() and kept["query_id"].is_unique
    # checked independently: no kept query is equal or within the threshold of any query of the dataset
    assert not {query_key(q) for q in kept["query"]} & {query_key(q) for q in labelled}
    vectors = embed_queries(kept["query"].tolist() + labelled)
    assert (vectors[:len(kept)] @ vectors[len(kept):].T).max() < 0.9


def test_transfer_pairs_join_train_only(data, tiny, tmp_path):
    dm = data()
    catalogue = load_catalogue(tiny[1], FIELDS)
    kept = pd.DataFrame({"query_id": ["gen-a", "gen-b"], "query": ["toner cartridge black", "usb cable"],
                         "item_id": catalogue["item_id"].astype(str).tolist()[:2]})
    table = candidate_pairs(kept, catalogue, "bm25", k=4, seed=0)
    assert list(table.columns) == ["query_id", "query", "item_id", "source_item_id", "rank", "score"]
    assert table.groupby("query_id")["rank"].apply(list).tolist() == [[1, 2, 3, 4]] * 2
    assert (np.diff(table["score"].to_numpy()[:4]) <= 0).all()
    from lrkd.data.pool import _file_sha256

    path = write_transfer(table, tmp_path / "transfer.parquet",
                          {"catalogue": str(tiny[1]), "catalogue_sha256": _file_sha256(tiny[1])})
    back, meta = read_transfer(path)
    pd.testing.assert_frame_equal(back, table)
    assert meta["catalogue"] == str(tiny[1]) and meta["version"] == 1

    attached = data(f"data.transfer={path}")
    n = len(dm.frame)
    assert len(attached.frame) == n + len(table)
    rows = attached.transfer_rows
    np.testing.assert_array_equal(rows, np.arange(n, n + len(table)))
    assert set(rows) <= set(attached.splits["train"])
    for split in ("val", "test"):  # val and test are untouched
        np.testing.assert_array_equal(attached.splits[split], dm.splits[split])
    added = attached.frame.iloc[rows]
    assert (added["label"] == UNLABELLED).all() and added["relevance"].isna().all()
    assert added["query_id"].tolist() == table["query_id"].tolist()
    by_id = catalogue.set_index("item_id")
    assert added["item_title"].tolist() == by_id.loc[table["item_id"], "item_title"].tolist()
    assert added["attributes"].tolist() == by_id.loc[table["item_id"], "attributes"].tolist()
    assert attached.fingerprint == dataset_fingerprint(attached.frame) != dm.fingerprint
    assert attached.class_counts("train") == dm.class_counts("train")


def test_transfer_tables_that_would_leak_or_mismatch_stop(data, tiny, tmp_path):
    dm = data()
    catalogue = load_catalogue(tiny[1], FIELDS)
    item = str(catalogue["item_id"].iloc[0])
    test_query = dm.frame["query"].iloc[dm.splits["test"][0]]
    leaking = pd.DataFrame({"query_id": ["gen-x"], "query": [test_query.title() + "s"], "item_id": [item],
                            "source_item_id": [item], "rank": [1], "score": [1.0]})
    path = write_transfer(leaking, tmp_path / "leak.parquet", {"catalogue": str(tiny[1])})
    with pytest.raises(DataError, match="queries of the dataset"):
        data(f"data.transfer={path}")
    fine = leaking.assign(query="zqxv frobnicator")
    path = write_transfer(fine, tmp_path / "other.parquet", {"catalogue": str(tiny[1]), "catalogue_sha256": "0" * 64})
    with pytest.raises(DataError, match="catalogue differs"):
        data(f"data.transfer={path}")
    path = write_transfer(fine, tmp_path / "nocat.parquet", {})
    with pytest.raises(DataError, match="names no catalogue"):
        data(f"data.transfer={path}")
    # the catalogue given with the path is used
    assert len(data(f"data.transfer={{path: {path}, catalogue: {tiny[1]}}}").transfer_rows) == 1
