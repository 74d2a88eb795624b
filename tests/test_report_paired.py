"""Paired differences over replicates (fold, seed) and the label-budget summary, on a synthetic multirun
whose numbers are chosen by hand."""
from __future__ import annotations

import json
import math

import pytest
import yaml

from lrkd.report import build_report, find_jobs, main
from lrkd.report.paired import (label_budget_summary, paired_differences, replicate_id, replicate_order)

METRICS = ["test/auc", "test/ndcg@10", "test/tuned/qwk", "test/macro_f1"]
# (arm, fraction, fold) -> test/auc; the other metrics are auc - 0.1, auc - 0.2, auc - 0.3.
# distilled at 1.0, fold 1 failed (error.json).
AUC = {("gold_only", 0.5, 0): 0.70, ("gold_only", 0.5, 1): 0.60, ("distilled", 0.5, 0): 0.75,
       ("distilled", 0.5, 1): 0.70, ("gold_only", 1.0, 0): 0.80, ("gold_only", 1.0, 1): 0.82,
       ("distilled", 1.0, 0): 0.81, ("distilled", 1.0, 1): None}


def write_job(path, arm, fraction, fold, seed=1, auc=None):
    (path / ".hydra").mkdir(parents=True)
    overrides = [f"budget_arm={arm}", f"data.gold.fraction={fraction}", f"data.split.fold={fold}", f"seed={seed}",
                 "experiment=label_budget"]
    terms = {"ce": {"weight": 1.0}, "ordinal": {"weight": 1.0}}
    if arm == "distilled":
        terms.update(kd={"weight": 1.0}, rank_kd={"weight": 1.0}, unused={"weight": 0.0})
    config = {"seed": seed, "loss": {"terms": terms},
              "label_budget": {"artefact_root": "/art", "artefact": "${.artefact_root}/f${data.split.fold}"},
              "data": {"name": "toy", "split": {"folds": 2, "fold": fold}, "gold": {"fraction": fraction},
                       "annotations": "${label_budget.artefact}" if arm == "distilled" else None}}
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (path / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(
        {"hydra": {"runtime": {"choices": {"loss": "ordinal", "budget_arm": arm}}}}))
    if auc is None:
        (path / "error.json").write_text(json.dumps({"type": "RuntimeError", "message": "boom"}))
    else:
        values = dict(zip(METRICS, (auc, auc - 0.1, auc - 0.2, auc - 0.3)))
        (path / "metrics.json").write_text(json.dumps({**values, "val/auc": 0.5}))


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "multirun"
    for num, ((arm, fraction, fold), auc) in enumerate(AUC.items()):
        write_job(root / str(num), arm, fraction, fold, auc=auc)
    return root


def test_replicate_ids_name_fold_and_seed(sweep):
    jobs = find_jobs([sweep])
    assert [replicate_id(j) for j in jobs[:2]] == ["f0s1", "f1s1"]
    assert sorted(["f10s1", "f2s11", "f2s3", "s4"], key=replicate_order) == ["s4", "f2s3", "f2s11", "f10s1"]


def test_summary_lists_one_value_per_replicate_in_the_order_of_seeds(sweep):
    summary = label_budget_summary(find_jobs([sweep]))
    assert summary["dataset"] == "toy" and [r["gold_fraction"] for r in summary["rows"]] == [0.5, 1.0]
    half, full = summary["rows"]
    assert half["seeds"] == full["seeds"] == ["f0s1", "f1s1"]
    assert half["gold_only"]["test/auc"] == [0.70, 0.60] and half["distilled"]["test/auc"] == [0.75, 0.70]
    assert half["distilled"]["test/macro_f1"] == pytest.approx([0.45, 0.40])
    assert full["distilled"]["test/auc"] == [0.81, None]               # the failed job
    assert set(half["gold_only"]) == set(METRICS)
    assert half["distilled_overrides"] == ("budget_arm=distilled experiment=label_budget "
                                           "loss=ordinal loss.terms=[ce,ordinal,kd,rank_kd] data.annotations=/art/f${data.split.fold}")
    json.dumps(summary)   # JSON as it is


def test_paired_differences_by_hand(sweep):
    jobs = find_jobs([sweep])
    report = build_report(jobs, metrics=METRICS)
    assert report.group_by == ["budget_arm", "data.gold.fraction"]      # fold and seed are the replicates
    table = paired_differences(jobs, "budget_arm", "distilled", "gold_only", METRICS, ["data.gold.fraction"])
    half, full = table.to_dict("records")
    # 0.5: differences .05 and .10 -> mean .075, std sqrt(2 * .025^2) = .0353553
    assert half["n"] == 2 and half["replicates"] == "f0s1 f1s1"
    assert half["test/auc diff mean"] == pytest.approx(0.075) and half["test/auc diff std"] == pytest.approx(0.0353553, rel=1e-5)
    assert half["test/tuned/qwk diff mean"] == pytest.approx(0.075)
    assert half["test/auc distilled"] == pytest.approx(0.725) and half["test/auc gold_only"] == pytest.approx(0.65)
    # 1.0: only f0s1 is paired (distilled f1s1 failed): .01, no std
    assert full["n"] == 1 and full["test/auc diff mean"] == pytest.approx(0.01) and math.isnan(full["test/auc diff std"])


def test_pairing_is_by_replicate_not_by_job_order(tmp_path):
    root = tmp_path / "multirun"
    # the distilled jobs come in the other fold order: pairing by position would give .15 and -.05
    for num, (arm, fold, auc) in enumerate([("gold_only", 0, 0.6), ("gold_only", 1, 0.8),
                                            ("distilled", 1, 0.85), ("distilled", 0, 0.65)]):
        write_job(root / str(num), arm, 0.1, fold, auc=auc)
    (row,) = paired_differences(find_jobs([root]), "budget_arm", "distilled", "gold_only", ["test/auc"],
                                ["data.gold.fraction"]).to_dict("records")
    assert row["test/auc diff mean"] == pytest.approx(0.05) and row["test/auc diff std"] == pytest.approx(0.0)
    (summary_row,) = label_budget_summary(find_jobs([root]))["rows"]
    assert summary_row["gold_only"]["test/auc"] == [0.6, 0.8] and summary_row["distilled"]["test/auc"] == [0.65, 0.85]


def test_the_command_writes_the_summary_the_tables_and_the_curve(sweep, tmp_path, capsys):
    out = tmp_path / "report"
    assert main([str(sweep), "--label-budget", "--out", str(out), "--latency", str(tmp_path / "none.json")]) == 0
    for name in ("summary.json", "label_budget.md", "label_budget.png", "paired.md", "paired.csv", "report.md"):
        assert (out / name).is_file(), name
    assert (out / "label_budget.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "summary.json").read_text()) == label_budget_summary(find_jobs([sweep]))
    text = (out / "label_budget.md").read_text()
    assert "| 0.5 | 0.6500 ± 0.0707 | 0.7250 ± 0.0354 | 0.0750 ± 0.0354 | 2 |" in text
    assert "Δ test/auc" in capsys.readouterr().out


def test_a_label_budget_report_needs_both_arms(tmp_path, capsys):
    root = tmp_path / "multirun"
    write_job(root / "0", "gold_only", 0.1, 0, auc=0.7)
    write_job(root / "1", "gold_only", 0.1, 1, auc=0.7)
    assert main([str(root), "--label-budget", "--out", str(tmp_path / "r")]) == 2
    assert "both arms" in capsys.readouterr().err
