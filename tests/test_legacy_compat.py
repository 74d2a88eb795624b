"""A checkpoint and an artefact written by the code before the package layout of issue 12 (commit
d59ad6a; tests/fixtures/legacy/make_legacy.py) load and score identically with today's code."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

LEGACY = Path(__file__).parent / "fixtures" / "legacy"


@pytest.fixture(scope="module")
def recorded() -> dict:
    return json.loads((LEGACY / "student.json").read_text())


def _inputs(rec: dict) -> tuple[torch.Tensor, ...]:
    return tuple(torch.tensor(rec[k]) for k in ("input_ids", "attention_mask", "token_type_ids"))


def test_old_checkpoint_scores_identically_through_load_student(recorded):
    from lrkd.serve.scorers import load_served

    student, config = load_served(LEGACY / "student.ckpt")  # lrkd.student.checkpoint.load_student
    with torch.no_grad():
        logits = student.predict_logits(*_inputs(recorded))
    torch.testing.assert_close(logits, torch.tensor(recorded["logits"]), rtol=0, atol=1e-6)
    probs = logits.softmax(-1)
    assert config.decision == recorded["decision"]
    assert config.max_length == 48 and config.text_fields == ("brand", "description")
    assert config.decision_rule().decide(probs.numpy()).tolist() == recorded["grades"]


def test_old_checkpoint_loads_into_the_training_module(recorded):
    from lrkd.student.module import StudentModule

    module = StudentModule.load_from_checkpoint(str(LEGACY / "student.ckpt"), weights_only=True,
                                                map_location="cpu").eval()
    with torch.no_grad():
        logits = module.predict_logits(*_inputs(recorded))
    torch.testing.assert_close(logits, torch.tensor(recorded["logits"]), rtol=0, atol=1e-6)
    assert module.decision_rule().to_dict() == recorded["decision"]
    assert module.latent_projection is not None  # the training-only head came back too
    assert module.parameter_counts() == recorded["parameter_counts"]


def test_old_artefact_reads_identically():
    from lrkd.artefact import load_artefact

    rec = json.loads((LEGACY / "artefact.json").read_text())
    ann = load_artefact(LEGACY / "artefact")
    assert len(ann) == rec["num_rows"]
    assert list(ann.perspectives) == rec["perspectives"]
    assert [str(q) for q in ann.query_ids] == rec["query_ids"]
    assert [str(i) for i in ann.item_ids] == rec["item_ids"]
    assert ann.rationales == rec["rationales"]
    np.testing.assert_array_equal(ann.soft_labels, np.asarray(rec["soft_labels"], np.float32))
    np.testing.assert_array_equal(ann.latents, np.asarray(rec["latents"], np.float32))


def test_hparams_naming_modules_that_moved_load_under_their_new_paths(tmp_path, recorded):
    """Checkpoints written before issue 21 name the schedule lrkd.optim.* (now lrkd.lightning.optim)."""
    from hydra.utils import get_method

    from lrkd.student.checkpoint import load_student, upgrade_targets
    from lrkd.student.module import StudentModule

    old = {"scheduler": {"_target_": "lrkd.optim.linear_warmup_schedule", "_partial_": True, "warmup_ratio": 0.1},
           "loss": {"_target_": "lrkd.losses.WeightedLoss", "terms": [{"_target_": "lrkd.callbacks.RNGStateCheckpoint"}]}}
    new = upgrade_targets(old)
    assert new["scheduler"]["_target_"] == "lrkd.lightning.optim.linear_warmup_schedule"
    assert new["loss"]["_target_"] == "lrkd.losses.WeightedLoss"  # unmoved paths stay
    assert new["loss"]["terms"][0]["_target_"] == "lrkd.lightning.callbacks.RNGStateCheckpoint"
    get_method(new["scheduler"]["_target_"])

    checkpoint = torch.load(LEGACY / "student.ckpt", weights_only=True)
    checkpoint["hyper_parameters"]["scheduler"] = old["scheduler"]
    torch.save(checkpoint, tmp_path / "old_schedule.ckpt")
    assert load_student(tmp_path / "old_schedule.ckpt").hparams["scheduler"] == new["scheduler"]
    module = StudentModule.load_from_checkpoint(str(tmp_path / "old_schedule.ckpt"), weights_only=True)
    assert module.hparams["scheduler"] == new["scheduler"]
