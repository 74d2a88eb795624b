"""The transfer pool (lrkd.data.pool) and the datamodule's ``pool`` option."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lrkd.data.datamodule import RelevanceDataModule
from lrkd.data.pool import build_pool, load_catalogue, pool_options, top_k
from lrkd.schema import UNLABELLED, LabelSet, dataset_fingerprint
from lrkd.data.sources import ChorusIcecatSource
from lrkd.data.splits import split_by_query
from lrkd.data.encode import item_text

ROOT = Path(__file__).resolve().parents[2]
CHORUS = ROOT / "datasets" / "chorus_icecat"
CHORUS_LABELS = {"names": ["perfect", "good", "fair", "poor"], "gains": [3, 2, 1, 0], "relevant_up_to": 1}
CHORUS_SPLIT = {"train": 0.7, "val": 0.15, "test": 0.15, "seed": 42}
FIELDS = ["brand", "description", "attributes"]
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def chorus():
    """(frame, splits, catalogue) of the embedded chorus_icecat set."""
    frame = ChorusIcecatSource(str(CHORUS / "pairs.parquet")).load(LabelSet.from_config(CHORUS_LABELS))
    splits = split_by_query(frame["query_id"].tolist(), {k: v for k, v in CHORUS_SPLIT.items() if k != "seed"},
                            seed=CHORUS_SPLIT["seed"])
    return frame, splits, load_catalogue(CHORUS / "catalogue.parquet", FIELDS)


@pytest.fixture(scope="module")
def chorus_pool(chorus):
    frame, splits, catalogue = chorus
    return build_pool(frame, splits["train"], catalogue, retriever="bm25", k=3, seed=0)


def tiny_frame():
    rows = [("q1", "wireless mouse", "m1", "Logitech optical mouse", "Logitech", 0),
            ("q1", "wireless mouse", "k1", "Logitech keyboard", "Logitech", 3),
            ("q2", "hdmi cable", "c1", "HDMI cable 2 m", "Belkin", 0),
            ("q3", "coffee maker", "f1", "Espresso coffee maker", "DeLonghi", 1)]
    df = pd.DataFrame(rows, columns=["query_id", "query", "item_id", "item_title", "brand", "label"])
    df["relevance"] = np.nan
    df.attrs["text_fields"] = ["brand"]
    return df


def tiny_catalogue():
    rows = [("k1", "Logitech keyboard", "Logitech"),
            ("r1", "Samsung fridge freezer", "Samsung"),
            ("m2", "Wireless mouse, 2.4 GHz, black", "Trust"),
            ("m1", "Logitech optical mouse", "Logitech"),
            ("c2", "USB cable", "Belkin"),
            ("x1", "Garden hose 20 m", "Gardena")]
    df = pd.DataFrame(rows, columns=["item_id", "item_title", "brand"])
    df.attrs["text_fields"] = ["brand"]
    return df


# ---------------------------------------------------------------------------------- on chorus
def test_chorus_pool_holds_train_queries_only(chorus, chorus_pool):
    frame, splits, _ = chorus
    train_q = set(frame["query_id"].iloc[splits["train"]])
    held_out = set(frame["query_id"].iloc[np.concatenate([splits["val"], splits["test"]])])
    assert len(chorus_pool) > 0
    assert set(chorus_pool["query_id"]) <= train_q
    assert not set(chorus_pool["query_id"]) & held_out
    assert not set(chorus_pool["query"]) & set(frame["query"].iloc[splits["val"]])
    assert not set(chorus_pool["query"]) & set(frame["query"].iloc[splits["test"]])
    assert (chorus_pool["label"] == UNLABELLED).all() and chorus_pool["relevance"].isna().all()
    assert chorus_pool.groupby("query_id").size().max() <= 3
    assert list(chorus_pool.columns) == ["query_id", "query", "item_id", "item_title", *FIELDS, "label", "relevance"]


def test_chorus_pool_items_are_not_judged_for_their_query(chorus, chorus_pool):
    frame, _, catalogue = chorus
    keys = ["query_id", "item_id"]
    assert not chorus_pool.duplicated(keys).any()
    assert chorus_pool.merge(frame[keys], on=keys).empty
    # the pool's items render as the catalogue's; a judged item renders the same in both files
    by_id = catalogue.set_index("item_id")
    row = chorus_pool.iloc[0]
    assert item_text(row, FIELDS) == item_text(by_id.loc[row["item_id"]], FIELDS)
    judged = frame.iloc[0]
    assert item_text(judged, FIELDS) == item_text(by_id.loc[judged["item_id"]], FIELDS)


def test_catalogue_holds_every_judged_item(chorus):
    frame, _, catalogue = chorus
    assert catalogue["item_id"].is_unique and len(catalogue) > 19_000
    assert set(frame["item_id"]) <= set(catalogue["item_id"])


# ---------------------------------------------------------------------------------- retrievers
def test_bm25_puts_the_matching_item_first():
    frame, catalogue = tiny_frame(), tiny_catalogue()
    pool = build_pool(frame, np.arange(len(frame)), catalogue, retriever="bm25", k=2, seed=0)
    mouse = pool[pool["query_id"] == "q1"]
    assert mouse["item_id"].iloc[0] == "m2"              # "Wireless mouse ..." matches both words
    assert not {"m1", "k1"} & set(mouse["item_id"])      # judged for q1
    assert set(pool[pool["query_id"] == "q2"]["item_id"]) == {"c2"}  # only it shares a word ("cable")
    assert "q3" not in set(pool["query_id"])              # no catalogue item shares a word
    again = build_pool(frame, np.arange(len(frame)), catalogue, retriever="bm25", k=2, seed=0)
    pd.testing.assert_frame_equal(pool, again)


def test_pool_uses_only_the_given_train_rows():
    frame, catalogue = tiny_frame(), tiny_catalogue()
    pool = build_pool(frame, np.array([2]), catalogue, retriever="bm25", k=5, seed=0)
    assert set(pool["query_id"]) == {"q2"}


def test_minilm_puts_the_matching_item_first():
    frame, catalogue = tiny_frame(), tiny_catalogue()
    pool = build_pool(frame, np.arange(len(frame)), catalogue, retriever="minilm", k=2, seed=0)
    assert pool.groupby("query_id").size().to_dict() == {"q1": 2, "q2": 2, "q3": 2}
    assert pool[pool["query_id"] == "q1"]["item_id"].iloc[0] == "m2"
    assert pool[pool["query_id"] == "q2"]["item_id"].iloc[0] == "c2"
    assert pool.merge(frame[["query_id", "item_id"]], on=["query_id", "item_id"]).empty


def test_top_k_orders_ties_by_rank_and_respects_allowed():
    scores = np.array([1.0, 3.0, 3.0, 2.0, 3.0])
    allowed = np.array([True, True, True, True, False])
    assert top_k(scores, 2, np.array([0, 4, 1, 2, 3]), allowed).tolist() == [2, 1]
    assert top_k(scores, 10, np.arange(5), allowed).tolist() == [1, 2, 3, 0]


def test_pool_options_are_checked():
    assert pool_options(None) is None
    assert pool_options({"catalogue": "c.parquet"}) == {"catalogue": "c.parquet", "retriever": "bm25", "k": 10,
                                                        "seed": 0, "device": "cpu"}
    with pytest.raises(ValueError, match="retriever"):
        pool_options({"catalogue": "c.parquet", "retriever": "tfidf"})
    with pytest.raises(ValueError, match="unknown option"):
        pool_options({"catalogue": "c.parquet", "topk": 3})
    with pytest.raises(ValueError, match="catalogue"):
        pool_options({"k": 3})


# ---------------------------------------------------------------------------------- datamodule
def chorus_dm(cache_dir, pool=None):
    dm = RelevanceDataModule(name="chorus_icecat", source=ChorusIcecatSource(str(CHORUS / "pairs.parquet")),
                             labels=CHORUS_LABELS, split=CHORUS_SPLIT, tokenizer=MINILM, max_length=32,
                             cache_dir=str(cache_dir), pool=pool)
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def chorus_dms(tmp_path_factory):
    cache = tmp_path_factory.mktemp("pool_cache")
    pool = {"catalogue": str(CHORUS / "catalogue.parquet"), "retriever": "bm25", "k": 3}
    return chorus_dm(cache), chorus_dm(cache, pool), cache, pool


def test_datamodule_pool_leaves_val_and_test_unchanged(chorus_dms):
    plain, pooled, _, _ = chorus_dms
    n = len(plain.frame)
    assert len(plain.pool_rows) == 0 and len(pooled.pool_rows) > 0
    assert pooled.pool_rows.tolist() == list(range(n, len(pooled.frame)))
    for split in ("val", "test"):
        assert np.array_equal(plain.splits[split], pooled.splits[split])
        pd.testing.assert_frame_equal(plain.frame.iloc[plain.splits[split]], pooled.frame.iloc[pooled.splits[split]])
        a, b = plain.dataset(split), pooled.dataset(split)
        assert [a.tokens[r][0].tolist() for r in a.rows] == [b.tokens[r][0].tolist() for r in b.rows]
    pd.testing.assert_frame_equal(plain.frame, pooled.frame.iloc[:n])
    assert np.array_equal(pooled.splits["train"], np.concatenate([plain.splits["train"], pooled.pool_rows]))
    assert (pooled.frame["label"].iloc[pooled.pool_rows] == UNLABELLED).all()
    assert pooled.frame.attrs["text_fields"] == FIELDS


def test_datamodule_pool_changes_the_fingerprint_and_is_tokenized(chorus_dms):
    plain, pooled, cache, pool = chorus_dms
    assert plain.fingerprint != pooled.fingerprint
    assert pooled.fingerprint == dataset_fingerprint(pooled.frame)
    assert plain.fingerprint == dataset_fingerprint(plain.frame)
    assert len(pooled.dataset("train").tokens) == len(pooled.frame)
    batch = next(iter(pooled.train_dataloader()))
    assert batch["labels"].min() >= UNLABELLED
    again = chorus_dm(cache, pool)  # same config: same dataset, from the pool and token caches
    assert again.fingerprint == pooled.fingerprint
    assert again.cache_hits == {"pool": True, "standard": True}
    pd.testing.assert_frame_equal(again.frame, pooled.frame)


def test_pool_option_from_the_config(make_cfg):
    from hydra.utils import instantiate

    assert make_cfg().data.pool is None  # conf/data/chorus_icecat.yaml: no pool unless asked for
    cfg = make_cfg(f"data.pool={{catalogue:{CHORUS / 'catalogue.parquet'},retriever:minilm,k:4}}")
    dm = instantiate(cfg.data, _recursive_=False)
    assert dm.pool == {"catalogue": str(CHORUS / "catalogue.parquet"), "retriever": "minilm", "k": 4,
                       "seed": 0, "device": "cpu"}
    cfg = make_cfg("data=table", "data.path=pairs.csv", "data.labels.names=[a,b]", "+data.pool.catalogue=items.csv")
    assert instantiate(cfg.data, _recursive_=False).pool == {"catalogue": "items.csv", "retriever": "bm25", "k": 10,
                                                             "seed": 0, "device": "cpu"}
