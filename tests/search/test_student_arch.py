"""The architecture search wired into lrkd's sweeper: the search hooks (over-budget trials never launched,
latency as the second objective), the soft_labels stage (a student as a teacher artefact that a pruned
student distils from), and a 4-trial `hparams_search=student_arch` sweep end to end on a tiny student."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from hydra_plugins.lrkd_optuna_sweeper.optuna_sweeper import OptunaSweeper
from lrkd.artefact import load_artefact
from lrkd.student.checkpoint import load_student
from lrkd.student.model import RelevanceStudent
from tests.test_sweep import TINY, FakeLauncher, run_train


class FakeSearch:
    """The ArchitectureSearch hooks on a toy space: latency = layers (ms), budget 3 ms."""

    def __init__(self):
        self.prepared, self.reported = None, None

    def prepare(self, distributions, config, sweep_dir):
        self.prepared = sorted(distributions)

    def is_feasible(self, params):
        return int(params["layers"]) <= 3

    def trial_attrs(self, params):
        return {"latency_ms": float(params["layers"])}

    def objectives(self, params, values, n_directions):
        return [*values, float(params["layers"])] if n_directions == len(values) + 1 else values

    def write_report(self, study, sweep_dir, sampler):
        self.reported = len(study.trials)


@pytest.mark.parametrize("directions", [["maximize"], ["maximize", "minimize"]])
def test_sweeper_skips_over_budget_trials_and_adds_the_latency_objective(tmp_path, directions):
    search = FakeSearch()
    sweeper = OptunaSweeper(direction=directions, n_trials=6, params={"layers": "choice(1,2,3,4,5,6)"},
                            sampler={"_target_": "optuna.samplers.RandomSampler", "seed": 0}, search=search)
    sweeper.config = OmegaConf.create({"task_name": "toy", "hydra": {"sweep": {"dir": str(tmp_path)}}})
    sweeper.launcher = FakeLauncher(lambda p: 1.0 / float(p["layers"]))
    sweeper.validate_batch_is_legal = lambda batch: None
    sweeper.sweep([])
    launched = [int(dict(o.split("=") for o in job)["layers"]) for _, jobs in sweeper.launcher.calls for job in jobs]
    assert len(launched) == 6 and max(launched) <= 3            # six trainings, none over the budget
    study = sweeper.study
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert len(complete) == 6 and all(int(t.params["layers"]) > 3 for t in failed)
    assert all(t.user_attrs["fail_reason"].startswith("over the latency budget") for t in failed)
    for t in complete:
        layers = float(t.params["layers"])
        assert t.values == ([1.0 / layers, layers] if len(directions) == 2 else [1.0 / layers])
        assert t.user_attrs["latency_ms"] == layers
    assert search.prepared == ["layers"] and search.reported == len(study.trials)


class ExhaustibleSearch(FakeSearch):
    """FakeSearch whose whole space is architectural: 3 architectures fit the budget."""

    def n_feasible(self):
        return 3


def test_sweeper_stops_when_every_architecture_within_the_budget_was_tried(tmp_path):
    """A finite architecture space: asking for 6 trials trains the 3 feasible architectures once
    each instead of training one again (the predictor would propose a seen one)."""
    search = ExhaustibleSearch()
    sweeper = OptunaSweeper(direction=["maximize"], n_trials=6, params={"layers": "choice(1,2,3,4,5,6)"},
                            sampler={"_target_": "lrkd.search.sampler.PredictorSampler", "seed": 0,
                                     "n_startup_trials": 2, "n_estimators": 10}, search=search)
    sweeper.config = OmegaConf.create({"task_name": "toy", "hydra": {"sweep": {"dir": str(tmp_path)}}})
    sweeper.launcher = FakeLauncher(lambda p: 1.0 / float(p["layers"]))
    sweeper.validate_batch_is_legal = lambda batch: None
    sweeper.sweep([])
    launched = [int(dict(o.split("=") for o in job)["layers"]) for _, jobs in sweeper.launcher.calls for job in jobs]
    assert sorted(launched) == [1, 2, 3]


def test_soft_labels_stage_writes_a_student_artefact_that_kd_reads(tmp_path, make_cfg):
    from lrkd.stages import get_stage

    torch.manual_seed(0)
    cfg0 = make_cfg()
    teacher = RelevanceStudent(OmegaConf.to_container(cfg0.student, resolve=True),
                               OmegaConf.to_container(cfg0.extractor, resolve=True),
                               OmegaConf.to_container(cfg0.data.labels, resolve=True), list(cfg0.perspectives)).eval()
    teacher.save_pretrained(tmp_path / "full")
    out = tmp_path / "labels"
    cfg = make_cfg("stage=soft_labels", f"+stage.checkpoint={tmp_path / 'full'}", f"stage.out_dir={out}",
                   "stage.temperature=2.0")
    result = get_stage(cfg.stage)(cfg)
    ann = load_artefact(out)
    assert result["rows"] == ann.manifest.num_rows == 2575                     # the chorus train split
    assert ann.manifest.label_names == tuple(cfg.data.labels.names)
    # the soft labels are the student's softmax(logits / T) of those pairs, encoded as predict encodes them
    from hydra.utils import instantiate

    from lrkd.data.encode import PairEncoder, item_text, query_text
    from lrkd.student.encoder import load_tokenizer

    dm = instantiate(cfg.data, annotations=None, seed=0, _recursive_=False)
    dm.setup("fit")
    frame = dm.frame.set_index(["query_id", "item_id"])
    rows = [frame.loc[(q, i)] for q, i in zip(ann.query_ids[[0, 500, 2000]], ann.item_ids[[0, 500, 2000]])]
    encode = PairEncoder(load_tokenizer(cfg.data.tokenizer), int(cfg.data.max_length))
    batch = encode([query_text(r["query"]) for r in rows],
                   [item_text(r, dm.frame.attrs["text_fields"]) for r in rows])
    with torch.no_grad():
        logits = teacher.predict_logits(*(torch.as_tensor(batch[k]) for k in ("input_ids", "attention_mask",
                                                                               "token_type_ids")))
    np.testing.assert_allclose(ann.soft_labels[[0, 500, 2000]], (logits / 2.0).softmax(-1).numpy(), atol=1e-5)
    # a pruned student distils from it (loss=kd)
    kd = make_cfg(f"data.annotations={out}", "loss=kd", "student.prune.num_layers=1", "trainer.max_steps=2",
                  "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "callbacks.progress_bar=null",
                  output_dir=tmp_path / "kd")
    metrics = get_stage(kd.stage)(kd)
    assert 0.0 <= metrics["test/macro_f1"] <= 1.0 and metrics["params/encoder"] < teacher.parameter_counts()["encoder"]


def test_student_arch_sweep_end_to_end(tmp_path, token_cache):
    sweep, tables = tmp_path / "arch", tmp_path / "tables"
    args = ["-m", "hparams_search=student_arch", *TINY, "trainer.max_steps=-1", "trainer.max_epochs=1",
            "trainer.limit_train_batches=2", "trainer.limit_val_batches=null", "data.eval_batch_size=64",
            "hydra.sweeper.n_trials=4", "search.samplers.predictor.n_startup_trials=2",
            "student.prune.num_layers=choice(1,2)", "student.prune.intermediate_size=choice(16,64)",
            "data.max_length=choice(32,64)", "extractor=choice(none,mlp)", "search.latency_budget_ratio=1.5",
            "search.iterations=2", "search.rounds=1", "search.warmup=0", f"search.table_dir={tables}",
            f"hydra.sweep.dir={sweep}"]
    proc = run_train(args, token_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = pd.read_csv(sweep / "search_trials.csv")
    assert len(trials) >= 4 and (trials["state"] == "COMPLETE").sum() == 4
    done = trials[trials["state"] == "COMPLETE"]
    assert (done["latency_ratio"] <= 1.5).all()
    assert len(set(map(tuple, done[["student.prune.num_layers", "student.prune.intermediate_size",
                                    "data.max_length", "extractor"]].values))) == 4       # no configuration twice
    table = pd.read_csv(sweep / "latency_table.csv", keep_default_na=False)
    assert len(table) == 16                 # 2 x 2 x 2 x 2 architectures (the reference is one of them)
    assert len(list(tables.glob("*.csv"))) == 1
    assert (sweep / "trials.csv").is_file() and (sweep / "pareto.png").is_file()
    assert set(json.loads((sweep / "predictor.json").read_text())) == {"regressor", "n", "loo_spearman"}
    chosen = json.loads((sweep / "chosen.json").read_text())
    pick = chosen["chosen"]
    best = done["quality"].max()
    assert pick["quality"] >= best - 0.01 * abs(best)
    assert pick["latency_ms"] == done[done["quality"] >= best - 0.01 * abs(best)]["latency_ms"].min()
    loaded = load_student(sweep / "chosen_student").model
    enc = loaded.encoder.config
    assert enc.num_hidden_layers == int(pick["student.prune.num_layers"])
    assert enc.intermediate_size == int(pick["student.prune.intermediate_size"])
    job_metrics = json.loads((sweep / str(pick["job"]) / "metrics.json").read_text())
    assert job_metrics["optimized_metric"] == pytest.approx(pick["quality"])


def test_n_feasible_counts_budgeted_architectures_only_when_the_space_is_all_architecture():
    from lrkd.search.study import DEFAULT_ARCHITECTURE, ArchitectureSearch
    from lrkd.search.latency_table import Architecture

    search = ArchitectureSearch(latency_budget_ratio=0.5)
    archs = [Architecture(layers, None, 64, "none") for layers in (1, 2, 6)]
    search.archs = archs
    search._within_budget = lambda arch: arch.num_layers < 6
    search.distributions = {DEFAULT_ARCHITECTURE["num_layers"]: None}
    assert search.n_feasible() == 2
    search.distributions["model.optimizer.lr"] = None     # another swept key: repeats are new configurations
    assert search.n_feasible() is None
