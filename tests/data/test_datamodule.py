import math

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from lrkd.artefact import ArtefactWriter, format_rationales
from lrkd.data import datamodule as dm_module
from lrkd.data.datamodule import RelevanceDataModule
from lrkd.data.sampler import EpochSeededSampler
from lrkd.schema import DataError, dataset_fingerprint

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
LABELS = {"names": ["exact", "partial", "irrelevant"]}
SPLIT = {"train": 0.6, "val": 0.2, "test": 0.2, "seed": 3}
PERSPECTIVES = ("user_intent", "structured_analysis", "business_rules")
CONTRACT = {"input_ids", "attention_mask", "token_type_ids", "labels", "relevance", "query_index", "pair_index"}
ANNOTATION_KEYS = {"annotated", "has_rationale", "teacher_probs", "latent_targets"}
AUG_KEYS = {"aug_input_ids", "aug_attention_mask", "aug_token_type_ids"}


def make_frame(num_queries=12, with_relevance=True):
    """~3.5 pairs per query; item texts of varied length; relevance = grade base + a query offset."""
    rng = np.random.default_rng(0)
    rows = []
    for q in range(num_queries):
        for i in range(3 + q % 2):
            label = int(rng.integers(0, 3))
            rows.append({
                "query_id": f"q{q:02d}", "query": f"query number {q} " + "word " * (q % 4),
                "item_id": f"q{q:02d}-i{i}", "item_title": f"item {i} of query {q} " + "long " * int(rng.integers(0, 12)),
                "brand": ["Acme", "", "Globex"][i % 3], "description": "fine product " * int(rng.integers(0, 3)),
                "label": label, "relevance": (3.0 - label) + 0.1 * (q % 3) if (q + i) % 5 else np.nan})
    df = pd.DataFrame(rows)
    if not with_relevance:
        df = df.drop(columns="relevance")
    df.attrs["text_fields"] = ["brand", "description"]
    return df


class FrameSource:
    """A source serving a ready schema DataFrame; counts its loads."""

    def __init__(self, frame):
        self.frame, self.loads = frame, 0

    def load(self, label_set, duplicates="error"):
        assert label_set.names == tuple(LABELS["names"])
        self.loads += 1
        out = self.frame.copy()
        out.attrs = dict(self.frame.attrs)
        return out


def make_dm(tmp_path, frame=None, **overrides):
    kwargs = dict(name="toy", source=FrameSource(make_frame() if frame is None else frame), labels=LABELS,
                  split=SPLIT, tokenizer=MINILM, max_length=32, aug_max_length=64, batch_size=4,
                  eval_batch_size=5, cache_dir=str(tmp_path / "cache"))
    kwargs.update(overrides)
    return RelevanceDataModule(**kwargs)


def all_batches(loader):
    return list(loader)


