"""The whole method end to end (experiment=pipeline with the tiny teacher and student), its reuse of
unchanged teacher stages, and a fourth perspective flowing from the config to the artefact and the
student's extractor."""
from __future__ import annotations

import hashlib
import json

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from lrkd.artefact import load_artefact
from lrkd.stages.pipeline import run_pipeline
from lrkd.teacher.runtime.hf import LocalHFBackend

GRADES = ["perfect", "good", "fair", "poor"]


def scripted_generate(self, prompts, n, temperature, max_new_tokens, seed):
    """A stand-in for sampling (the tiny teacher writes noise): sample i of a prompt ends with grade
    (h + i) mod 4, so with n = 4 every perspective of every pair has one correct and three wrong
    rationales."""
    out = []
    for prompt in prompts:
        h = int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % 4
        out.append([f"reason {i} about this product\nLabel: {GRADES[(h + i) % 4]}" for i in range(n)])
    return out


PIPELINE = ["experiment=pipeline", "teacher=tiny", "callbacks.progress_bar=null",
            "stage.generate.max_pairs=6", "stage.generate.n=4",
            "stage.sft.batch_size=3", "stage.sft.epochs=1", "stage.sft.evaluate=true", "stage.sft.eval_max_pairs=4",
            "stage.sft.eval_max_new_tokens=4", "stage.dpo.max_pairs=4", "stage.dpo.evaluate=true",
            "stage.dpo.eval_max_pairs=4", "stage.dpo.eval_max_new_tokens=4", "stage.annotate.max_pairs=8",
            "stage.annotate.max_new_tokens=4", "stage.annotate.shard_size=4",
            "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1", "data.batch_size=8", "data.eval_batch_size=16"]


def test_pipeline_end_to_end_then_reuses_every_teacher_stage(make_cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(LocalHFBackend, "generate", scripted_generate)
    work = tmp_path / "work"
    result = run_pipeline(make_cfg(*PIPELINE, f"stage.work_dir={work}", output_dir=tmp_path / "run1"))

    for key in ("generate", "sft", "dpo", "annotate"):
        assert result[f"reused/{key}"] is False
    assert result["sft/examples"] == 6 and result["sft/steps"] == 2
    assert result["dpo/pairs"] == 4 and 0.0 <= result["dpo/train/reward_accuracy"] <= 1.0
    for key in ("sft/eval/zero_shot", "sft/eval/sft", "dpo/eval/dpo"):  # the teacher before/after SFT, after DPO
        assert 0.0 <= result[f"{key}/macro_f1"] <= 1.0 and -1.0 <= result[f"{key}/qwk"] <= 1.0
    assert 0.0 <= result["student/test/macro_f1"] <= 1.0
    assert (work / "sft" / "model" / "lrkd_teacher.json").is_file()
    assert (work / "dpo" / "model" / "lrkd_teacher.json").is_file()
    art = load_artefact(work / "annotations")
    assert art.manifest.complete and len(art) == 8 and len(art.manifest.shards) == 2
    assert art.manifest.perspectives == ("user_intent", "structured_analysis", "business_rules")
    assert art.latents.shape == (8, 3, 32)  # D = the tiny teacher's hidden size
    summary = json.loads((tmp_path / "run1" / "metrics.json").read_text())
    assert summary["artefact"] == str(work / "annotations")

    records = {k: (work / k / "stage.json").read_text() for k in ("generations", "sft", "dpo", "annotations")}
    again = run_pipeline(make_cfg(*PIPELINE, f"stage.work_dir={work}", output_dir=tmp_path / "run2"))
    for key in ("generate", "sft", "dpo", "annotate"):
        assert again[f"reused/{key}"] is True, key
    assert {k: (work / k / "stage.json").read_text() for k in records} == records  # nothing recomputed
    assert again["student/test/macro_f1"] == pytest.approx(result["student/test/macro_f1"])

    # a changed DPO setting re-runs DPO and annotation, and reuses generation and SFT
    third = run_pipeline(make_cfg(*PIPELINE, "stage.dpo.beta=0.5", f"stage.work_dir={work}",
                                  output_dir=tmp_path / "run3"))
    assert [third[f"reused/{k}"] for k in ("generate", "sft", "dpo", "annotate")] == [True, True, False, False]


def test_a_fourth_perspective_reaches_the_artefact_and_the_student_extractor(make_cfg, tmp_path):
    from lrkd.stages.teacher_annotate import run_teacher_annotate
    from lrkd.student.module import StudentModule

    fourth = "+perspective.price_check={title:Price check,instruction:Say whether the price suits the query.}"
    cfg = make_cfg("stage=teacher_annotate", "teacher=tiny", fourth, f"stage.work_dir={tmp_path / 'work'}",
                   "stage.source=base", "stage.max_pairs=4", "stage.max_new_tokens=4")
    assert list(cfg.perspectives) == ["user_intent", "structured_analysis", "business_rules", "price_check"]
    result = run_teacher_annotate(cfg)
    art = load_artefact(result["artefact"])
    assert art.manifest.perspectives == ("user_intent", "structured_analysis", "business_rules", "price_check")
    assert art.latents.shape == (4, 4, 32) and len(art.rationales["price_check"]) == 4
    # the stage's labelling defaults (conf/stage/teacher_annotate.yaml) reach the run and its manifest
    assert (art.manifest.extra["soft_labels"], art.manifest.extra["no_repeat_ngram_size"]) == ("calibrated", 3)

    student = make_cfg("extractor=mlp", "loss=full", fourth, f"data.annotations={result['artefact']}",
                       "trainer.fast_dev_run=true", "data.batch_size=8", "callbacks.progress_bar=null")
    L.seed_everything(0)
    dm = instantiate(student.data, with_augmented_view=True, seed=0, _recursive_=False)
    dm.setup("fit")
    assert dm.spec.perspectives[-1] == "price_check" and dm.spec.num_perspectives == 4
    model = StudentModule(encoder=student.student, extractor=student.extractor, loss=student.loss,
                          optimizer=student.optimizer, data_spec=dm.spec.to_dict())
    trainer = instantiate(student.trainer, logger=False, callbacks=[])
    trainer.fit(model, datamodule=dm)
    batch = next(iter(dm.train_dataloader()))
    assert batch["latent_targets"].shape[1:] == (4, 32)
    with torch.no_grad():
        out = model(batch, with_augmented_view=True)
    assert out["latents"].shape[:2] == (8, 4) and out["latent_pred"].shape[1:] == (4, 32)
