"""Many sequences in one llama.cpp context (lrkd.teacher.runtime.batched) on the real SmolLM2 GGUF file:

- with one sequence per decode (mix=False) every token, probability and hidden state equals the
  one-sequence runtime's bit for bit: the prefix sharing, the rewinds, the positions and the slot
  reuse add nothing and leak nothing between sequences;
- with mixed batches (the fast path) the greedy tokens are the same and the readings equal up to
  the kernels' batch-shape rounding;
- the llama.cpp reading agrees with an independent implementation: transformers on the same GGUF;
- a batched scoring run gives the readings of a sequential one and resumes after a kill like it.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from lrkd.teacher.runtime.engines import engine_available
from tests.teacher.test_llama_cpp import SMOL, _ids, _prompts, needs_gguf

pytest.importorskip("cyllama", reason="the llamacpp extra is not installed")
ENGINES = [pytest.param("cyllama"),
           pytest.param("ik_llama", marks=pytest.mark.skipif(not engine_available("ik_llama"),
                                                             reason="the ikllama extra is not installed"))]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from lrkd.teacher.model import load_gguf_tokenizer

    cfg = {"name": "smollm2-gguf-test", "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
           "cache_dir": str(tmp_path_factory.mktemp("cache"))}
    return load_gguf_tokenizer(cfg, SMOL)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """The GGUF file each engine reads: SmolLM2 as shipped (Q4_1) for cyllama; for ik_llama, whose
    Q4_1 kernels are wrong, the same weights requantized to Q4_K_M by llama.cpp (seconds)."""
    import cyllama.llama.llama_cpp as cy

    q4k = tmp_path_factory.mktemp("gguf") / "smollm2-q4_k_m.gguf"
    params = cy.LlamaModelQuantizeParams()
    params.allow_requantize, params.ftype, params.nthread = True, 15, 1  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    cy.model_quantize(SMOL, str(q4k), params)
    return {"cyllama": SMOL, "ik_llama": str(q4k)}


def _decoder(engine_name, n_slots, mix=True, path=SMOL):
    from lrkd.teacher.runtime.batched import BatchedDecoder, context_cells
    from lrkd.teacher.runtime.engines import open_engine

    engine = open_engine(path, engine_name, n_ctx=context_cells(n_slots, 512, 2, 256), n_threads=1, n_batch=512,
                         n_seq=n_slots + 2)
    return BatchedDecoder(engine, n_slots, max_prefixes=2, mix=mix)


def _programs(prompts, prefix, answers, engine, new_tokens=16):
    """Per prompt: a greedy generation (3-gram block), a rewind to the pair's end, then the judgement
    reading -- the shape of the rationale reader's program."""
    from lrkd.teacher.runtime.batched import Feed, Prefix, Rewind, generation
    from lrkd.teacher.label.readers import softmax

    def program(p):
        yield Prefix(tuple(p.shared))
        first = yield Feed(p.pair, "last")
        ids = yield from generation(first, new_tokens, engine.is_eog, ctx_limit=512, no_repeat_ngram_size=3)
        yield Rewind(len(p.shared) + len(p.pair))
        reading = yield Feed(prefix, "last", logit_ids=answers, hidden=True)
        return ids, softmax(reading.logits), reading.hidden[-1]

    return [(i, (lambda p=p: program(p))) for i, p in enumerate(prompts)]


def _sequential(prompts, prefix, answers, engine_name, new_tokens=16, path=SMOL):
    from lrkd.teacher.runtime.llama_cpp import LlamaCppRuntime
    from lrkd.teacher.label.readers import read_pair

    runtime = LlamaCppRuntime(path, n_ctx=512, n_threads=1, engine=engine_name)
    try:
        out = []
        for p in prompts:
            ids = runtime.generate([p.shared], p.pair, new_tokens, no_repeat_ngram_size=3)
            probs, state = read_pair(runtime, p.shared, p.pair, prefix, answers)
            out.append((ids, probs, state[-1]))
        return out
    finally:
        runtime.close()