def write_artefact(root, df, rows, vector_dim=4, seed=0):
    """Annotate ``rows`` of ``df``; returns {row: (probs [C], latents [K, D], rationales)}."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(3), size=len(rows)).astype(np.float32)
    latents = rng.normal(size=(len(rows), len(PERSPECTIVES), vector_dim)).astype(np.float32)
    texts = {p: [f"{p} reasoning about pair {r}" for r in rows] for p in PERSPECTIVES}
    writer = ArtefactWriter(root, teacher_id="fake-teacher", perspectives=PERSPECTIVES,
                            label_names=LABELS["names"], vector_dim=vector_dim,
                            dataset_fingerprint=dataset_fingerprint(df))
    writer.write_shard(0, df["query_id"].iloc[rows].tolist(), df["item_id"].iloc[rows].tolist(), texts, probs, latents)
    writer.finalize()
    return {r: (probs[j], latents[j], {p: texts[p][j] for p in PERSPECTIVES}) for j, r in enumerate(rows)}


@pytest.fixture
def dm(tmp_path):
    module = make_dm(tmp_path)
    module.setup("fit")
    return module


# ----------------------------------------------------------------------------------- the batches
def test_batches_follow_the_contract_with_dynamic_padding(dm):
    df, tok = dm.frame, dm.tokenizer
    tokens = dm.dataset("train").tokens
    query_index = pd.factorize(df["query_id"])[0]
    widths = set()
    seen = []
    for batch in dm.train_dataloader():
        assert set(batch) == CONTRACT
        b, width = batch["input_ids"].shape
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            assert batch[key].dtype == torch.long and batch[key].shape == (b, width)
        for key in ("labels", "query_index", "pair_index"):
            assert batch[key].dtype == torch.long and batch[key].shape == (b,)
        assert batch["relevance"].dtype == torch.float32
        rows = batch["pair_index"].numpy()
        lengths = [len(tokens[r][0]) for r in rows]
        assert width == max(lengths)  # padded to the longest of THIS batch
        widths.add(width)
        for i, (r, n) in enumerate(zip(rows, lengths)):
            assert batch["input_ids"][i, :n].tolist() == tokens[r][0].tolist()
            assert batch["token_type_ids"][i, :n].tolist() == tokens[r][1].tolist()
            assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (width - n)
            assert set(batch["input_ids"][i, n:].tolist()) <= {tok.pad_token_id}
            assert set(batch["token_type_ids"][i, n:].tolist()) <= {0}
        assert batch["labels"].tolist() == df["label"].iloc[rows].tolist()
        np.testing.assert_array_equal(batch["relevance"].numpy(), df["relevance"].iloc[rows].to_numpy(np.float32))
        assert batch["query_index"].tolist() == query_index[rows].tolist()
        seen.extend(rows.tolist())
    assert len(widths) > 1
    assert sorted(seen) == dm.splits["train"].tolist()  # every train pair once, drop_last=False


def test_train_order_is_epoch_seeded_and_eval_is_sequential(dm):
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, EpochSeededSampler) and loader.sampler is dm.train_sampler
    order = np.concatenate([b["pair_index"].numpy() for b in loader])
    expected = dm.splits["train"][EpochSeededSampler(len(dm.splits["train"]), seed=42).permutation()]
    assert order.tolist() == expected.tolist() and order.tolist() != sorted(order.tolist())
    loader.sampler.set_epoch(1)
    assert np.concatenate([b["pair_index"].numpy() for b in loader]).tolist() != order.tolist()
    for split, loader in (("val", dm.val_dataloader()), ("test", dm.test_dataloader()),
                          ("test", dm.predict_dataloader())):
        batches = all_batches(loader)
        assert len(batches[0]["pair_index"]) == 5
        assert np.concatenate([b["pair_index"].numpy() for b in batches]).tolist() == dm.splits[split].tolist()


def test_spec_and_splits(dm):
    spec = dm.spec
    assert spec.label_set.names == tuple(LABELS["names"]) and spec.label_set.values == (2.0, 1.0, 0.0)
    assert spec.perspectives == PERSPECTIVES and spec.latent_dim == 0
    assert not spec.has_annotations and spec.has_relevance
    assert dm.fingerprint == dataset_fingerprint(make_frame())
    assert sorted(np.concatenate(list(dm.splits.values())).tolist()) == list(range(len(dm.frame)))
    assert dm.num_train_batches == math.ceil(len(dm.splits["train"]) / 4) == len(dm.train_dataloader())


def test_has_relevance_false_without_relevance(tmp_path):
    dm = make_dm(tmp_path, frame=make_frame(with_relevance=False))
    dm.setup()
    assert not dm.spec.has_relevance
    assert torch.isnan(next(iter(dm.val_dataloader()))["relevance"]).all()


# ---------------------------------------------------------------------------------- annotations
def test_annotations_reach_train_batches_only(tmp_path):
    df = make_frame()
    annotated_rows = list(range(0, len(df), 2))  # every other pair, in all splits
    truth = write_artefact(tmp_path / "artefact", df, annotated_rows)
    dm = make_dm(tmp_path, frame=df, annotations=str(tmp_path / "artefact"), batch_size=64)
    dm.setup()
    assert dm.spec.has_annotations and dm.spec.latent_dim == 4 and dm.spec.perspectives == PERSPECTIVES
    (batch,) = all_batches(dm.train_dataloader())
    assert set(batch) == CONTRACT | ANNOTATION_KEYS
    b = len(batch["pair_index"])
    assert batch["annotated"].dtype == torch.bool and batch["annotated"].shape == (b,)
    assert batch["teacher_probs"].dtype == torch.float32 and batch["teacher_probs"].shape == (b, 3)
    assert batch["latent_targets"].dtype == torch.float32 and batch["latent_targets"].shape == (b, 3, 4)
    for i, row in enumerate(batch["pair_index"].tolist()):
        if row in truth:
            probs, latents, _ = truth[row]
            assert batch["annotated"][i]
            np.testing.assert_allclose(batch["teacher_probs"][i].numpy(), probs, rtol=1e-6)
            np.testing.assert_allclose(batch["latent_targets"][i].numpy(), latents.astype(np.float16), rtol=1e-6)
        else:  # masked: uniform soft labels, zero latents
            assert not batch["annotated"][i]
            np.testing.assert_allclose(batch["teacher_probs"][i].numpy(), [1 / 3] * 3)
            assert not batch["latent_targets"][i].any()
    assert batch["annotated"].any() and not batch["annotated"].all()
    assert torch.equal(batch["has_rationale"], batch["annotated"])  # every annotated row has its texts
    for loader in (dm.val_dataloader(), dm.test_dataloader()):
        for batch in loader:
            assert set(batch) == CONTRACT  # the teacher's outputs never reach evaluation


def test_annotated_rows_with_empty_rationales_have_no_rationale(tmp_path):
    df = make_frame()
    rows = list(range(0, len(df), 2))
    rng = np.random.default_rng(0)
    writer = ArtefactWriter(tmp_path / "artefact", teacher_id="fake-teacher", perspectives=PERSPECTIVES,
                            label_names=LABELS["names"], vector_dim=4, dataset_fingerprint=dataset_fingerprint(df))
    texts = {p: [f"{p} on {r}" if r % 4 == 0 else "" for r in rows] for p in PERSPECTIVES}  # half of them empty
    texts["business_rules"][1] = "  "  # blank counts as empty
    writer.write_shard(0, df["query_id"].iloc[rows].tolist(), df["item_id"].iloc[rows].tolist(), texts,
                       rng.dirichlet(np.ones(3), size=len(rows)).astype(np.float32),
                       rng.normal(size=(len(rows), len(PERSPECTIVES), 4)).astype(np.float32))
    writer.finalize()
    dm = make_dm(tmp_path, frame=df, annotations=str(tmp_path / "artefact"), batch_size=64)
    dm.setup()
    (batch,) = all_batches(dm.train_dataloader())
    for i, row in enumerate(batch["pair_index"].tolist()):
        assert bool(batch["annotated"][i]) == (row % 2 == 0)
        assert bool(batch["has_rationale"][i]) == (row % 4 == 0)


def test_augmented_view_on_train_batches(tmp_path):
    df = make_frame()
    truth = write_artefact(tmp_path / "artefact", df, list(range(0, len(df), 2)))
    dm = make_dm(tmp_path, frame=df, annotations=str(tmp_path / "artefact"), with_augmented_view=True,
                 batch_size=64)
    dm.setup()
    assert dm.cache_hits == {"standard": False, "augmented": False}
    tok, sep = dm.tokenizer, dm.tokenizer.sep_token_id
    (batch,) = all_batches(dm.train_dataloader())
    assert set(batch) == CONTRACT | ANNOTATION_KEYS | AUG_KEYS
    assert batch["aug_input_ids"].shape == batch["aug_attention_mask"].shape == batch["aug_token_type_ids"].shape
    assert batch["aug_input_ids"].shape[1] <= 64
    for i, row in enumerate(batch["pair_index"].tolist()):
        n = int(batch["attention_mask"][i].sum())
        m = int(batch["aug_attention_mask"][i].sum())
        standard = batch["input_ids"][i, :n].tolist()
        aug = batch["aug_input_ids"][i, :m].tolist()
        assert aug[:n] == standard  # the prefix is the standard view
        if row in truth:
            text = format_rationales(truth[row][2], PERSPECTIVES)
            r_ids = tok(text, add_special_tokens=False)["input_ids"]
            assert aug.count(sep) == 3 and aug[n:-1] == r_ids[:m - n - 1] and m - n - 1 > 0
            assert batch["aug_token_type_ids"][i, n:m].tolist() == [1] * (m - n)
        else:
            assert aug == standard  # unannotated: the standard view plus nothing
    assert all(set(b) == CONTRACT for b in dm.val_dataloader())

    again = make_dm(tmp_path, frame=df, annotations=str(tmp_path / "artefact"), with_augmented_view=True)
    again.setup()
    assert again.cache_hits == {"standard": True, "augmented": True}


def test_augmented_view_without_annotations_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"crsd.*data\.annotations=<dir>|data\.annotations=<dir>.*crsd"):
        make_dm(tmp_path, with_augmented_view=True)


def test_artefact_of_another_dataset_is_refused(tmp_path):
    df = make_frame()
    other = make_frame(num_queries=13)
    write_artefact(tmp_path / "artefact", other, [0, 1, 2])
    dm = make_dm(tmp_path, frame=df, annotations=str(tmp_path / "artefact"))
    with pytest.raises(DataError, match="fingerprint"):
        dm.setup()


# ------------------------------------------------------------------------------- values: auto
def test_values_auto_hand_computed(tmp_path):
    df = pd.DataFrame({
        "query_id": ["a", "a", "b", "b", "c", "c", "c"], "query": ["x"] * 7, "item_id": list("1234567"),
        "item_title": ["t"] * 7, "label": [0, 1, 0, 2, 1, 1, 2],
        "relevance": [3.0, 2.33, 2.67, 1.0, 2.0, np.nan, 1.33]})
    df.attrs["text_fields"] = []
    dm = make_dm(tmp_path, frame=df, labels={**LABELS, "values": "auto"},
                 split={"train": 1.0, "val": 0.0, "test": 0.0})
    dm.setup()
    np.testing.assert_allclose(dm.spec.label_set.values, [2.835, 2.165, 1.165], atol=1e-9)
    assert dm.spec.label_set.gains == (2.0, 1.0, 0.0)


def test_values_auto_uses_the_train_split_only(tmp_path):
    dm = make_dm(tmp_path, labels=OmegaConf.create({**LABELS, "values": "auto"}))
    dm.setup()
    df, train = dm.frame, set(dm.splits["train"].tolist())
    expected, overall = [], []
    for grade in range(3):
        train_vals = [v for r, (l, v) in enumerate(zip(df["label"], df["relevance"])) if r in train and l == grade and v == v]
        all_vals = [v for l, v in zip(df["label"], df["relevance"]) if l == grade and v == v]
        expected.append(sum(train_vals) / len(train_vals))
        overall.append(sum(all_vals) / len(all_vals))
    np.testing.assert_allclose(dm.spec.label_set.values, expected, rtol=1e-9)
    assert not np.allclose(expected, overall)


def test_values_auto_without_relevance_is_an_error(tmp_path):
    dm = make_dm(tmp_path, frame=make_frame(with_relevance=False), labels={**LABELS, "values": "auto"})
    with pytest.raises(DataError, match="relevance"):
        dm.setup()


# ------------------------------------------------------------------------------- setup, sources
def test_setup_twice_does_not_retokenize(tmp_path, monkeypatch):
    calls = []
    real = dm_module.tokenize_standard
    monkeypatch.setattr(dm_module, "tokenize_standard", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    dm = make_dm(tmp_path)
    dm.setup("fit")
    frame = dm.frame
    dm.setup("validate")
    dm.prepare_data()
    assert len(calls) == 1 and dm.source.loads == 1 and dm.frame is frame
    assert dm.cache_hits == {"standard": False}

    fresh = make_dm(tmp_path)  # a new process of the same run: reads the cache
    tokenizer_class = type(dm.tokenizer)
    counted = []
    original = tokenizer_class.__call__
    monkeypatch.setattr(tokenizer_class, "__call__", lambda self, *a, **kw: counted.append(1) or original(self, *a, **kw))
    fresh.setup()
    assert fresh.cache_hits == {"standard": True} and not counted
    assert [len(x) for x in fresh.splits.values()] == [len(x) for x in dm.splits.values()]


def test_source_built_from_a_hydra_config(tmp_path):
    df = make_frame()
    table = df.rename(columns={"query_id": "qid", "item_id": "pid", "item_title": "title"})
    table["grade"] = [LABELS["names"][i] for i in df["label"]]
    table.drop(columns=["label", "relevance"]).to_csv(tmp_path / "pairs.csv", index=False)
    source = OmegaConf.create({
        "_target_": "lrkd.data.sources.TableSource", "path": str(tmp_path / "pairs.csv"),
        "columns": {"query_id": "qid", "query": "query", "item_id": "pid", "item_title": "title"},
        "text_fields": ["brand", "description"], "label_column": "grade"})
    dm = make_dm(tmp_path, source=source, path=str(tmp_path / "pairs.csv"), max_pairs=None)
    dm.setup()
    assert len(dm.frame) == len(df) and dm.frame["label"].tolist() == df["label"].tolist()
    assert set(next(iter(dm.train_dataloader()))) == CONTRACT


def test_bad_split_config_is_an_error(tmp_path):
    dm = make_dm(tmp_path, split={"train": 0.8, "valid": 0.2})
    with pytest.raises(ValueError, match="train.*val.*test"):
        dm.setup()
