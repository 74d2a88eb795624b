"""The data module with cross-validation folds, a gold budget, a superset artefact and query-group batches."""
from __future__ import annotations

import numpy as np
import pytest
from hydra.utils import instantiate

from lrkd.artefact import ArtefactError, ArtefactWarning, read_manifest
from lrkd.data.splits import split_by_query, split_by_query_fold
from tests.data.test_datamodule import all_batches, make_dm, make_frame, write_artefact

FOLDS = {"train": 0.6, "val": 0.2, "test": 0.2, "seed": 3, "folds": 3}


def test_the_default_chorus_split_and_fingerprint_are_unchanged(make_cfg):
    # the shipped teacher artefacts were annotated on this fingerprint and split (folds unset)
    cfg = make_cfg()
    assert cfg.data.split.folds is None and cfg.data.gold.fraction == 1.0
    dm = instantiate(cfg.data, seed=cfg.seed, _recursive_=False)
    dm.setup()
    manifest = read_manifest(cfg.data.annotations)
    assert dm.fingerprint == manifest.dataset_fingerprint
    expected = split_by_query(dm.frame["query_id"].tolist(), {"train": 0.7, "val": 0.15, "test": 0.15}, seed=42)
    assert all(np.array_equal(dm.splits[k], expected[k]) for k in expected)
    assert [len(dm.splits[k]) for k in ("train", "val", "test")] == [2575, 561, 532]
    assert "gold_label" not in dm.frame and (dm.frame["label"] >= 0).all()


def test_folds_and_budget_reach_the_batches(tmp_path):
    df = make_frame(num_queries=30)
    dm = make_dm(tmp_path, frame=df, split={**FOLDS, "fold": 1}, gold={"fraction": 0.5, "seed": 4}, batch_size=128)
    dm.setup()
    expected = split_by_query_fold(df["query_id"].tolist(), 3, 1, val=0.2, seed=3)
    assert all(np.array_equal(dm.splits[k], expected[k]) for k in expected)
    train_queries = set(df["query_id"].iloc[expected["train"]])
    assert len(dm.gold_queries) == int(np.ceil(len(train_queries) / 2)) and set(dm.gold_queries) <= train_queries
    (batch,) = all_batches(dm.train_dataloader())
    gold = df["query_id"].isin(dm.gold_queries).to_numpy()
    for row, label in zip(batch["pair_index"].tolist(), batch["labels"].tolist()):
        assert label == (df["label"].iloc[row] if gold[row] else -1)
    for split in ("val", "test"):   # every grade kept
        labels = [b["labels"] for b in dm.ordered_loader(split)]
        assert np.concatenate(labels).tolist() == df["label"].iloc[dm.splits[split]].tolist()
    assert dm.class_counts("train") == np.bincount(df["label"][gold], minlength=3).tolist()
    assert dm.frame["gold_label"].tolist() == df["label"].tolist()


def test_the_budget_keeps_the_fingerprint_tokens_and_a_strict_artefact(tmp_path):
    df = make_frame()
    write_artefact(tmp_path / "artefact", df, list(range(len(df))))
    full = make_dm(tmp_path, frame=df)
    full.setup()
    dm = make_dm(tmp_path, frame=df, gold={"fraction": 0.25, "seed": 0}, annotations=str(tmp_path / "artefact"))
    dm.setup()   # the artefact's (strict) fingerprint still matches: the budget hides grades, not pairs
    assert dm.fingerprint == full.fingerprint and dm.cache_hits["standard"]
    only_gold = make_dm(tmp_path, frame=df, gold={"fraction": 0.25, "seed": 0, "drop_unlabelled": True})
    only_gold.setup()
    assert set(only_gold.frame["query_id"].iloc[only_gold.splits["train"]]) == set(dm.gold_queries)
    assert len(only_gold.dataset("train")) == int((dm.frame["label"].iloc[dm.splits["train"]] >= 0).sum())


def test_a_superset_artefact_is_matched_by_pair(tmp_path):
    df = make_frame()
    bigger = make_frame(num_queries=16)      # these 12 queries' pairs and 4 more queries'
    assert bigger.iloc[: len(df)][["query_id", "item_id"]].equals(df[["query_id", "item_id"]])
    truth = write_artefact(tmp_path / "artefact", bigger, list(range(len(bigger))))
    with pytest.raises(ArtefactError, match="not in the dataset"), pytest.warns(ArtefactWarning, match="fingerprint"):
        make_dm(tmp_path, frame=df, annotations=str(tmp_path / "artefact"), annotation_strict_fingerprint=False).setup()
    dm = make_dm(tmp_path, frame=df, annotations=str(tmp_path / "artefact"), annotation_superset=True, batch_size=64)
    dm.setup()
    (batch,) = all_batches(dm.train_dataloader())
    assert batch["annotated"].all()
    for i, row in enumerate(batch["pair_index"].tolist()):
        np.testing.assert_allclose(batch["teacher_probs"][i].numpy(), truth[row][0], rtol=1e-6)


def test_query_group_batches_through_the_data_module(tmp_path):
    dm = make_dm(tmp_path, frame=make_frame(num_queries=20), sampler="query_groups",
                 query_groups={"queries_per_batch": 3, "items_per_query": None})
    dm.setup()
    batches = all_batches(dm.train_dataloader())
    assert len(batches) == dm.num_train_batches
    seen = {}
    for k, batch in enumerate(batches):
        assert len(set(batch["query_index"].tolist())) <= 3
        for q in batch["query_index"].tolist():
            assert seen.setdefault(q, k) == k             # a query's rows are all in one batch
    rows = sorted(r for b in batches for r in b["pair_index"].tolist())
    assert rows == sorted(dm.splits["train"].tolist())


def test_teacher_stage_fingerprints_ignore_unset_folds_and_see_the_budget(make_cfg):
    from lrkd.stages.base import fingerprint_config

    # the shipped teacher stages' records were fingerprinted with this split: no folds key in it
    data = fingerprint_config(make_cfg("stage=teacher_generate"))["data"]
    assert data["split"] == {"train": 0.7, "val": 0.15, "test": 0.15, "seed": 42} and "gold" not in data
    data = fingerprint_config(make_cfg("stage=teacher_generate", "data.split.folds=5", "data.split.fold=2",
                                       "data.gold.fraction=0.25", "seed=3"))["data"]
    assert data["split"]["folds"] == 5 and data["split"]["fold"] == 2
    assert data["gold"] == {"fraction": 0.25, "seed": 3, "drop_unlabelled": False}
