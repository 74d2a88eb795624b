"""lrkd.report on a fixture multirun directory: the grouped table against hand-computed numbers,
failed jobs listed, the files the command writes."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from lrkd.schema import DataError
from lrkd.report import build_report, find_jobs, main, swept_keys

FIXTURE = Path(__file__).parent / "fixtures" / "sweep_report"
ABLATION, POLY, LATENCY = FIXTURE / "ablation", FIXTURE / "ablation_poly", FIXTURE / "latency.json"
NO_FILE = FIXTURE / "no_such_latency.json"
PNG = b"\x89PNG\r\n\x1a\n"

# The fixture, by hand: extractor x seed -> (test/macro_f1, test/qwk, test/ndcg@10)
#   none: seed 1 (.50, .40, .80), seed 2 (.60, .50, .82), seed 3 (.70, .45, .84)
#   mlp:  seed 1 (.62, .52, .85), seed 2 (.66, .58, .87), seed 3 failed (error.json)
#   poly: seed 1 (.64, .60, .90), seed 2 killed (neither file)   [a second multirun]
# Sample std (ddof=1): none f1 sqrt(((-.1)^2 + 0 + .1^2) / 2) = .1; mlp f1 sqrt(2 * .02^2 / 1).
EXPECTED = pd.DataFrame({
    "extractor": ["none", "mlp", "poly"],
    "n": [3, 2, 1],
    "failed": [0, 1, 1],
    "test/macro_f1 mean": [0.60, 0.64, 0.64],
    "test/macro_f1 std": [0.10, math.sqrt(0.0008), math.nan],
    "test/qwk mean": [0.45, 0.55, 0.60],
    "test/qwk std": [0.05, math.sqrt(0.0018), math.nan],
    "test/ndcg@10 mean": [0.82, 0.86, 0.90],
    "test/ndcg@10 std": [0.02, math.sqrt(0.0002), math.nan],
    "latency_ms": [23.0, 24.5, math.nan],
})


def test_table_of_two_multiruns_equals_hand_computed_table():
    report = build_report(find_jobs([ABLATION, POLY]), latency_file=LATENCY)
    assert report.group_by == ["extractor"]
    assert report.metrics == ["test/macro_f1", "test/qwk", "test/ndcg@10"]
    pd.testing.assert_frame_equal(report.table, EXPECTED, check_dtype=False, rtol=1e-9, atol=1e-12)


def test_failed_and_unfinished_jobs_are_listed_not_dropped():
    report = build_report(find_jobs([ABLATION, POLY]), latency_file=NO_FILE)
    failures = report.failures.to_dict("records")
    assert [(f["job"], f["status"]) for f in failures] == [("ablation/5", "failed"), ("ablation_poly/1", "incomplete")]
    assert failures[0]["overrides"] == "student=tiny extractor=mlp seed=3"
    assert failures[0]["error"] == "NonFiniteLossError: loss is nan at global step 12, epoch 0, batch 12"
    assert list(report.jobs["status"]) == ["ok"] * 5 + ["failed", "ok", "incomplete"]
    assert "latency_ms" not in report.table


def test_swept_keys_come_from_the_overrides():
    jobs = find_jobs([ABLATION])
    assert [j.path.name for j in jobs] == ["0", "1", "2", "3", "4", "5"]
    assert swept_keys(jobs) == ["extractor", "seed"]          # student=tiny is the same everywhere
    report = build_report(jobs, latency_file=NO_FILE)
    assert list(report.table["extractor"]) == ["none", "mlp"]


def test_group_by_any_key_reads_choices_and_config():
    jobs = find_jobs([ABLATION, POLY])
    by_seed = build_report(jobs, group_by=["extractor", "seed"], latency_file=NO_FILE).table
    assert len(by_seed) == 8 and by_seed["test/macro_f1 std"].isna().all()
    assert list(by_seed["n"]) == [1, 1, 1, 1, 1, 0, 1, 0]
    # loss is not overridden: Hydra's group choice; hidden_size: the job's config
    one = build_report(jobs, group_by=["loss", "student.config.hidden_size"], latency_file=NO_FILE).table
    assert one[["loss", "student.config.hidden_size", "n", "failed"]].values.tolist() == [["ce", "32", 6, 2]]
    assert one["test/macro_f1 mean"].iloc[0] == pytest.approx((0.5 + 0.6 + 0.7 + 0.62 + 0.66 + 0.64) / 6)


def test_command_writes_markdown_csv_and_plots(tmp_path, capsys):
    out = tmp_path / "report"
    assert main([str(ABLATION), str(POLY), "--latency", str(LATENCY), "--out", str(out)]) == 0
    csv = pd.read_csv(out / "report.csv", keep_default_na=False, na_values=[""])
    pd.testing.assert_frame_equal(csv, EXPECTED, check_dtype=False, rtol=1e-9, atol=1e-12)
    assert len(pd.read_csv(out / "jobs.csv")) == 8
    for png in ("macro_f1.png", "quality_vs_latency.png"):
        assert (out / png).read_bytes()[:8] == PNG
    md = (out / "report.md").read_text()
    assert "| none | 3 | 0 | 0.6000 ± 0.1000 | 0.4500 ± 0.0500 | 0.8200 ± 0.0200 | 23.0000 |" in md
    assert "| poly | 1 | 1 | 0.6400 | 0.6000 | 0.9000 |  |" in md
    assert "| ablation/5 | failed | student=tiny extractor=mlp seed=3 | NonFiniteLossError: loss is nan" in md
    assert "8 jobs: 6 finished, 1 failed, 1 incomplete" in md
    assert "0.6000 ± 0.1000" in capsys.readouterr().out


def test_no_latency_no_latency_plot(tmp_path):
    assert main([str(ABLATION), "--latency", str(NO_FILE), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "macro_f1.png").exists() and not (tmp_path / "quality_vs_latency.png").exists()


def test_latency_from_the_jobs_metrics(tmp_path):
    sweep = tmp_path / "ablation"
    shutil.copytree(ABLATION, sweep)
    for job, ms in [("0", 10.0), ("1", 14.0), ("3", 20.0)]:
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        (sweep / job / "metrics.json").write_text(json.dumps({**metrics, "latency/batch1_ms": ms}))
    report = build_report(find_jobs([sweep]), latency_file=NO_FILE)
    assert report.latency_source == "latency/batch1_ms"
    assert report.table["latency_ms"].tolist() == [12.0, 20.0]   # mean over the jobs that measured it


def test_newer_of_metrics_and_error_wins(tmp_path):
    import os

    sweep = tmp_path / "ablation"
    shutil.copytree(ABLATION, sweep)
    shutil.copy(sweep / "5" / "error.json", sweep / "0" / "error.json")
    os.utime(sweep / "0" / "metrics.json", (1_000, 1_000))
    os.utime(sweep / "0" / "error.json", (2_000, 2_000))
    assert find_jobs([sweep])[0].status == "failed"
    os.utime(sweep / "0" / "metrics.json", (3_000, 3_000))   # re-run after the failure
    assert find_jobs([sweep])[0].status == "ok"


def test_bad_input_is_named(tmp_path, capsys):
    sweep = tmp_path / "ablation"
    shutil.copytree(ABLATION, sweep)
    (sweep / "2" / "metrics.json").write_text('{"test/macro_f1": 0.5,\n oops}')
    with pytest.raises(DataError, match=r"ablation/2/metrics.json, row 2: not valid JSON"):
        find_jobs([sweep])
    with pytest.raises(DataError, match="no Hydra job directories"):
        find_jobs([tmp_path / "ablation" / "2" / ".hydra"])
    with pytest.raises(ValueError, match=r"no finished job has the metrics \['test/f2'\]"):
        build_report(find_jobs([ABLATION]), metrics=["test/f2"], latency_file=NO_FILE)
    assert main([str(tmp_path / "missing")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_latency_from_the_benchmark_json(tmp_path):
    """benchmarks/latency.py's own JSON gives each extractor its batch-1, 128-token median."""
    import json as _json

    from lrkd.report.compare import _latency_records

    rows = {"eager/none": {"timings": {"b1_s128": {"median_ms": 30.0}}},
            "eager/gat": {"timings": {"b1_s128": {"median_ms": 31.5}}},
            "onnx-int8/none": {"timings": {"b1_s128": {"median_ms": 9.0}}}}
    path = tmp_path / "latency.json"
    path.write_text(_json.dumps({"meta": {}, "rows": rows}))
    assert _latency_records(path) == [{"extractor": "none", "latency_ms": 30.0},
                                      {"extractor": "gat", "latency_ms": 31.5}]
