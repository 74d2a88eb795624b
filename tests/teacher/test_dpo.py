"""DPO: the loss against hand-computed values, pair construction from conflict samples, and the
reference log-probs (precomputed for a full fine-tune, adapter-disabled under LoRA) that training
never changes."""
from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lrkd.losses.dpo import dpo_loss, reward_statistics
from lrkd.teacher.train.examples import (PreferenceCollator, PreferenceDataset, preference_pairs, sft_examples,
                                   tokenize_prompt_completions)
from lrkd.teacher.train.module import (TeacherDPOModule, load_trained_teacher, precompute_reference_logprobs,
                                 save_teacher, sequence_logprobs)
from lrkd.teacher.prompts import render_multi_prompt
from tests.teacher.builders import GRADES, generation, generations_frame, pair_frame, perspectives, tiny_teacher_cfg


def _neg_log_sigmoid(x: float) -> float:
    return math.log1p(math.exp(-x))


# ------------------------------------------------------------------------------------------ loss
def test_dpo_loss_matches_hand_computed_values():
    # pair 1: log-ratios chosen -1 - (-2) = 1, rejected -3 - (-2.5) = -0.5 -> beta * 1.5 = 0.75
    # pair 2: log-ratios chosen 0, rejected -1 - (-2) = 1 -> beta * -1 = -0.5
    loss, chosen, rejected = dpo_loss(torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0]),
                                      torch.tensor([-2.0, -2.0]), torch.tensor([-2.5, -2.0]), beta=0.5)
    expected = (_neg_log_sigmoid(0.75) + _neg_log_sigmoid(-0.5)) / 2  # (0.38687 + 0.97408) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert loss.item() == pytest.approx(0.680474, abs=1e-5)
    torch.testing.assert_close(chosen, torch.tensor([0.5, 0.0]))
    torch.testing.assert_close(rejected, torch.tensor([-0.25, 0.5]))
    stats = reward_statistics(chosen, rejected)
    assert stats["reward_accuracy"].item() == pytest.approx(0.5)
    assert stats["reward_margin"].item() == pytest.approx(((0.5 + 0.25) + (0.0 - 0.5)) / 2)
    assert stats["rewards_chosen"].item() == pytest.approx(0.25)


def test_dpo_loss_gradient_prefers_chosen_and_rejects_bad_input():
    pc = torch.tensor([-1.0], requires_grad=True)
    pr = torch.tensor([-1.0], requires_grad=True)
    loss, _, _ = dpo_loss(pc, pr, torch.tensor([-1.0]), torch.tensor([-1.0]), beta=0.1)
    assert loss.item() == pytest.approx(math.log(2.0))  # equal log-ratios: -log sigma(0)
    loss.backward()
    assert pc.grad.item() == pytest.approx(-0.05) and pr.grad.item() == pytest.approx(0.05)  # beta * sigma(0)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(pc, pr, pc, pr, beta=0.0)
    with pytest.raises(ValueError, match="one shape"):
        dpo_loss(pc, torch.zeros(2), pc, pr)


# ------------------------------------------------------------------------------ pair construction
def _conflict_generations():
    ui, sa = "user_intent", "structured_analysis"
    return generations_frame([
        # (q1, a), gold perfect: a wrong user-intent sample before two correct ones; structured
        # analysis correct, one parse failure, and the same wrong rationale twice (kept once)
        generation("q1", "a", ui, 0, "ui wrong good", "good", "perfect"),
        generation("q1", "a", ui, 1, "ui ok one", "perfect", "perfect"),
        generation("q1", "a", ui, 2, "ui ok two", "perfect", "perfect"),
        generation("q1", "a", sa, 0, "sa ok", "perfect", "perfect"),
        generation("q1", "a", sa, 1, "rambling", None, "perfect", parse_error="no_label"),
        generation("q1", "a", sa, 2, "sa wrong poor", "poor", "perfect"),
        generation("q1", "a", sa, 3, "sa wrong poor", "poor", "perfect"),
        # (q1, b), gold poor: no correct structured analysis -> neither SFT nor DPO
        generation("q1", "b", ui, 0, "bag ok", "poor", "poor"),
        generation("q1", "b", sa, 0, "bag wrong", "fair", "poor"),
        # (q2, c), gold good: all correct, no conflict -> SFT only
        generation("q2", "c", sa, 0, "cable attrs", "good", "good"),
        generation("q2", "c", ui, 0, "cable intent", "good", "good"),
        # (q3, d), gold fair: one conflict
        generation("q3", "d", ui, 0, "toner ok", "fair", "fair"),
        generation("q3", "d", ui, 1, "toner wrong", "perfect", "fair"),
        generation("q3", "d", sa, 0, "toner attrs", "fair", "fair"),
    ])


