"""One override each, through the real config and the student stage: class weights, the ordinal
preset, a val-tuned decision and checkpoint selection on it; metrics.json reports both decisions."""
from __future__ import annotations

import json

from lrkd.stages.student import run_student


def test_stage_with_balanced_ordinal_loss_and_a_val_tuned_decision(make_cfg, tmp_path):
    cfg = make_cfg("loss=ordinal", "+loss.terms.ce.class_weight=balanced", "decision=thresholds",
                   "callbacks.model_checkpoint.monitor=val/tuned/qwk", "optimized_metric=val/tuned/qwk",
                   "extractor=none", "trainer.max_epochs=2", "trainer.limit_train_batches=2",
                   "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "data.batch_size=8",
                   "data.eval_batch_size=16")
    result = run_student(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in ("test/macro_f1", "test/qwk", "test/tuned/macro_f1", "test/tuned/qwk", "val/tuned/qwk", "val/macro_f1"):
        assert key in metrics, key
    assert metrics["decision"]["kind"] == "thresholds" and len(metrics["decision"]["thresholds"]) == 3
    assert result["optimized_metric"] is not None
    import torch

    raw = torch.load(metrics["best_checkpoint"], weights_only=True, map_location="cpu")
    assert raw["lrkd_decision"] == metrics["decision"]  # the tested rule is the best checkpoint's
    counts = raw["hyper_parameters"]["data_spec"]["train_class_counts"]
    assert len(counts) == 4 and sum(counts) > 0
