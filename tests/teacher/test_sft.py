"""SFT: the loss covers completion tokens only (hand-computed), the teacher module computes it on
left-padded batches exactly as on single unpadded sequences, and training + saving round-trips."""
from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lrkd.losses.lm import completion_logprobs, completion_nll
from lrkd.teacher.train.examples import (CompletionCollator, CompletionDataset, encode_completions, encode_prompts, fits,
                                   sft_examples, tokenize_prompt_completions)
from lrkd.teacher.train.module import TeacherSFTModule, completion_window_logits, load_trained_teacher, read_model_record
from tests.teacher.builders import GRADES, generation, generations_frame, pair_frame, perspectives, tiny_teacher_cfg

LN2, LN3 = math.log(2.0), math.log(3.0)


def _hand_case():
    """B=1, L=4, V=3: tokens [0, 1, 2, 1], prompt = the first two, completion = the last two.

    logits[0] predicts the prompt token 1 (masked: a large NLL that must not count);
    logits[1] = [0, 0, ln 2] predicts token 2 with p = 2/4 -> NLL ln 2;
    logits[2] = [0, ln 3, 0] predicts token 1 with p = 3/5 -> NLL ln(5/3)."""
    logits = torch.tensor([[[0.0, -5.0, 0.0], [0.0, 0.0, LN2], [0.0, LN3, 0.0], [9.0, 9.0, 9.0]]])
    return logits, torch.tensor([[0, 1, 2, 1]]), torch.tensor([[0, 0, 1, 1]])


def test_sft_loss_masks_the_prompt_hand_computed():
    logits, ids, mask = _hand_case()
    assert completion_nll(logits, ids, mask).item() == pytest.approx((LN2 + math.log(5 / 3)) / 2, abs=1e-6)
    assert completion_logprobs(logits, ids, mask).item() == pytest.approx(-math.log(10 / 3), abs=1e-6)
    # the prompt's logits do not matter; a completion position's do
    changed = logits.clone()
    changed[0, 0] = torch.tensor([3.0, -2.0, 1.0])
    assert completion_nll(changed, ids, mask).item() == pytest.approx(completion_nll(logits, ids, mask).item())
    changed[0, 1, 2] = 0.0
    assert completion_nll(changed, ids, mask).item() != pytest.approx(completion_nll(logits, ids, mask).item())
    # unmasked, the prompt target would count: a wrong implementation gets a different number
    assert completion_nll(logits, ids, torch.ones_like(mask)).item() > 2.0


def test_sft_loss_weighs_every_completion_token_equally():
    logits, ids, mask = _hand_case()
    # second row: uniform logits, three completion targets of NLL ln 3 each
    logits2 = torch.cat([logits, torch.zeros(1, 4, 3)])
    ids2, mask2 = torch.cat([ids, torch.tensor([[2, 2, 0, 1]])]), torch.cat([mask, torch.tensor([[0, 1, 1, 1]])])
    expected = (LN2 + math.log(5 / 3) + 3 * LN3) / 5
    assert completion_nll(logits2, ids2, mask2).item() == pytest.approx(expected, abs=1e-6)
    torch.testing.assert_close(completion_logprobs(logits2, ids2, mask2),
                               torch.tensor([-math.log(10 / 3), -3 * LN3]))
    with pytest.raises(ValueError, match="no completion token"):
        completion_nll(logits, ids, torch.zeros_like(mask))


def _generations():
    ui, sa = "user_intent", "structured_analysis"
    rows = []
    for qid, iid, gold, words in [("q1", "a", "perfect", "a notebook as asked"), ("q2", "c", "good", "a usb cable"),
                                  ("q3", "d", "fair", "toner of another model")]:
        rows += [generation(qid, iid, ui, 0, f"the shopper gets {words}", gold, gold),
                 generation(qid, iid, sa, 0, f"attributes: {words}", gold, gold)]
    return generations_frame(rows)


def _sft_data(tokenizer, cache_dir):
    persp = perspectives("user_intent", "structured_analysis")
    examples = sft_examples(_generations(), pair_frame(), persp, GRADES, tokenizer)
    return examples, tokenize_prompt_completions(tokenizer, [e.prompt for e in examples],
                                                 [e.completion for e in examples], cache_dir)


