"""A tuned decision rule (decision=thresholds): fitted on val at each validation epoch end, saved
with the checkpoint, applied at test without refitting, and carried by predict, the ONNX sidecar
and the save_pretrained form, which all give the same grades."""
from __future__ import annotations

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from lrkd.evaluation.decision import ThresholdRule
from lrkd.serve.scorers import load_served
from lrkd.student.module import DECISION_CHECKPOINT_KEY
from tests.serve import LABELS, load_minilm_tokenizer, reference_probs, tiny_student
from tests.serve.test_predict import CSV_GOOD, CSV_TEXT

THRESHOLDS = {"kind": "thresholds", "metric": "qwk", "score": "expected_relevance"}


def _batch(seed: int, b: int = 8) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(1000, 5000, (b, 12), generator=g),
            "attention_mask": torch.ones(b, 12, dtype=torch.long), "token_type_ids": torch.zeros(b, 12, dtype=torch.long),
            "labels": torch.randint(0, 3, (b,), generator=g), "relevance": torch.full((b,), float("nan")),
            "query_index": torch.arange(b) // 4, "pair_index": torch.arange(b)}


def _fit_and_test(module, tmp_path, monitor: str):
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), monitor=monitor, mode="max", save_top_k=1)
    trainer = L.Trainer(max_epochs=2, limit_train_batches=1, accelerator="cpu", devices=1, logger=False,
                        callbacks=[ckpt], enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=1, default_root_dir=str(tmp_path))
    val = DataLoader([_batch(1), _batch(2), _batch(3)], batch_size=None)
    trainer.fit(module, train_dataloaders=DataLoader([_batch(0)], batch_size=None), val_dataloaders=val)
    val_metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    trainer.test(module, dataloaders=DataLoader([_batch(4), _batch(5)], batch_size=None),
                 ckpt_path=ckpt.best_model_path, weights_only=True)
    test_metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return ckpt.best_model_path, val_metrics, test_metrics


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """(module after test, best checkpoint, val metrics, test metrics) of a thresholds student."""
    tmp = tmp_path_factory.mktemp("tuned")
    module = tiny_student("mlp", seed=5, decision=THRESHOLDS)
    ckpt, val, test = _fit_and_test(module, tmp, monitor="val/tuned/qwk")
    return module, ckpt, val, test


def test_the_rule_is_fitted_on_val_saved_in_the_checkpoint_and_used_unchanged_at_test(tuned):
    module, ckpt, val, test = tuned
    for key in ("val/tuned/qwk", "val/tuned/macro_f1", "val/tuned/accuracy", "val/macro_f1", "val/qwk"):
        assert key in val, key
    for key in ("test/tuned/qwk", "test/tuned/macro_f1", "test/tuned/f1/exact", "test/macro_f1", "test/qwk"):
        assert key in test, key
    saved = torch.load(ckpt, weights_only=True, map_location="cpu")[DECISION_CHECKPOINT_KEY]
    assert saved["kind"] == "thresholds" and len(saved["thresholds"]) == 2
    assert module.decision_rule().to_dict() == saved  # test restored the best epoch's rule and did not refit
    # the logged test/tuned metrics are those of the saved rule on the test rows
    from lrkd.evaluation.metrics import decision_metrics
    rows = [_batch(4), _batch(5)]
    with torch.no_grad():
        probs = torch.cat([module.eval().predict_logits(b["input_ids"], b["attention_mask"], b["token_type_ids"])
                           .softmax(-1) for b in rows])
    labels = torch.cat([b["labels"] for b in rows])
    preds = torch.from_numpy(ThresholdRule(**{k: v for k, v in saved.items() if k != "kind"}).decide(probs.numpy()))
    expected = decision_metrics(preds, labels, module.label_set, "test/tuned/")
    assert test["test/tuned/qwk"] == pytest.approx(float(expected["test/tuned/qwk"]), abs=1e-6)
    loaded, config = load_served(ckpt)
    assert config.decision == saved and config.decision_rule().to_dict() == saved  # the served model decides by it


def test_argmax_default_keeps_no_rule_and_logs_no_tuned_metrics(tmp_path):
    module = tiny_student("mlp", seed=5)
    assert "decision" not in module.hparams and module.eval_store is None
    tuned_keys = set(tiny_student("mlp", seed=5, decision=THRESHOLDS).state_dict())
    assert set(module.state_dict()) == tuned_keys  # no new checkpoint tensors either way
    ckpt, val, test = _fit_and_test(module, tmp_path, monitor="val/macro_f1")
    assert not [k for k in {**val, **test} if "tuned" in k]
    assert DECISION_CHECKPOINT_KEY not in torch.load(ckpt, weights_only=True, map_location="cpu")
    assert load_served(ckpt)[1].decision is None


def test_predict_onnx_and_save_pretrained_give_the_grades_of_the_saved_rule(tuned, tmp_path):
    from lrkd.cli import export as export_main, predict as predict_main

    module, ckpt, _, _ = tuned
    tokenizer = load_minilm_tokenizer()
    probs = np.stack([reference_probs(module, tokenizer, q, item) for q, item in CSV_GOOD.values()])
    # plant thresholds between the good rows' scores, so each falls in its own bin (not argmax's grades)
    base = module.decision_rule()
    scores = np.sort(base.scores(probs))
    assert np.diff(scores).min() > 1e-4
    planted = ThresholdRule(score_values=base.score_values, score=base.score, metric=base.metric,
                            thresholds=tuple((scores[:-1] + scores[1:]) / 2))
    want = [LABELS["names"][g] for g in planted.decide(probs)]
    assert sorted(want) == sorted(LABELS["names"])
    raw = torch.load(ckpt, weights_only=True, map_location="cpu")
    raw[DECISION_CHECKPOINT_KEY] = planted.to_dict()
    planted_ckpt = tmp_path / "planted.ckpt"
    torch.save(raw, planted_ckpt)

    onnx, hf_dir = tmp_path / "student.onnx", tmp_path / "hf"
    assert export_main(["--checkpoint", str(planted_ckpt), "--output", str(onnx), "--hf-dir", str(hf_dir)]) == 0
    src = tmp_path / "pairs.csv"
    src.write_text(CSV_TEXT)
    grades = {}
    for name, args in {"checkpoint": ["--checkpoint", str(planted_ckpt)], "onnx": ["--onnx", str(onnx)],
                       "save_pretrained": ["--checkpoint", str(hf_dir)]}.items():
        out = tmp_path / f"scored_{name}.csv"
        assert predict_main([*args, "--input", str(src), "--output", str(out), "--text-fields", "brand,description",
                             "--no-progress"]) == 0
        df = pd.read_csv(out, keep_default_na=False).set_index("line")
        grades[name] = [df.loc[line, "grade"] for line in CSV_GOOD]
    assert grades["checkpoint"] == want
    assert grades["onnx"] == want
    assert grades["save_pretrained"] == want