def test_sft_examples_take_the_first_correct_rationale_of_every_perspective():
    persp = perspectives("user_intent", "structured_analysis")
    frame = pair_frame()
    examples = sft_examples(_conflict_generations(), frame, persp, GRADES, tokenizer=None)
    assert [(e.query_id, e.item_id) for e in examples] == [("q1", "a"), ("q2", "c"), ("q3", "d")]
    assert examples[0].completion == "User intent: ui ok one\nStructured analysis: sa ok\nLabel: perfect"
    assert examples[1].completion == "User intent: cable intent\nStructured analysis: cable attrs\nLabel: good"
    assert examples[0].prompt == render_multi_prompt(None, persp, "hp laptop", "HP Pavilion dv7 notebook. Brand: HP",
                                                     GRADES)


def test_preference_pairs_from_conflict_samples():
    persp = perspectives("user_intent", "structured_analysis")
    pairs = preference_pairs(_conflict_generations(), pair_frame(), persp, GRADES, tokenizer=None)
    # round robin: each prompt's first conflict (q1/a user intent, q3/d user intent), then q1/a's second
    assert [(p.query_id, p.item_id, p.perspective, p.sample) for p in pairs] == [
        ("q1", "a", "user_intent", 0), ("q3", "d", "user_intent", 1), ("q1", "a", "structured_analysis", 2)]
    first, _, third = pairs
    assert first.chosen == "User intent: ui ok one\nStructured analysis: sa ok\nLabel: perfect"
    assert first.rejected == "User intent: ui wrong good\nStructured analysis: sa ok\nLabel: good"
    assert third.rejected == "User intent: ui ok one\nStructured analysis: sa wrong poor\nLabel: poor"
    assert first.wrong_label == "good" and third.wrong_label == "poor"
    assert first.prompt == third.prompt
    capped = preference_pairs(_conflict_generations(), pair_frame(), persp, GRADES, tokenizer=None, max_pairs=2)
    assert {(p.query_id, p.item_id) for p in capped} == {("q1", "a"), ("q3", "d")}


def test_generations_of_another_dataset_are_refused():
    persp = perspectives("user_intent")
    gens = generations_frame([generation("zz", "a", "user_intent", 0, "x", "perfect", "perfect")])
    with pytest.raises(ValueError, match="not in the dataset"):
        sft_examples(gens, pair_frame(), persp, GRADES, tokenizer=None)


# ----------------------------------------------------------------------------- reference log-probs
def _preference_data(tokenizer, cache_dir):
    persp = perspectives("user_intent", "structured_analysis")
    pairs = preference_pairs(_conflict_generations(), pair_frame(), persp, GRADES, tokenizer)
    prompts = [p.prompt for p in pairs]
    chosen = tokenize_prompt_completions(tokenizer, prompts, [p.chosen for p in pairs], cache_dir)
    rejected = tokenize_prompt_completions(tokenizer, prompts, [p.rejected for p in pairs], cache_dir)
    return PreferenceDataset(chosen, rejected)


def _fit(module, dataset, steps=4):
    loader = DataLoader(dataset, batch_size=2, shuffle=False, collate_fn=PreferenceCollator(module.tokenizer.pad_token_id))
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(module, loader)
    return trainer, loader


def _one_embedding_table(module) -> bool:
    """One model in memory: a second copy of the teacher would bring a second embedding table."""
    return sum(isinstance(m, torch.nn.Embedding) for m in module.modules()) == 1


