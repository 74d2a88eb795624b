"""The student's quality gate (stage.quality_gate): which teacher figures it reads, and that it warns."""
from __future__ import annotations

import pytest

from lrkd.run.resolvers import ROOT_DIR
from lrkd.stages.student import TeacherBelowBaselineWarning, check_teacher


def test_quality_gate_reads_the_figures_an_hf_teacher_stage_recorded(tmp_path):
    """The HF pipeline's artefacts carry no extra.teacher_test: the gate reads the test evaluation
    that teacher_annotate wrote into stage.json, or, in the shipped artefact, PROVENANCE.json's."""
    import json
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from lrkd.artefact.writer import ArtefactWriter
    from lrkd.stages.student import recorded_teacher_test

    root = tmp_path / "annotations"
    ArtefactWriter(root, teacher_id="t", perspectives=["a"], label_names=["good", "bad"], vector_dim=2,
                   dataset_fingerprint="f", extra={"source": "dpo"}).finalize()
    assert recorded_teacher_test(root) is None
    (root / "stage.json").write_text(json.dumps({"metrics": {
        "eval/annotate_dpo/auc": 0.35, "eval/annotate_dpo/qwk": -0.03, "eval/annotate_sft/auc": 0.9,
        "eval/annotate_dpo/extra/depth": 1.0, "parse_rate": 0.25}}))
    assert recorded_teacher_test(root) == {"auc": 0.35, "qwk": -0.03}

    cfg = OmegaConf.create({"data": {"name": "chorus_icecat"}, "stage": {"quality_gate": {
        "metrics": ["auc", "qwk"], "baselines": {"chorus_icecat": {"auc": 0.782, "qwk": 0.506}}}}})
    loss = SimpleNamespace(needs_annotations=True)
    with pytest.warns(TeacherBelowBaselineWarning, match="auc 0.350 < 0.782"):
        assert check_teacher(cfg, SimpleNamespace(annotations=str(root)), loss) == [
            "auc 0.350 < 0.782", "qwk -0.030 < 0.506"]

    # the shipped SmolLM2 artefact: its annotating model is the DPO teacher, scored by teacher_dpo
    shipped = recorded_teacher_test(ROOT_DIR / "datasets" / "chorus_icecat" / "annotations")
    assert shipped is not None and abs(shipped["auc"] - 0.5247) < 1e-3 and shipped["pairs"] == 96
