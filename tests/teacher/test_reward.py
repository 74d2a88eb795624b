"""The multi-dimensional reward (teacher_reward): each dimension on hand-written completions, the
per-prompt combination, the best/worst pair builder (ties, min_margin), the learned ridge model
recovering a planted direction, and the stage on generations."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lrkd.teacher.reward.model import RidgeRewardModel, bradley_terry, evaluate_ridge, pair_accuracy
from lrkd.teacher.reward.pairs import Candidate, best_worst_pairs, candidates_from_generations, combine
from lrkd.teacher.reward.dimensions import (cited_facts, consistency, correctness, faithfulness, format_score,
                                  repeated_ngram_share, score_dimensions)
from tests.teacher.builders import GRADES, generation, generations_frame, pair_frame, perspectives

P3 = perspectives("user_intent", "structured_analysis", "business_rules")
CTX = {"grade_names": GRADES, "perspectives": P3}


def completion(ui="the shopper wants a notebook", sa="an HP notebook", br="in stock", label="good"):
    lines = [f"{p.title}: {r}" for p, r in zip(P3, (ui, sa, br)) if r is not None]
    return "\n".join(lines + ([f"Label: {label}"] if label else []))


def test_correctness_is_ordinal():
    texts = [completion(label="perfect"), completion(label="good"), completion(label="poor"), completion(label=None)]
    # gold perfect: exact 1; one grade off 2/3 (an exact-match scorer gives 0); three off 0; no label 0
    assert correctness(texts, gold=["perfect"] * 4, **CTX) == pytest.approx([1.0, 2 / 3, 0.0, 0.0])
    # a missing section does not hide the label from correctness
    assert correctness([completion(br=None, label="fair")], gold=["good"], **CTX) == pytest.approx([2 / 3])


def test_format_counts_label_sections_and_repetition():
    loop = "the the shopper wants wants it " + "buy this now " * 6
    texts = [completion(), completion(br=None), completion(label=None), completion(ui=loop)]
    scores = format_score(texts, **CTX)
    assert scores[0] == pytest.approx(1.0)
    assert scores[1] == pytest.approx((1 + 2 / 3 + 1) / 3)          # one of three sections missing
    assert scores[2] == pytest.approx((0 + 1 + 1) / 3)              # no label line
    rep = repeated_ngram_share(texts[3])
    assert 0.3 < rep < 0.7 and scores[3] == pytest.approx((1 + 1 + 1 - rep) / 3)
    assert repeated_ngram_share("a b c a b c") == pytest.approx(1 / 4)  # grams abc bca cab abc: one repeat


def test_consistency_from_perspective_labels_and_from_the_text():
    texts = [completion(label="good")] * 3 + [completion(label=None)]
    labels = [{"user_intent": "good", "structured_analysis": "good", "business_rules": "poor"},
              {"user_intent": "good", "structured_analysis": None, "business_rules": None},
              {"user_intent": None, "structured_analysis": None, "business_rules": None},
              {"user_intent": "good", "structured_analysis": "good", "business_rules": "good"}]
    assert consistency(texts, perspective_labels=labels, **CTX) == pytest.approx([2 / 3, 1.0, 1.0, 0.0])
    # without the labels, each section's verdict is the last grade it names
    text = completion(ui="a perfect notebook for this query", sa="poor specs, only fair overall", br="ok",
                      label="fair")
    # ui's verdict: perfect (disagrees); sa's: fair (its last grade; agrees); br names none
    assert consistency([text], **CTX) == pytest.approx([0.5])
    text2 = completion(ui="a fair match", sa="poor specs, fair overall", br="fine", label="fair")
    assert consistency([text2], **CTX) == pytest.approx([1.0])


def test_faithfulness_checks_cited_facts_and_penalises_copying():
    item = "Canon 725 toner cartridge Black. Brand: Canon. Attributes: Page yield: 1600"
    assert cited_facts("It is a Canon 725 cartridge for the HP LaserJet") == ["canon", "725", "hp", "laserjet"]
    texts = [completion(ui="a Canon toner", sa="yields 1600 pages, model 725", br="fine"),
             completion(ui="a Canon toner", sa="yields 2000 pages, model 725", br="fine"),
             completion(ui="no facts cited here", sa="none", br="none"),
             completion(ui=item, sa="as said", br="ok")]
    scores = faithfulness(texts, item_text=[item] * 4, query=["canon toner"] * 4, **CTX)
    assert scores[0] == pytest.approx(1.0)
    assert scores[1] == pytest.approx(2 / 3)      # 2000 is not in the item: canon, 725 found, 2000 not
    assert scores[2] == pytest.approx(1.0)        # cites nothing, claims nothing
    assert scores[3] == pytest.approx(0.0)        # the item copied wholesale
    with pytest.raises(ValueError, match="unknown reward dimension"):
        score_dimensions(texts, ["helpfulness"], **CTX)


def test_combine_normalises_per_prompt_and_weights():
    scores = {"a": [1.0, 0.0, 0.5, 0.5], "b": [0.0, 0.0, 0.0, 1.0]}
    groups = ["p", "p", "q", "q"]
    z = combine(scores, {"a": 1.0, "b": 2.0}, groups, "zscore", min_std=0.05)
    # prompt p: a = (+1, -1) (std 0.5), b constant -> 0; prompt q: a constant, b = (-1, +1) x 2
    np.testing.assert_allclose(z, [1.0, -1.0, -2.0, 2.0])
    np.testing.assert_allclose(combine(scores, {"a": 1.0}, groups, "center"), [0.5, -0.5, 0.0, 0.0])
    # the std floor: a 0.01 difference is not blown up to a full standard deviation
    np.testing.assert_allclose(combine({"a": [0.51, 0.49]}, {"a": 1.0}, ["p", "p"], "zscore", 0.05), [0.2, -0.2])
    with pytest.raises(ValueError, match="not scored"):
        combine(scores, {"c": 1.0}, groups)


def _cand(qid, sample, text):
    return Candidate(qid, "i", sample, text, None, {}, "good", "q", "item")


def test_pairs_are_best_vs_worst_drop_ties_and_respect_min_margin():
    cands = [_cand("q1", 0, "a"), _cand("q1", 1, "b"), _cand("q1", 2, "c"),  # margin 2.0
             _cand("q2", 0, "d"), _cand("q2", 1, "e"),                        # tie: margin 0
             _cand("q3", 0, "f"), _cand("q3", 1, "g"),                        # margin 0.4
             _cand("q4", 0, "h"), _cand("q4", 1, "h")]                        # same text: a tie
    combined = [0.5, 1.0, -1.0, 0.3, 0.3, 0.2, -0.2, 1.0, -1.0]
    prompts = {(c.query_id, "i"): f"prompt {c.query_id}" for c in cands}
    pairs, counts = best_worst_pairs(cands, combined, prompts, min_margin=0.5, scores={"x": combined})
    assert [(p.query_id, p.chosen, p.rejected, p.margin) for p in pairs] == [("q1", "b", "c", 2.0)]
    assert pairs[0].chosen_scores == {"x": 1.0, "combined": 1.0} and pairs[0].prompt == "prompt q1"
    assert counts == {"prompts": 4, "ties": 2, "below_margin": 1}
    pairs, _ = best_worst_pairs(cands, combined, prompts, min_margin=0.0)
    assert [(p.query_id, p.margin) for p in pairs] == [("q1", 2.0), ("q3", 0.4)]  # largest margin first


def test_candidates_are_samplewise_with_the_median_label():
    ui, sa, br = "user_intent", "structured_analysis", "business_rules"
    rows = [generation("q1", "a", ui, 0, "wants a notebook", "perfect", "perfect"),
            generation("q1", "a", sa, 0, "HP notebook", "fair", "perfect"),
            generation("q1", "a", br, 0, "fine", "good", "perfect"),
            generation("q1", "a", ui, 1, "no idea", None, "perfect", parse_error="no_label"),
            generation("q1", "a", sa, 1, "", None, "perfect", parse_error="empty_output"),
            generation("q1", "a", br, 1, "maybe", "poor", "perfect")]
    cands = candidates_from_generations(generations_frame(rows), pair_frame(), P3, GRADES)
    assert [(c.sample, c.label) for c in cands] == [(0, "good"), (1, "poor")]  # median of perfect/fair/good
    assert cands[0].completion.endswith("Label: good") and cands[0].perspective_labels[sa] == "fair"
    assert cands[1].gold == "perfect" and cands[1].perspective_labels == {ui: None, sa: None, br: "poor"}
    scores = score_dimensions([c.completion for c in cands], ["correctness", "consistency"],
                              gold=[c.gold for c in cands], perspective_labels=[c.perspective_labels for c in cands],
                              **CTX)
    assert scores == {"correctness": pytest.approx([2 / 3, 0.0]), "consistency": pytest.approx([1 / 3, 1.0])}


def test_ridge_recovers_a_planted_direction():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 16))
    w = rng.normal(size=(16, 2))
    y = x @ w + 0.05 * rng.normal(size=(600, 2))
    model = RidgeRewardModel(["a", "b"], alpha=1.0).fit(x, y)
    for k, head in enumerate(model.heads):
        coef = head.coef_ / model.scale  # back to the raw feature scale
        assert coef @ w[:, k] / (np.linalg.norm(coef) * np.linalg.norm(w[:, k])) > 0.999
    groups = np.repeat(np.arange(150), 4)
    _, report = evaluate_ridge(x, y, groups, ["a", "b"], heldout_fraction=0.25, seed=0)
    assert report["a/pair_accuracy"] > 0.97 and report["a/pairs"] == 38 * 6 and report["b/r2"] > 0.99
    # a dimension unrelated to the embeddings is at chance
    _, noise = evaluate_ridge(x, rng.normal(size=(600, 1)), groups, ["n"], heldout_fraction=0.5, seed=0)
    assert 0.35 < noise["n/pair_accuracy"] < 0.65
    bt = bradley_terry(x, y[:, 0], groups, heldout_fraction=0.25)
    assert bt["bradley_terry/pair_accuracy"] > 0.95


def test_pair_accuracy_by_hand():
    # group g: true 3 > 2 > 1, predicted order 1 < 3 > 2: pairs (0,1) wrong, (0,2) right, (1,2) right
    acc, n = pair_accuracy([1.0, 3.0, 2.0], [3.0, 2.0, 1.0], ["g", "g", "g"])
    assert (acc, n) == (pytest.approx(1 / 3), 3)
    acc, n = pair_accuracy([1.0, 1.0, 5.0], [1.0, 2.0, 2.0], ["g", "g", "h"])  # a predicted tie counts half
    assert (acc, n) == (0.5, 1)


def test_reward_stage_writes_scores_and_pairs(make_cfg, tmp_path, monkeypatch):
    from lrkd.stages.base import write_stage_record
    from lrkd.stages.teacher_common import load_pairs
    from lrkd.stages.teacher_reward import run_teacher_reward

    work = tmp_path / "work"
    cfg = make_cfg("stage=teacher_reward", "teacher=tiny", f"stage.work_dir={work}", "stage.learned.enabled=true",
                   "stage.learned.bradley_terry=true")
    dm = load_pairs(cfg)
    frame, grades = dm.frame, list(dm.label_set.names)
    rows = []
    train = frame[frame["label"] >= 0].head(24)
    for r in train.itertuples():
        gold = grades[int(r.label)]
        for s in range(3):
            for p in P3:
                label = gold if s == 0 else grades[(int(r.label) + s) % 4]
                rows.append(generation(r.query_id, r.item_id, p.name, s, f"{p.name} reasoning {s}", label, gold))
    gen = work / "generations"
    gen.mkdir(parents=True)
    (gen / "shard-00000.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    write_stage_record(gen, "teacher_generate", "f" * 64, 1.0, {})
    result = run_teacher_reward(cfg)
    scores = pd.read_parquet(work / "reward" / "scores.parquet")
    assert len(scores) == result["candidates"] == 24 * 3 and result["pairs"] == 24
    assert (scores.loc[scores["sample"] == 0, "correctness"] == 1.0).all()
    pairs = [json.loads(x) for x in (work / "reward" / "pairs.jsonl").read_text().splitlines()]
    assert all(p["chosen_sample"] == 0 and p["chosen_scores"]["correctness"] == 1.0 for p in pairs)
    assert {"prompt", "chosen", "rejected", "margin"} <= set(pairs[0])
    assert 0.0 <= result["learned/correctness/pair_accuracy"] <= 1.0 and "learned/bradley_terry/pair_accuracy" in result
    assert run_teacher_reward(cfg)["reused"] is True
