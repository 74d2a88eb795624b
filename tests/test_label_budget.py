"""The label-budget experiment (conf/experiment/label_budget.yaml, conf/budget_arm/): the arms compose
as documented, share their gold queries per (fold, seed), and every distilled term trains."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
CHORUS_LABELS = ["perfect", "good", "fair", "poor"]


@pytest.fixture(scope="module")
def chorus_artefact(tmp_path_factory):
    """A fixture teacher artefact over EVERY chorus_icecat pair (a superset of any fold's train rows)."""
    from lrkd.schema import LabelSet
    from lrkd.data.sources import ChorusIcecatSource
    from tests.fixtures.artefacts import make_artefact

    df = ChorusIcecatSource(path=ROOT / "datasets" / "chorus_icecat" / "pairs.parquet").load(
        LabelSet(names=tuple(CHORUS_LABELS)), duplicates="error")
    return make_artefact(df, tmp_path_factory.mktemp("teacher") / "artefact", vector_dim=4,
                         label_names=CHORUS_LABELS, num_shards=1)


def arm(make_cfg, name, *overrides):
    return make_cfg("experiment=label_budget", f"budget_arm={name}", "label_budget.pool=null", *overrides)


def test_the_arms_compose_as_documented(make_cfg):
    gold = arm(make_cfg, "gold_only", "data.gold.fraction=0.25", "data.split.fold=3", "seed=2")
    assert gold.data.annotations is None and gold.data.gold.drop_unlabelled and gold.data.sampler == "shuffle"
    assert set(gold.loss.terms) == {"ce", "ordinal"}
    assert gold.trainer.max_steps > 0 and gold.trainer.check_val_every_n_epoch is None
    distilled = arm(make_cfg, "distilled", "data.gold.fraction=0.25", "data.split.fold=3", "seed=2")
    assert distilled.data.annotations.endswith("artefacts/chorus_icecat/label_budget/f3_s2_g0.25")
    assert distilled.data.annotation_superset and distilled.data.sampler == "query_groups"
    assert not distilled.data.gold.drop_unlabelled
    loss = instantiate(distilled.loss)
    assert loss.active_terms == ["ce", "ordinal", "kd", "rank_kd"]
    assert loss.terms["kd"].rows == loss.terms["rank_kd"].rows == "unlabelled"
    assert not loss.terms["ce"].teacher_label_for_unlabelled and not loss.terms["ordinal"].teacher_label_for_unlabelled
    # the same training setup otherwise: only the data, the sampler and the loss differ
    for key in ("trainer", "optimizer", "scheduler", "student", "decision", "data.split", "data.max_length"):
        assert OmegaConf.select(gold, key) == OmegaConf.select(distilled, key), key
    full = make_cfg("experiment=label_budget", "budget_arm=distilled")
    assert full.data.pool.catalogue.endswith("datasets/chorus_icecat/catalogue.parquet")


def test_one_fold_and_seed_holds_the_same_nested_gold_queries_in_both_arms(make_cfg, chorus_artefact):
    gold_sets = {}
    for fraction in ("0.25", "0.5"):
        for name in ("gold_only", "distilled"):
            cfg = arm(make_cfg, name, f"data.gold.fraction={fraction}", "data.split.fold=1", "seed=3",
                      f"label_budget.artefact={chorus_artefact}")
            dm = instantiate(cfg.data, seed=cfg.seed, _recursive_=False)
            dm.setup()
            gold_sets[fraction, name] = set(dm.gold_queries)
            train_queries = set(dm.frame["query_id"].iloc[dm.splits["train"]])
            test_queries = set(dm.frame["query_id"].iloc[dm.splits["test"]])
            assert not train_queries & test_queries
            labelled = dm.frame["label"].iloc[dm.splits["train"]] >= 0
            assert set(dm.frame["query_id"].iloc[dm.splits["train"]][labelled]) == gold_sets[fraction, name]
            if name == "gold_only":
                assert labelled.all()
            else:   # every hidden row is still there, for the teacher
                assert train_queries > gold_sets[fraction, name] and (~labelled).any()
        assert gold_sets[fraction, "gold_only"] == gold_sets[fraction, "distilled"]
    assert gold_sets["0.25", "distilled"] < gold_sets["0.5", "distilled"]


def test_every_distilled_term_trains_on_a_query_group_batch(make_cfg, chorus_artefact):
    from lrkd.student.module import StudentModule

    cfg = arm(make_cfg, "distilled", "data.gold.fraction=0.25", f"label_budget.artefact={chorus_artefact}")
    dm = instantiate(cfg.data, seed=cfg.seed, _recursive_=False)
    dm.setup()
    spec = {**dm.spec.to_dict(), "train_class_counts": dm.class_counts("train")}
    model = StudentModule(encoder=cfg.student, extractor=cfg.extractor, loss=cfg.loss, optimizer=cfg.optimizer,
                          scheduler=cfg.scheduler, data_spec=spec, decision=cfg.decision)
    assert model.loss_fn.terms["rank_kd"].gains.tolist() == [3.0, 2.0, 1.0, 0.0]
    loader = dm.train_dataloader()
    # labelled_per_batch: 1 -> every batch holds gold rows (of one query) and rows to distil
    for batch in loader:
        assert (batch["labels"] >= 0).any() and (batch["labels"] < 0).any()
        assert len(set(batch["query_index"][batch["labels"] >= 0].tolist())) == 1
    assert len(loader) == dm.num_train_batches > 100
    out = model(batch)
    for name in model.loss_fn.active_terms:
        value = model.loss_fn.terms[name](out, batch)["loss"]
        assert torch.isfinite(value) and float(value.detach()) > 0, name
        model.zero_grad()
        value.backward(retain_graph=True)
        assert any(float(p.grad.abs().sum()) > 0 for p in model.student.parameters() if p.grad is not None), name
    assert np.isin(batch["query_index"].numpy(), batch["query_index"].numpy()[:1]).sum() >= 2


# ------------------------------------------------------------------- a real reduced sweep (subprocess)
@pytest.mark.slow
def test_a_reduced_label_budget_sweep_reports_runs_paired_by_fold_and_seed(tmp_path, token_cache, chorus_artefact):
    import json
    import os
    import subprocess
    import sys

    from lrkd.report import find_jobs, main

    sweep = tmp_path / "sweep"
    args = ["-m", "experiment=label_budget", "budget_arm=gold_only,distilled", "data.gold.fraction=0.25,1.0",
            "data.split.fold=0,1", "student=tiny", "trainer.max_steps=2", "trainer.val_check_interval=1",
            "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "data.eval_batch_size=64",
            "callbacks.progress_bar=null", "trainer.enable_model_summary=false", f"label_budget.artefact={chorus_artefact}",
            f"hydra.sweep.dir={sweep}", f"paths.cache_dir={token_cache}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled",
           "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = find_jobs([sweep])
    assert len(jobs) == 8 and all(j.status == "ok" for j in jobs), [j.error_summary() for j in jobs]

    out = tmp_path / "report"
    assert main([str(sweep), "--label-budget", "--out", str(out), "--latency", str(tmp_path / "none.json")]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "chorus_icecat" and [r["gold_fraction"] for r in summary["rows"]] == [0.25, 1.0]
    metrics = ["test/auc", "test/ndcg@10", "test/tuned/qwk", "test/macro_f1"]
    by_run = {(j.value("budget_arm"), float(j.value("data.gold.fraction")), f"f{j.value('data.split.fold')}s1"): j.metrics
              for j in jobs}
    for row in summary["rows"]:
        assert row["seeds"] == ["f0s1", "f1s1"]
        assert "budget_arm=distilled" in row["distilled_overrides"] and "rank_kd" in row["distilled_overrides"]
        for arm in ("gold_only", "distilled"):
            assert list(row[arm]) == metrics
            for m in metrics:   # entry i is the run of replicate seeds[i]: paired by (fold, seed)
                assert row[arm][m] == [by_run[arm, row["gold_fraction"], rid][m] for rid in row["seeds"]]
    distilled = [j for j in jobs if j.value("budget_arm") == "distilled"]
    assert {j.value("data.annotations") for j in distilled} == {str(chorus_artefact)}
    assert (out / "label_budget.png").is_file() and "Δ (paired)" in (out / "label_budget.md").read_text()


READS = ROOT / "datasets" / "chorus_icecat" / "teacher_reads" / "qwen2.5-coder-1.5b"


@pytest.mark.slow  # about 75 s: two chorus data modules and a cross-fitted head
@pytest.mark.skipif(not (READS / "worker-000").is_dir(), reason="the shipped Qwen readings are not in this checkout")
def test_the_distilled_arm_builds_its_head_artefact_from_its_own_gold_pairs_only(make_cfg, tmp_path):
    """The teacher head of a (fold, seed, budget) sees the budget's gold grades and nothing else: hiding
    other grades differently (scrambling every non-gold label) leaves its artefact unchanged, and its
    head is fitted on exactly the gold train pairs that have readings."""
    from lrkd.artefact.reader import load_artefact
    from lrkd.stages.student import build_teacher_artefact
    from lrkd.teacher.label.head_artefact import write_head_artefact

    cfg = arm(make_cfg, "distilled", "data.gold.fraction=0.1", "data.split.fold=2", "seed=4",
              f"label_budget.artefact_root={tmp_path / 'heads'}")
    out = Path(cfg.data.annotations)
    assert not out.exists()
    build_teacher_artefact(cfg)          # what run_student does first
    record = __import__("json").loads((out / "teacher_head.json").read_text())
    dm = instantiate(cfg.data, seed=cfg.seed, annotations=None, _recursive_=False)
    dm.setup()
    train = np.asarray(dm.splits["train"])
    gold_rows = train[dm.frame["label"].to_numpy()[train] >= 0]
    assert record["gold_queries"] == len(dm.gold_queries) == len(set(dm.frame["query_id"].iloc[gold_rows]))
    assert 0 < record["gold_pairs"] <= len(gold_rows) and record["pairs_read"] > record["gold_pairs"]
    assert {"val", "test", "train_gold_oof"} <= set(record)
    first = load_artefact(out)
    assert len(first) == record["pairs_read"]
    # scramble every grade the head may not see (hidden train rows, val, test): the same artefact
    rng = np.random.default_rng(0)
    hidden = np.setdiff1d(np.arange(len(dm.frame)), gold_rows)
    labels = dm.frame["label"].to_numpy().copy()
    labels[hidden] = np.where(labels[hidden] >= 0, rng.integers(0, 4, len(hidden)), labels[hidden])
    assert (labels != dm.frame["label"].to_numpy()).sum() > 100
    dm.frame["label"] = labels
    opts = instantiate(cfg.teacher_artefact).options
    write_head_artefact(dm, tmp_path / "scrambled", perspectives=list(cfg.data.perspectives), seed=int(cfg.seed),
                        **opts)
    second = load_artefact(tmp_path / "scrambled")
    np.testing.assert_array_equal(first.soft_labels, second.soft_labels)
    assert list(first.item_ids) == list(second.item_ids)
    # and it is built once: a second call leaves the folder alone
    stamp = (out / "teacher_head.json").stat().st_mtime_ns
    build_teacher_artefact(cfg)
    assert (out / "teacher_head.json").stat().st_mtime_ns == stamp
