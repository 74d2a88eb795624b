"""Each perspective's own verdict (PerspectiveVerdictReader) and the per-perspective diagnostics."""
from __future__ import annotations

import numpy as np
import pytest

from lrkd.evaluation.perspectives import perspective_diagnostics
from tests.teacher.test_llama_cpp import SMOL, needs_gguf


def test_diagnostics_against_a_hand_computed_case():
    """Three grades (0 = the best, the only relevant one), two perspectives, six pairs (one unlabelled).
    final grades [0, 1, 1, 2, 0]: wrong on pair 1 (gold 0 -> 1) and pair 4 (gold 2 -> 0)."""
    gold = np.array([0, 0, 1, 2, 2, -1])
    final = np.eye(3)[[0, 1, 1, 2, 0, 0]]
    a = np.array([[.8, .1, .1], [.6, .3, .1], [.1, .3, .6], [.1, .2, .7], [.7, .1, .2], [1, 0, 0]])  # [0 0 2 2 0]
    b = np.eye(3)[[1, 1, 1, 2, 2, 0]]
    has = np.array([[1, 1], [1, 1], [1, 1], [1, 0], [1, 1], [1, 1]], bool)  # b's rationale on pair 3 is empty
    d = perspective_diagnostics(np.stack([a, b], axis=1), final, gold, ["a", "b"], 3, relevant_up_to=0,
                                has_rationale=has)
    assert d["pairs"] == 5 and d["final_mistakes"] == 2
    pa, pb, pf = (d["perspectives"][n] for n in ("a", "b", "final"))
    assert pa["pairs"] == 5 and pa["agree_gold"] == pytest.approx(3 / 5)
    assert pa["agree_gold_binary"] == pytest.approx(4 / 5)
    assert pa["auc"] == pytest.approx(5 / 6)  # P(relevant) .8 .6 against .1 .1 .7
    assert pa["qwk"] == pytest.approx(4 / 9)
    assert pa["agree_final"] == pytest.approx(3 / 5)
    assert (pa["corrects"], pa["corrects_share"], pa["breaks"]) == (1, 0.5, 1)
    assert np.asarray(pa["corrected"])[0, 1] == 1 and np.asarray(pa["corrected"]).sum() == 1
    assert pb["pairs"] == 4 and pb["agree_gold"] == pytest.approx(2 / 4) and pb["agree_final"] == pytest.approx(2 / 4)
    assert (pb["corrects"], pb["breaks"]) == (1, 1)
    assert np.asarray(pb["corrected"])[2, 0] == 1 and np.asarray(pb["corrected"]).sum() == 1
    assert np.asarray(pb["confusion"]).tolist() == [[0, 2, 0], [0, 1, 0], [0, 0, 1]]
    assert pf["agree_gold"] == pytest.approx(3 / 5) and pf["corrects"] == 0 and pf["breaks"] == 0


def test_diagnostics_refuse_shapes_that_do_not_agree():
    with pytest.raises(ValueError, match="do not agree"):
        perspective_diagnostics(np.zeros((4, 2, 3)), np.zeros((4, 3)), np.zeros(4, int), ["only_one"], 3)
    with pytest.raises(ValueError, match="do not agree"):  # 3 answers but 4 grades
        perspective_diagnostics(np.zeros((4, 1, 3)), np.zeros((4, 3)), np.zeros(4, int), ["a"], 4)


def test_yes_no_verdicts_are_compared_with_gold_relevance():
    """Four grades, relevant = grades 0..1; answers (yes, no). final answers [yes, yes, no, no]:
    wrong on pair 1 (gold 2, not relevant) and pair 2 (gold 1, relevant)."""
    gold = np.array([0, 2, 1, 3])
    final = np.array([[.9, .1], [.6, .4], [.3, .7], [.2, .8]])
    intent = np.array([[.8, .2], [.4, .6], [.45, .55], [.1, .9]])  # yes no no no: corrects pair 1
    d = perspective_diagnostics(intent[:, None, :], final, gold, ["intent"], 4, relevant_up_to=1)
    p, f = d["perspectives"]["intent"], d["perspectives"]["final"]
    assert d["answers"] == "yes_no" and d["final_mistakes"] == 2
    assert p["agree_gold"] == pytest.approx(3 / 4) and f["agree_gold"] == pytest.approx(2 / 4)
    assert p["auc"] == pytest.approx(1.0)  # P(yes) .8 .45 (relevant) against .4 .1
    assert f["auc"] == pytest.approx(3 / 4)  # .9 .3 against .6 .2
    assert (p["corrects"], p["breaks"]) == (1, 0)
    assert np.asarray(p["corrected"]).tolist() == [[0, 0], [0, 0], [1, 0], [0, 0]]  # gold 2, final yes
    assert np.asarray(p["confusion"]).tolist() == [[1, 0], [0, 1], [0, 1], [0, 1]]