def test_module_loss_on_a_left_padded_batch_equals_the_unpadded_computation(tmp_path):
    cfg = tiny_teacher_cfg(tmp_path / "cache")
    module = TeacherSFTModule(teacher=cfg, optimizer={"lr": 1e-3})
    tok = module.tokenizer
    examples, view = _sft_data(tok, tmp_path / "cache")
    assert len(view) == 3 and len(set(view.lengths.tolist())) > 1  # rows of different lengths get padded
    batch = CompletionCollator(tok.pad_token_id)([CompletionDataset(view)[i] for i in range(3)])
    module.eval()
    with torch.no_grad():
        loss = completion_nll(*completion_window_logits(module.model, batch))
        # by hand: each example alone, all positions' logits, NLL of its completion tokens
        total, count = 0.0, 0
        for e in examples:
            p_ids, c_ids = encode_prompts(tok, [e.prompt])[0], encode_completions(tok, [e.completion])[0]
            ids = torch.tensor([p_ids + c_ids])
            logp = module.model(input_ids=ids).logits.log_softmax(-1)[0]
            for t in range(len(p_ids), len(p_ids) + len(c_ids)):
                total -= logp[t - 1, ids[0, t]].item()
                count += 1
    assert count == int(batch["completion_mask"].sum())
    assert loss.item() == pytest.approx(total / count, rel=1e-4)


@pytest.mark.parametrize("lora", [False, True])
def test_sft_fit_lowers_the_loss_and_the_saved_teacher_loads_back(tmp_path, lora):
    lora_cfg = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": None} if lora else None
    cfg = tiny_teacher_cfg(tmp_path / "cache", lora=lora_cfg, gradient_checkpointing=True)
    L.seed_everything(0)
    module = TeacherSFTModule(teacher=cfg, optimizer={"lr": 2e-2 if lora else 1e-2})
    assert module.model.is_gradient_checkpointing
    _, view = _sft_data(module.tokenizer, tmp_path / "cache")
    assert fits(view, 10_000).all() and not fits(view, 10).any()
    loader = DataLoader(CompletionDataset(view), batch_size=3, collate_fn=CompletionCollator(module.tokenizer.pad_token_id))
    batch = next(iter(loader))

    def loss_now() -> float:
        module.eval()
        with torch.no_grad():
            loss = completion_nll(*completion_window_logits(module.model, batch)).item()
        module.train()
        return loss

    before = loss_now()
    trainer = L.Trainer(max_steps=8, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(module, loader)
    after = loss_now()
    assert after < before - (0.1 if lora else 0.5)
    out = module.save_model(tmp_path / "sft" / "model")
    assert read_model_record(out)["kind"] == ("adapter" if lora else "full")
    loaded, tokenizer = load_trained_teacher(cfg, out)
    assert tokenizer.padding_side == "left"
    with torch.no_grad():
        reloaded = completion_nll(*completion_window_logits(loaded, batch)).item()
    assert reloaded == pytest.approx(after, abs=1e-4)


def test_gradient_accumulation_averages_over_every_completion_token_of_the_step(tmp_path):
    """Micro-batches [e0] and [e1, e2] accumulated into one step move the weights exactly as one
    batch [e0, e1, e2] does (TRL / transformers' num_items_in_batch), not as the mean of the two
    micro-batch means would (the examples' completions differ in length)."""
    cfg = tiny_teacher_cfg(tmp_path / "cache")
    sgd = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 1.0}
    constant = {"_target_": "lrkd.lightning.optim.constant_warmup_schedule", "_partial_": True, "warmup_ratio": 0.0}

    def step(batches, accumulate: int) -> dict:
        L.seed_everything(0)
        module = TeacherSFTModule(teacher=cfg, optimizer=sgd, scheduler=constant)
        before = {k: v.detach().clone() for k, v in module.model.named_parameters()}
        trainer = L.Trainer(max_steps=1, accumulate_grad_batches=accumulate, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1)
        trainer.fit(module, DataLoader(batches, batch_size=None))
        return {k: before[k] - v.detach() for k, v in module.model.named_parameters()}

    tok = TeacherSFTModule(teacher=cfg, optimizer=sgd).tokenizer
    _, view = _sft_data(tok, tmp_path / "cache")
    items = [CompletionDataset(view)[i] for i in range(3)]
    collate = CompletionCollator(tok.pad_token_id)
    counts = [int(collate([it])["completion_mask"].sum()) for it in items]
    assert len(set(counts)) > 1
    whole = step([collate(items)], 1)
    accumulated = step([collate(items[:1]), collate(items[1:])], 2)
    for name, delta in whole.items():
        torch.testing.assert_close(accumulated[name], delta, rtol=1e-4, atol=1e-6)
    assert any(float(d.abs().sum()) > 0 for d in whole.values())
