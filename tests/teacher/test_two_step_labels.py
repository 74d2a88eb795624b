"""Two-step answer extraction (a sample without a parsable label gets a grade the teacher scores
after its rationale), contextual calibration of that score, and prompt clipping."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lrkd.teacher.label.annotate import GradeScorer
from lrkd.teacher.train.examples import encode_completions, encode_prompts
from lrkd.teacher.train.generate import Pair, add_scored_labels, generation_row, generation_stats, sample_grades
from lrkd.teacher.train.module import load_trained_teacher
from lrkd.teacher.prompts import clip_words, render_multi_prompt, render_perspective_prompt
from tests.teacher.builders import GRADES, perspectives, tiny_teacher_cfg


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return load_trained_teacher(tiny_teacher_cfg(tmp_path_factory.mktemp("cache")))


def test_clip_words_cuts_and_marks_long_item_texts():
    assert clip_words("a  b\nc d e", 3) == "a b c ..."
    assert clip_words("a b c", 3) == "a b c"
    assert clip_words(" a  b ", None) == "a b"
    persp = perspectives("user_intent")
    item = " ".join(f"w{i}" for i in range(100))
    single = render_perspective_prompt(None, persp[0], "q", item, GRADES, max_item_words=5)
    multi = render_multi_prompt(None, persp, "q", item, GRADES, max_item_words=5)
    for prompt in (single, multi):
        assert "Product: w0 w1 w2 w3 w4 ...\n" in prompt and "w5" not in prompt
    assert "w99" in render_perspective_prompt(None, persp[0], "q", item, GRADES)  # no cap: whole text


def test_sample_grades_is_the_argmax_when_greedy_and_follows_tempered_probabilities():
    probs = np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]])
    assert sample_grades(probs, 0.0, np.random.default_rng(0)).tolist() == [1, 0]
    draws = sample_grades(np.tile([[0.7, 0.3]], (20000, 1)), 0.5, np.random.default_rng(1))
    # T = 0.5 squares the probabilities: 0.49 / (0.49 + 0.09) = 0.8448...
    assert abs((draws == 0).mean() - 0.49 / 0.58) < 0.01
    draws = sample_grades(np.tile([[0.7, 0.3]], (20000, 1)), 1.0, np.random.default_rng(2))
    assert abs((draws == 0).mean() - 0.7) < 0.01


def test_add_scored_labels_fills_only_unlabelled_samples_with_a_rationale():
    pair = Pair("q1", "i1", "phone case", "a case", gold="poor")
    records = [generation_row(pair, "user_intent", 0, "It fits.\nLabel: perfect", GRADES),  # parsed: kept as is
               generation_row(pair, "user_intent", 1, "The product is a bike, not a case.", GRADES),  # no label
               generation_row(pair, "user_intent", 2, "   ", GRADES)]  # empty: nothing to score
    seen = {}

    def scorer(prompts, rationales):
        seen["args"] = (list(prompts), list(rationales))
        return np.array([[0.1, 0.1, 0.1, 0.7]], dtype=np.float32)

    assert add_scored_labels(records, ["p0", "p1", "p2"], scorer, GRADES) == 1
    assert seen["args"] == (["p1"], ["The product is a bike, not a case."])
    assert [r["label"] for r in records] == ["perfect", "poor", None]
    assert [r["label_source"] for r in records] == ["parsed", "scored", None]
    assert [r["correct"] for r in records] == [False, True, False]
    assert records[1]["parse_error"] == "no_label"  # the format failure stays on record
    stats = generation_stats(__import__("pandas").DataFrame(records), ["user_intent"])["overall"]
    assert stats["labels_scored"] == 1 and stats["parse_failures"] == 2
    assert stats["label_accuracy"] == 0.5 and abs(stats["kept_rate"] - 1 / 3) < 1e-12


def _label_probs(model, tok, prompt: str, prefix: str) -> np.ndarray:
    ids = torch.tensor([encode_prompts(tok, [prompt])[0] + encode_completions(tok, [prefix], add_eos=False)[0]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1]
    return logits[tok.convert_tokens_to_ids(GRADES)].softmax(-1).numpy()


def test_grade_scorer_reads_the_label_position_and_calibrates_by_the_empty_rationale(teacher):
    model, tok = teacher
    persp = perspectives("user_intent")
    prompts = [render_perspective_prompt(tok, persp[0], q, item, GRADES)
               for q, item in [("usb cable", "a red usb cable"), ("phone case", "a bicycle with two wheels")]]
    rationales = ["it is a cable", "a bike is not a phone case at all"]
    raw = GradeScorer(model, tok, GRADES, batch_size=1)(prompts, rationales)
    calibrated = GradeScorer(model, tok, GRADES, batch_size=2, calibrate=True)(prompts, rationales)
    for i in range(2):
        expected_raw = _label_probs(model, tok, prompts[i], f"{rationales[i]}\nLabel:")
        np.testing.assert_allclose(raw[i], expected_raw, atol=1e-5)
        ratio = expected_raw / _label_probs(model, tok, prompts[i], "Label:")
        np.testing.assert_allclose(calibrated[i], ratio / ratio.sum(), atol=1e-5)
    assert not np.allclose(raw, calibrated, atol=1e-3)