def test_full_finetune_reference_is_precomputed_once_and_unchanged_by_training(tmp_path):
    cfg = tiny_teacher_cfg(tmp_path / "cache")
    base, tokenizer = load_trained_teacher(cfg)
    sft_dir = save_teacher(base, tokenizer, tmp_path / "sft" / "model")
    L.seed_everything(0)
    module = TeacherDPOModule(teacher=cfg, optimizer={"lr": 5e-3}, init_from=str(sft_dir), beta=0.1)
    assert module.needs_precomputed_reference and _one_embedding_table(module)
    dataset = _preference_data(module.tokenizer, tmp_path / "cache")
    ref_chosen, ref_rejected = precompute_reference_logprobs(module.model, dataset, module.tokenizer.pad_token_id,
                                                             batch_size=2, progress=False)
    dataset.set_reference(ref_chosen, ref_rejected)
    saved = (ref_chosen.copy(), ref_rejected.copy())

    trainer, loader = _fit(module, dataset)
    assert trainer.global_step == 4
    np.testing.assert_array_equal(dataset.reference[0], saved[0])
    np.testing.assert_array_equal(dataset.reference[1], saved[1])
    # the stored values are the SFT model's log-probs (a fresh load of it agrees) ...
    sft, _ = load_trained_teacher(cfg, sft_dir)
    batch = next(iter(loader))
    with torch.no_grad():
        fresh = sequence_logprobs(sft, batch)
    b = len(batch["pair_index"])
    torch.testing.assert_close(fresh[:b], batch["ref_chosen_logps"], atol=1e-4, rtol=0)
    torch.testing.assert_close(fresh[b:], batch["ref_rejected_logps"], atol=1e-4, rtol=0)
    # ... while the policy moved away from them, towards the chosen completions
    module.eval()
    with torch.no_grad():
        policy = sequence_logprobs(module.model, batch)
    margin_after = (policy[:b] - fresh[:b]) - (policy[b:] - fresh[b:])
    assert not torch.allclose(policy, fresh, atol=1e-3)
    assert margin_after.mean() > 0


def test_lora_reference_is_the_adapter_disabled_model_and_unchanged_by_training(tmp_path):
    cfg = tiny_teacher_cfg(tmp_path / "cache", lora={"r": 4, "alpha": 8, "dropout": 0.0,
                                                     "target_modules": ["q_proj", "v_proj"]})
    base, tokenizer = load_trained_teacher(cfg)
    sft_dir = save_teacher(base, tokenizer, tmp_path / "sft" / "model")
    L.seed_everything(0)
    module = TeacherDPOModule(teacher=cfg, optimizer={"lr": 5e-2}, init_from=str(sft_dir), beta=0.1)
    assert module.uses_lora and not module.needs_precomputed_reference and _one_embedding_table(module)
    dataset = _preference_data(module.tokenizer, tmp_path / "cache")
    batch = PreferenceCollator(module.tokenizer.pad_token_id)([dataset[0], dataset[1]])
    before = module.reference_logprobs(batch)
    with torch.no_grad():
        policy_before = sequence_logprobs(module.model, batch)
    torch.testing.assert_close(policy_before, torch.cat(before), atol=1e-5, rtol=0)  # fresh adapter: policy = SFT

    _fit(module, dataset)
    after = module.reference_logprobs(batch)
    torch.testing.assert_close(after[0], before[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(after[1], before[1], atol=1e-6, rtol=0)
    with torch.no_grad():
        policy_after = sequence_logprobs(module.model, batch)
    assert not torch.allclose(policy_after, policy_before, atol=1e-3)

    # the DPO adapter saved over the SFT model loads back (merged) with the trained policy's outputs
    dpo_dir = module.save_model(tmp_path / "dpo" / "model")
    loaded, _ = load_trained_teacher(cfg, dpo_dir)
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(sequence_logprobs(loaded, batch), sequence_logprobs(module.model, batch),
                                   atol=1e-4, rtol=0)
