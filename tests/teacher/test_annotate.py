"""Annotation: soft labels and hidden-state latents against a direct forward, the sentence-encoder
latents, and a killed annotation that resumes to exactly the uninterrupted artefact."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import lrkd.teacher.label.annotate as annotate_lib
from lrkd.artefact import ArtefactWriter, load_artefact, read_manifest
from lrkd.schema import dataset_fingerprint
import lrkd.teacher.label.evaluate as teacher_evaluation
from lrkd.teacher.label.evaluate import evaluate_teacher
from lrkd.teacher.label.annotate import SentenceEmbedder, annotate_pool, label_pairs, label_prefix, pair_prompts
from lrkd.teacher.tokens import grade_token_ids
from lrkd.teacher.train.examples import encode_completions, encode_prompts
from lrkd.teacher.train.module import load_trained_teacher
from tests.teacher.builders import GRADES, pair_frame, perspectives, tiny_teacher_cfg

PERSPECTIVES = ("user_intent", "structured_analysis")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return load_trained_teacher(tiny_teacher_cfg(tmp_path_factory.mktemp("cache")))


def test_grade_tokens_are_the_tokens_after_the_label_prefix(teacher):
    _, tok = teacher
    assert grade_token_ids(tok, GRADES) == tok.convert_tokens_to_ids(GRADES)  # whole words in the MiniLM vocab
    with pytest.raises(ValueError, match="distinct tokens"):
        grade_token_ids(tok, ["good", "goodish", "bad"])  # "goodish" -> good ##ish


def test_soft_labels_sum_to_one_and_equal_the_grade_logits_softmax(teacher):
    model, tok = teacher
    persp = perspectives(*PERSPECTIVES)
    frame = pair_frame()
    prompts = pair_prompts(tok, frame, [0, 2, 3], persp, GRADES)  # different lengths: left padding at work
    out = label_pairs(model, tok, prompts, persp, GRADES, max_new_tokens=6)
    assert out.soft_labels.shape == (3, 4) and out.soft_labels.dtype == np.float32
    np.testing.assert_allclose(out.soft_labels.sum(1), 1.0, atol=1e-6)
    grade_ids = tok.convert_tokens_to_ids(GRADES)
    for i, prompt in enumerate(prompts):
        prefix = label_prefix(out.rationales[i], persp, GRADES)
        assert prefix.endswith("\nLabel:")
        ids = torch.tensor([encode_prompts(tok, [prompt])[0] + encode_completions(tok, [prefix], add_eos=False)[0]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1]
        np.testing.assert_allclose(out.soft_labels[i], logits[grade_ids].softmax(-1).numpy(), atol=1e-5)
    assert len(set(map(tuple, out.soft_labels.round(6)))) == 3  # the rows really differ


def test_hidden_latents_average_each_rationales_tokens(teacher, monkeypatch):
    model, tok = teacher
    persp = perspectives(*PERSPECTIVES)
    text = "User intent: fits the need\nStructured analysis: brand matches\nLabel: good"
    monkeypatch.setattr(annotate_lib, "generate_completions", lambda m, t, ids, n, **kw: [text] * len(ids))
    prompts = pair_prompts(tok, pair_frame(), [0, 3], persp, GRADES)
    out = label_pairs(model, tok, prompts, persp, GRADES, max_new_tokens=4, hidden=True)
    assert out.labels == ["good", "good"] and out.errors == [None, None]
    assert out.rationales[0] == {"user_intent": "fits the need", "structured_analysis": "brand matches"}
    # prefix tokens: user intent : | fits the need | structured analysis : | brand matches | label :
    for i, prompt in enumerate(prompts):
        p_ids = encode_prompts(tok, [prompt])[0]
        c_ids = encode_completions(tok, ["User intent: fits the need\nStructured analysis: brand matches\nLabel:"],
                                   add_eos=False)[0]
        assert tok.convert_ids_to_tokens(c_ids[3:6]) == ["fits", "the", "need"]
        assert tok.convert_ids_to_tokens(c_ids[9:11]) == ["brand", "matches"]
        with torch.no_grad():
            states = model(input_ids=torch.tensor([p_ids + c_ids]), output_hidden_states=True).hidden_states[-1][0]
        p = len(p_ids)
        np.testing.assert_allclose(out.hidden_latents[i, 0], states[p + 3:p + 6].mean(0).numpy(), atol=1e-5)
        np.testing.assert_allclose(out.hidden_latents[i, 1], states[p + 9:p + 11].mean(0).numpy(), atol=1e-5)


def _pool_frame(n: int = 6) -> pd.DataFrame:
    base = pair_frame()
    rows = [base.iloc[i % len(base)].to_dict() for i in range(n)]
    df = pd.DataFrame(rows)
    df["item_id"] = [f"item{i}" for i in range(n)]
    df.attrs["text_fields"] = ["brand"]
    return df


def _writer(root, frame, vector_dim):
    return ArtefactWriter(root, teacher_id="tiny", perspectives=list(PERSPECTIVES), label_names=GRADES,
                          vector_dim=vector_dim, dataset_fingerprint=dataset_fingerprint(frame))


class Killed(RuntimeError):
    pass


def test_killed_annotation_resumes_to_the_uninterrupted_artefact(teacher, tmp_path, monkeypatch):
    model, tok = teacher
    persp = perspectives(*PERSPECTIVES)
    frame = _pool_frame(6)
    rows = np.arange(6)
    dim = model.config.hidden_size
    kwargs = dict(batch_size=1, max_new_tokens=4, latent="hidden", shard_size=2, progress=False)

    full_writer = _writer(tmp_path / "full", frame, dim)
    annotate_pool(model, tok, frame, rows, persp, GRADES, full_writer, **kwargs)
    full_writer.finalize()

    real, calls = annotate_lib.label_pairs, []

    def dying(*args, **kw):  # killed in the middle of shard 2 (its first batch done, the second not)
        calls.append(1)
        if len(calls) == 6:
            raise Killed("killed")
        return real(*args, **kw)

    monkeypatch.setattr(annotate_lib, "label_pairs", dying)
    with pytest.raises(Killed):
        annotate_pool(model, tok, frame, rows, persp, GRADES, _writer(tmp_path / "killed", frame, dim), **kwargs)
    monkeypatch.setattr(annotate_lib, "label_pairs", real)
    finished = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (tmp_path / "killed").glob("shard-*")}
    assert sorted(finished) == ["shard-00000.parquet", "shard-00000.safetensors", "shard-00001.parquet",
                                "shard-00001.safetensors"]
    assert read_manifest(tmp_path / "killed").num_rows == 4

    writer = _writer(tmp_path / "killed", frame, dim)
    stats = annotate_pool(model, tok, frame, rows, persp, GRADES, writer, **kwargs)
    writer.finalize()
    assert (stats.resumed, stats.written, stats.shards) == (4, 2, 1)
    for name, (data, mtime) in finished.items():  # finished shards untouched
        path = tmp_path / "killed" / name
        assert path.read_bytes() == data and path.stat().st_mtime_ns == mtime

    full, resumed = load_artefact(tmp_path / "full"), load_artefact(tmp_path / "killed")
    assert resumed.manifest.complete and resumed.manifest.shards == full.manifest.shards
    keys = list(zip(resumed.query_ids, resumed.item_ids))
    assert len(keys) == len(set(keys)) == 6  # every pair once
    assert keys == list(zip(full.query_ids, full.item_ids))
    np.testing.assert_allclose(resumed.soft_labels, full.soft_labels, atol=1e-6)
    np.testing.assert_array_equal(resumed.latents, full.latents)
    assert resumed.rationales == full.rationales


def test_sentence_encoder_latents_embed_each_rationale(teacher, tmp_path, monkeypatch):
    model, tok = teacher
    persp = perspectives(*PERSPECTIVES)
    text = "User intent: a notebook for work\nStructured analysis: brand matches\nLabel: perfect"
    monkeypatch.setattr(annotate_lib, "generate_completions", lambda m, t, ids, n, **kw: [text] * len(ids))
    embedder = SentenceEmbedder(max_length=32)
    assert embedder.dim == 384
    frame = pair_frame()
    writer = _writer(tmp_path / "st", frame, embedder.dim)
    annotate_pool(model, tok, frame, [0, 1], persp, GRADES, writer, batch_size=2, max_new_tokens=4,
                  latent="sentence_encoder", embedder=embedder, shard_size=8, progress=False)
    art = load_artefact(tmp_path / "st")
    expected = embedder(["a notebook for work", "brand matches"])
    np.testing.assert_allclose(art.latents[0], expected, atol=2e-3)  # stored as float16
    assert not np.allclose(expected[0], expected[1], atol=1e-2)


def test_evaluate_teacher_scores_the_soft_label_argmax(teacher, monkeypatch):
    model, tok = teacher
    persp = perspectives(*PERSPECTIVES)
    frame = pair_frame()  # gold labels: perfect, poor, good, fair
    # a teacher that always answers "perfect" with certainty: accuracy 1/4, one class predicted
    def certain(m, t, prompts, p, g, n, hidden=False, grade_ids=None, **kw):
        out = annotate_lib.LabelledBatch([""] * len(prompts), [{}] * len(prompts), ["perfect"] * len(prompts),
                                         [None] * len(prompts), np.tile(np.eye(4, dtype=np.float32)[0], (len(prompts), 1)))
        return out

    monkeypatch.setattr(teacher_evaluation, "label_pairs", certain)
    result = evaluate_teacher(model, tok, frame, [0, 1, 2, 3], persp, GRADES, batch_size=3, progress=False)
    assert result["accuracy"] == pytest.approx(0.25)
    assert result["macro_f1"] == pytest.approx((2 * 1 * 0.25 / 1.25) / 4)  # F1(perfect) = 0.4, others 0
    assert result["pairs"] == 4 and result["parse_rate"] == 1.0


def test_contextual_calibration_against_hand_computed_rows():
    from lrkd.teacher.label.annotate import contextual_calibration

    probs = np.array([[0.9, 0.05, 0.05], [0.5, 0.25, 0.25]])
    prior = np.array([[0.8, 0.1, 0.1], [0.5, 0.25, 0.25]])
    # row 0: ratios 1.125, 0.5, 0.5 -> / 2.125; row 1: the prior itself -> uniform
    expected = np.array([[1.125 / 2.125, 0.5 / 2.125, 0.5 / 2.125], [1 / 3, 1 / 3, 1 / 3]])
    out = contextual_calibration(probs, prior)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        contextual_calibration(probs, prior[:1])


def test_calibrated_soft_labels_divide_by_the_content_free_completion(teacher):
    model, tok = teacher
    persp = perspectives(*PERSPECTIVES)
    prompts = pair_prompts(tok, pair_frame(), [0, 2, 3], persp, GRADES)
    raw = label_pairs(model, tok, prompts, persp, GRADES, max_new_tokens=6)
    calibrated = label_pairs(model, tok, prompts, persp, GRADES, max_new_tokens=6, calibrate=True)
    assert calibrated.rationales == raw.rationales  # greedy: the same completions
    grade_ids = tok.convert_tokens_to_ids(GRADES)
    empty = label_prefix({}, persp, GRADES)
    assert empty == "User intent: \nStructured analysis: \nLabel:"

    def probs(prompt, prefix):
        ids = torch.tensor([encode_prompts(tok, [prompt])[0] + encode_completions(tok, [prefix], add_eos=False)[0]])
        with torch.no_grad():
            return model(input_ids=ids).logits[0, -1][grade_ids].softmax(-1).double().numpy()

    for i, prompt in enumerate(prompts):
        ratio = probs(prompt, label_prefix(raw.rationales[i], persp, GRADES)) / probs(prompt, empty)
        np.testing.assert_allclose(calibrated.soft_labels[i], ratio / ratio.sum(), atol=1e-5)
    assert not np.allclose(calibrated.soft_labels, raw.soft_labels, atol=1e-3)


def test_no_repeat_ngram_size_stops_greedy_loops(teacher, monkeypatch):
    from lrkd.teacher.label.annotate import generate_completions

    model, tok = teacher
    prompt_ids = encode_prompts(tok, pair_prompts(tok, pair_frame(), [0, 1, 2, 3], perspectives(*PERSPECTIVES), GRADES))
    generated = []
    real_generate = model.generate

    def spy(**kwargs):  # keep the generated token ids (decoded text does not round-trip WordPiece)
        out = real_generate(**kwargs)
        generated.append(out[:, kwargs["input_ids"].shape[1]:].tolist())
        return out

    monkeypatch.setattr(model, "generate", spy)

    def repeated_trigrams(ids):
        ids = [i for i in ids if i != tok.pad_token_id]
        grams = [tuple(ids[i:i + 3]) for i in range(len(ids) - 2)]
        return len(grams) - len(set(grams))

    generate_completions(model, tok, prompt_ids, max_new_tokens=64)
    assert sum(map(repeated_trigrams, generated[-1])) > 0  # the tiny random teacher loops under plain greedy
    generate_completions(model, tok, prompt_ids, max_new_tokens=64, no_repeat_ngram_size=3)
    assert [repeated_trigrams(ids) for ids in generated[-1]] == [0, 0, 0, 0]


def test_completion_no_repeat_ngram_counts_only_the_completion():
    from lrkd.teacher.label.annotate import CompletionNoRepeatNGram

    prompt = [1, 2, 3]
    ban = CompletionNoRepeatNGram(3, start=len(prompt))
    # completion [1, 2]: the prompt's (1, 2, 3) does not count, so nothing is banned
    scores = ban(torch.tensor([prompt + [1, 2]]), torch.zeros(1, 6))
    assert torch.isfinite(scores).all()
    # completion [1, 2, 3, 1, 2]: (1, 2) -> 3 was written before: 3 is banned, nothing else
    # completion [5, 5, 5]: (5, 5) -> 5 was written before
    scores = ban(torch.tensor([prompt + [1, 2, 3, 1, 2], prompt + [0, 0, 5, 5, 5]]), torch.zeros(2, 6))
    assert torch.isinf(scores).nonzero().tolist() == [[0, 3], [1, 5]]
    with pytest.raises(ValueError):
        CompletionNoRepeatNGram(0, 3)