def test_report_names_the_mismatches_each_perspective_corrects(tmp_path):
    from lrkd.report.perspectives import write_perspective_report

    gold = np.array([0, 0, 1, 2])
    final = np.eye(3)[[1, 1, 1, 2]]
    verdicts = np.stack([np.eye(3)[[0, 1, 1, 2]], np.eye(3)[[0, 0, 1, 2]]], axis=1)
    d = perspective_diagnostics(verdicts, final, gold, ["intent", "rules"], 3)
    files = write_perspective_report(d, ["perfect", "good", "bad"], tmp_path)
    text = files["perspectives.md"].read_text()
    assert "| perfect -> good | 2 | 1 | 2 |" in text  # final wrong twice there: intent corrects 1, rules 2
    assert files["perspectives.png"].stat().st_size > 0


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from lrkd.teacher.model import load_gguf_tokenizer

    cfg = {"name": "smollm2-gguf-test", "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
           "cache_dir": str(tmp_path_factory.mktemp("cache"))}
    return load_gguf_tokenizer(cfg, SMOL)


def _setup(tokenizer, n=4):
    from lrkd.teacher.prompts import JUDGE_ANSWERS, JUDGE_PREFIX, Perspective
    from lrkd.teacher.label.readers import PerspectiveVerdictReader, prompts_for_rows
    from lrkd.teacher.tokens import answer_token_ids
    from tests.teacher.test_llama_cpp import _frame

    perspectives = [Perspective("intent", "User intent", "Say what the shopper wants."),
                    Perspective("attributes", "Structured analysis", "Compare the attributes.")]
    prompts = prompts_for_rows(tokenizer, _frame(n), list(range(n)), 20)
    given = {(p.query_id, p.item_id): {"intent": f"the shopper wants item {i}.",
                                        "attributes": "" if i == 1 else f"the size matches ({i} m)."}
             for i, p in enumerate(prompts)}
    _, answer_ids = answer_token_ids(tokenizer, JUDGE_PREFIX, JUDGE_ANSWERS)
    reader = PerspectiveVerdictReader(tokenizer.name_or_path, perspectives, JUDGE_PREFIX, answer_ids, given)
    return perspectives, prompts, given, answer_ids, reader


@needs_gguf
def test_a_verdict_is_the_judgement_read_after_that_rationale_alone(tokenizer):
    from lrkd.teacher.label.readers import softmax
    from lrkd.teacher.runtime.llama_cpp import LlamaCppRuntime

    perspectives, prompts, given, answer_ids, reader = _setup(tokenizer, 3)
    runtime = LlamaCppRuntime(SMOL, n_ctx=512, n_threads=1)

    def independent(prompt, text):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return softmax(runtime.read([prompt.shared, prompt.pair], ids, logit_ids=answer_ids).logits)

    try:
        final, verdicts, texts = reader(runtime, prompts[0])
        assert verdicts.shape == (2, 2) and texts == given[(prompts[0].query_id, prompts[0].item_id)]
        np.testing.assert_allclose(verdicts[0], independent(prompts[0], "User intent: the shopper wants item 0.\nAnswer:"),
                                   atol=1e-6)
        np.testing.assert_allclose(verdicts[1], independent(prompts[0], "Structured analysis: the size matches (0 m)."
                                                                        "\nAnswer:"), atol=1e-6)
        np.testing.assert_allclose(final, independent(prompts[0], "User intent: the shopper wants item 0.\n"
                                                                  "Structured analysis: the size matches (0 m).\nAnswer:"),
                                   atol=1e-6)
        assert np.abs(verdicts[0] - verdicts[1]).max() > 1e-4  # the two perspectives read differently
        final, empty, _ = reader(runtime, prompts[1])  # pair 1's second rationale is empty: a uniform row,
        np.testing.assert_array_equal(empty[1], np.full(2, 0.5, np.float32))  # and the final text has one line
        np.testing.assert_allclose(final, independent(prompts[1], "User intent: the shopper wants item 1.\nAnswer:"),
                                   atol=1e-6)
    finally:
        runtime.close()


@needs_gguf
def test_batched_verdicts_read_what_sequential_verdicts_read_and_resume(tokenizer, tmp_path):
    from lrkd.teacher.label.score_pool import iter_reads, score_pairs

    perspectives, prompts, given, answer_ids, reader = _setup(tokenizer, 6)
    manifest = {"teacher_id": "smollm2", "perspectives": [p.name for p in perspectives], "label_names": ["yes", "no"],
                "vector_dim": 2, "dataset_fingerprint": "readings", "extra": {"settings": 1}}
    common = dict(gguf=SMOL, manifest=manifest, reader=reader, shard_size=2, workers=1)
    score_pairs(prompts, reads_dir=tmp_path / "one", runtime={"n_ctx": 512, "n_threads": 1}, **common)
    score_pairs(prompts[:2], reads_dir=tmp_path / "many", runtime={"n_ctx": 512, "n_threads": 1, "n_seq": 3}, **common)
    again = score_pairs(prompts, reads_dir=tmp_path / "many", runtime={"n_ctx": 512, "n_threads": 1, "n_seq": 3},
                        **common)
    assert again["written"] == 4  # the two finished pairs are not read again
    one, many = iter_reads(tmp_path / "one"), iter_reads(tmp_path / "many")
    rows = [many.index()[k] for k in one.keys]
    assert many.latents.shape == (6, 2, 2)
    assert np.abs(many.latents[rows] - one.latents).max() < 0.05
    assert np.abs(many.soft_labels[rows] - one.soft_labels).max() < 0.05
    np.testing.assert_allclose(one.latents.sum(axis=2), 1.0, atol=1e-3)  # latents are stored in float16
    assert one.rationales["attributes"][one.index()[(prompts[1].query_id, prompts[1].item_id)]] == ""
