"""The reasoning-augmented view is encoded for the annotated rows only, and gives the CRSD loss
the same value as encoding every row."""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf

from lrkd.schema import DataSpec, LabelSet
from lrkd.student.module import StudentModule

CONF = Path(__file__).resolve().parents[2] / "conf"
LABELS = {"names": ["perfect", "good", "fair", "poor"], "gains": [3, 2, 1, 0], "values": [3, 2, 1, 0],
          "relevant_up_to": 1}


def _module() -> StudentModule:
    torch.manual_seed(0)
    spec = DataSpec(label_set=LabelSet.from_config(LABELS)).to_dict()
    return StudentModule(encoder=OmegaConf.load(CONF / "student" / "tiny.yaml"),
                         extractor=OmegaConf.load(CONF / "extractor" / "none.yaml"),
                         loss=OmegaConf.load(CONF / "loss" / "crsd.yaml"),
                         optimizer=OmegaConf.load(CONF / "optimizer" / "adamw.yaml"), data_spec=spec).eval()


def encoder_input_shapes(model: StudentModule) -> list[tuple[int, int]]:
    """A list that records the [B, L] input shape of every encoder forward pass of ``model``."""
    shapes: list[tuple[int, int]] = []
    model.student.encoder.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    return shapes


def _batch(annotated) -> dict:
    g = torch.Generator().manual_seed(1)
    b, length, aug_length = len(annotated), 7, 12
    aug_mask = torch.zeros(b, aug_length, dtype=torch.long)
    for i, n in enumerate([12, 9, 5, 10, 8, 11][:b]):
        aug_mask[i, :n] = 1
    return {"input_ids": torch.randint(5, 90, (b, length), generator=g),
            "attention_mask": torch.ones(b, length, dtype=torch.long),
            "token_type_ids": torch.zeros(b, length, dtype=torch.long),
            "aug_input_ids": torch.randint(5, 90, (b, aug_length), generator=g) * aug_mask,
            "aug_attention_mask": aug_mask, "aug_token_type_ids": torch.zeros(b, aug_length, dtype=torch.long),
            "labels": torch.tensor([0, 3, 1, 3, 2, 0][:b]), "annotated": torch.tensor(annotated)}


def test_augmented_view_is_encoded_for_annotated_rows_only_with_the_same_crsd_loss():
    model = _module()
    partial = _batch([True, False, True, False, True, True])
    full = dict(partial, annotated=torch.ones(6, dtype=torch.bool))
    hook_shapes = encoder_input_shapes(model)
    with torch.no_grad():
        out_partial = model(partial, with_augmented_view=True)
        out_full = model(full, with_augmented_view=True)
    # the standard view (6 rows), then the 4 annotated rows cut to their longest mask (12 tokens: row 0)
    assert hook_shapes[:2] == [(6, 7), (4, 12)] and hook_shapes[3] == (6, 12)
    rows = torch.tensor([0, 2, 4, 5])
    torch.testing.assert_close(out_partial["aug_pooled"][rows], out_full["aug_pooled"][rows], atol=1e-5, rtol=1e-5)
    assert out_partial["aug_pooled"][[1, 3]].abs().sum() == 0
    loss_partial, _ = model.loss_fn(out_partial, partial)
    masked_full = dict(full, annotated=partial["annotated"])  # every row encoded, the same rows masked
    loss_full, _ = model.loss_fn(out_full, masked_full)
    torch.testing.assert_close(loss_partial, loss_full, atol=1e-5, rtol=1e-5)
    assert loss_partial > 0


def test_no_annotated_row_skips_the_second_encoder_pass():
    model = _module()
    batch = _batch([False, False, False])
    shapes = encoder_input_shapes(model)
    with torch.no_grad():
        out = model(batch, with_augmented_view=True)
    assert shapes == [(3, 7)] and out["aug_logits"].abs().sum() == 0


def test_annotated_rows_without_a_rationale_are_left_out_of_the_view_and_of_crsd():
    """A teacher that wrote rationales for a subset: annotated rows with no rationale (has_rationale
    False) give CRSD what the same rows give when they are not annotated at all."""
    model = _module()
    annotated = torch.ones(6, dtype=torch.bool)
    with_text = torch.tensor([True, False, True, False, True, True])
    subset = dict(_batch(annotated.tolist()), has_rationale=with_text)
    reference = _batch(with_text.tolist())
    shapes = encoder_input_shapes(model)
    with torch.no_grad():
        out_subset = model(subset, with_augmented_view=True)
        out_reference = model(reference, with_augmented_view=True)
    assert shapes[1] == (4, 12)  # the 4 rows with a rationale, not the 6 annotated ones
    assert out_subset["aug_pooled"][[1, 3]].abs().sum() == 0
    loss_subset, _ = model.loss_fn(out_subset, subset)
    loss_reference, _ = model.loss_fn(out_reference, reference)
    torch.testing.assert_close(loss_subset, loss_reference, atol=1e-6, rtol=1e-6)
    loss_all, _ = model.loss_fn(out_subset, _batch(annotated.tolist()))  # the empty views counted: another value
    assert not torch.allclose(loss_all, loss_subset)