@needs_gguf
def test_one_sequence_per_decode_equals_the_sequential_runtime_bit_for_bit(tokenizer):
    """cyllama: every sequence has a KV stream of its own, laid out as in a one-sequence context."""
    prompts = _prompts(tokenizer, 5)  # more requests than slots: slots are reused
    prefix, answers = _ids(tokenizer)
    expected = _sequential(prompts, prefix, answers, "cyllama")
    decoder = _decoder("cyllama", n_slots=3, mix=False)
    try:
        got = dict(decoder.run(_programs(prompts, prefix, answers, decoder.engine)))
    finally:
        decoder.engine.close()
    assert sorted(got) == list(range(len(prompts)))
    for i, (ids, probs, state) in enumerate(expected):
        assert got[i][0] == ids and len(ids) > 0
        np.testing.assert_array_equal(got[i][1], probs)
        np.testing.assert_array_equal(got[i][2], state)
    assert decoder.stats["decodes"] > len(prompts)


@needs_gguf
@pytest.mark.parametrize("engine_name", ENGINES)
def test_mixed_batches_give_the_same_greedy_tokens_and_close_readings(tokenizer, model_file, engine_name):
    """ik_llama keeps all sequences in one KV pool, so there even one sequence per decode is only close."""
    prompts = _prompts(tokenizer, 6)
    prefix, answers = _ids(tokenizer)
    expected = _sequential(prompts, prefix, answers, engine_name, path=model_file[engine_name])
    decoder = _decoder(engine_name, n_slots=4, path=model_file[engine_name])
    try:
        got = dict(decoder.run(_programs(prompts, prefix, answers, decoder.engine)))
    finally:
        decoder.engine.close()
    # mixed: several sequences' tokens share each decode (fewer decodes than tokens generated)
    assert decoder.stats["decodes"] < sum(len(ids) for ids, _, _ in expected)
    same = [got[i][0] == ids for i, (ids, _, _) in enumerate(expected)]
    assert sum(same) >= len(prompts) - 1, same  # rounding may flip a near-tie, rarely
    for i, (_, probs, state) in enumerate(expected):
        # llama.cpp's CPU kernels round differently for other batch shapes (a token's row in a
        # 4-row tile or in the remainder): measured up to 0.03 here, never a different reading
        assert np.abs(got[i][1] - probs).max() < 0.05
        cosine = float(got[i][2] @ state / np.linalg.norm(got[i][2]) / np.linalg.norm(state))
        assert cosine > 0.99


@needs_gguf
def test_rewinds_and_prefixes_are_checked(tokenizer):
    from lrkd.teacher.runtime.batched import BatchedDecoder, Feed, Prefix, Rewind

    decoder = _decoder("cyllama", n_slots=2)
    p = _prompts(tokenizer, 1)[0]

    def cuts_into_the_prefix():
        yield Prefix(tuple(p.shared))
        yield Rewind(1)

    try:
        with pytest.raises(ValueError, match="shared prefix"):
            list(decoder.run([(0, cuts_into_the_prefix)]))
        def empty_feed():
            yield Feed([])

        with pytest.raises(ValueError, match="at least one token"):
            list(decoder.run([(0, empty_feed)]))
        with pytest.raises(ValueError, match="sequences"):
            BatchedDecoder(decoder.engine, n_slots=4, max_prefixes=2)
    finally:
        decoder.engine.close()


@needs_gguf
def test_llama_cpp_reading_agrees_with_transformers_on_the_same_gguf(tokenizer):
    """An independent implementation: transformers dequantizes the same GGUF file and runs the same
    prompt ids in float32. llama.cpp computes on 8-bit activations, so equal to about 1e-2."""
    import torch
    from transformers import AutoModelForCausalLM

    from lrkd.teacher.runtime.llama_cpp import LlamaCppRuntime
    from lrkd.teacher.label.readers import read_pair

    prompts = _prompts(tokenizer, 3)
    prefix, answers = _ids(tokenizer)
    folder, name = os.path.split(SMOL)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    runtime = LlamaCppRuntime(SMOL, n_ctx=512, n_threads=1)
    try:
        for p in prompts:
            ids = list(p.shared) + list(p.pair) + list(prefix)
            # the same prompt token ids: the GGUF's own tokenizer as transformers reads it
            text = tokenizer.decode(ids)
            assert tokenizer(text, add_special_tokens=False)["input_ids"] == ids
            probs, state = read_pair(runtime, p.shared, p.pair, prefix, answers)
            with torch.no_grad():
                out = model(torch.tensor([ids]), output_hidden_states=True)
            z = out.logits[0, -1, answers].double()
            reference = torch.softmax(z, dim=0).numpy()
            hidden = out.hidden_states[-1][0, -1].numpy()
            assert np.abs(probs - reference).max() < 0.02, (probs, reference)
            cosine = float(state[0] @ hidden / np.linalg.norm(state[0]) / np.linalg.norm(hidden))
            assert cosine > 0.99, cosine
    finally:
        runtime.close()


@needs_gguf
def test_batched_scoring_reads_what_sequential_scoring_reads(tokenizer, tmp_path):
    from lrkd.teacher.label.readers import JudgementReader
    from lrkd.teacher.label.score_pool import iter_reads, score_pairs

    prompts = _prompts(tokenizer, 10)
    prefix, answers = _ids(tokenizer)
    manifest = {"teacher_id": "smollm2", "perspectives": ["decision"], "label_names": ["yes", "no"],
                "vector_dim": 576, "dataset_fingerprint": "readings", "extra": {"settings": 1}}
    common = dict(gguf=SMOL, manifest=manifest, reader=JudgementReader(prefix, answers), shard_size=3, workers=1)
    score_pairs(prompts, reads_dir=tmp_path / "one", runtime={"n_ctx": 512, "n_threads": 1}, **common)
    first = prompts[:4]  # a batched run that stopped after 4 pairs, then resumed
    score_pairs(first, reads_dir=tmp_path / "many", runtime={"n_ctx": 512, "n_threads": 1, "n_seq": 4}, **common)
    result = score_pairs(prompts, reads_dir=tmp_path / "many", runtime={"n_ctx": 512, "n_threads": 1, "n_seq": 4},
                         **common)
    assert result["written"] == len(prompts) - len(first)
    one, many = iter_reads(tmp_path / "one"), iter_reads(tmp_path / "many")
    assert sorted(one.keys) == sorted(many.keys) and len(set(many.keys)) == len(prompts)
    rows = [many.index()[k] for k in one.keys]
    assert np.abs(many.soft_labels[rows] - one.soft_labels).max() < 0.05
    assert not np.array_equal(many.soft_labels[rows][0], many.soft_labels[rows][1])


@pytest.mark.skipif(not engine_available("ik_llama"), reason="the ikllama extra is not installed")
def test_ik_llama_refuses_the_file_type_it_computes_wrongly():
    from lrkd.teacher.runtime.engines import open_engine

    with pytest.raises(ValueError, match="Q4_1.*engine=cyllama"):
        open_engine(SMOL, "ik_llama", n_ctx=256, n_threads=1, n_batch=64, n_seq=1)


def test_reading_parts_made_with_other_settings_stop_the_run_and_stay(tmp_path):
    from lrkd.artefact import ArtefactWriter
    from lrkd.teacher.label.score_pool import check_parts

    extra = {"prompt": "a", "execution": {"engine": "cyllama", "n_seq": 1}}
    writer = ArtefactWriter(tmp_path / "worker-000", teacher_id="t", perspectives=["decision"],
                            label_names=["yes", "no"], vector_dim=2, dataset_fingerprint="readings", extra=extra)
    writer.write_shard(0, ["q"], ["i"], {"decision": [""]}, np.array([[0.5, 0.5]]), np.zeros((1, 1, 2)))
    # another engine or batching: provenance, resumed
    check_parts(tmp_path, {"prompt": "a", "execution": {"engine": "ik_llama", "n_seq": 8}})
    with pytest.raises(ValueError, match=r"differ in \['prompt'\]"):
        check_parts(tmp_path, {"prompt": "b"})
    assert (tmp_path / "worker-000").is_dir()  # nothing removed
