"""Sweeps: the experiment and search configs compose, failed jobs are recorded and the sweep goes
on, W&B identity and extras, the Optuna sweeper plugin, and real multiruns of tiny jobs."""
from __future__ import annotations

import json
import logging
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from hydra_plugins.lrkd_optuna_sweeper.optuna_sweeper import OptunaSweeper, SearchSpace, trial_outcome
from lrkd.run.jobs import run_job_tolerantly
from lrkd.run.overrides import parse_override, parse_overrides
from lrkd.run.wandb_run import RunIdentity, apply_wandb_identity, log_test_extras, run_identity
from tests.conftest import compose_cfg

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
# a study: an experiment config that sweeps (hydra.sweeper.params); pipeline-like experiments are single runs
STUDIES = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")
                 if OmegaConf.select(OmegaConf.load(p), "hydra.sweeper.params") is not None)
SEARCHES = sorted(p.stem for p in (CONF / "hparams_search").glob("*.yaml"))
# a search's report folder in experiments/, where it is not named after the search
SEARCH_FOLDERS = {"student_arch": "student_search"}
OPTIMISER_SEARCHES = [s for s in SEARCHES if s != "student_arch"]   # student_arch: tests/search/
JOBS_PER_STUDY = {"extractor_ablation": 12, "loss_ablation": 15, "perspectives": 20, "kd_temperature": 12,
                  "loss_weights": 27, "seeds": 5, "label_budget": 40, "reasoning": 20}
SWEEPER = "hydra_plugins.lrkd_optuna_sweeper.optuna_sweeper.OptunaSweeper"
# tiny, bounded jobs: 2 training steps, 2 validation and 2 test batches
TINY = ["student=tiny", "trainer.max_steps=2", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2",
        "data.batch_size=8", "data.eval_batch_size=16", "callbacks.progress_bar=null",
        "trainer.enable_model_summary=false"]


@pytest.fixture
def compose_with_hydra():
    """compose_with_hydra(overrides) -> conf/train.yaml composed with Hydra's own config."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield lambda overrides: compose("train", overrides=list(overrides), return_hydra_config=True)
    GlobalHydra.instance().clear()


def expand_sweep(params) -> list[list[str]]:
    """The jobs Hydra's basic sweeper makes of ``hydra.sweeper.params`` (cartesian product)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    lines = [f"{k}={v}" for k, v in params.items()]
    return BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(lines), None)[0]


# ------------------------------------------------------------------------------ the configs
def test_every_study_is_listed():
    assert set(JOBS_PER_STUDY) <= set(STUDIES)
    index = (ROOT / "experiments" / "README.md").read_text()
    for name in STUDIES + [SEARCH_FOLDERS.get(s, s) for s in SEARCHES]:
        assert f"]({name}/README.md)" in index, f"experiments/README.md does not list {name}"


@pytest.mark.parametrize("name", STUDIES)
def test_study_composes_every_variant(name, compose_with_hydra):
    from hydra.utils import instantiate

    readme = ROOT / "experiments" / name / "README.md"
    assert f"experiment={name}" in readme.read_text()
    cfg = compose_with_hydra([f"experiment={name}"])
    assert cfg.task_name == name
    jobs = expand_sweep(cfg.hydra.sweeper.params)
    assert len(jobs) == JOBS_PER_STUDY.get(name, len(jobs))
    variants = {tuple(j for j in job if not j.startswith("seed=")) for job in jobs}
    for variant in variants:
        job = compose_with_hydra([f"experiment={name}", *variant])
        for line in variant:
            key, value = parse_override(line)
            parsed = OverridesParser.create().parse_override(line).value()
            if key in job.hydra.runtime.choices:             # a config group: loss=kd, extractor=mlp
                assert job.hydra.runtime.choices[key] == value
            elif key == "perspective":                       # a list of group options
                assert list(job.perspectives) == parsed
            else:
                assert OmegaConf.select(job, key) == parsed, line
        if name == "loss_ablation":   # the terms of METHOD.md's ablation
            terms = set(instantiate(job.loss).active_terms)
            expected = {"ce": {"ce"}, "kd": {"ce", "kd"}, "crsd": {"ce", "crsd"}, "latent": {"ce", "latent"},
                        "full": {"ce", "kd", "crsd", "latent"}}[job.hydra.runtime.choices.loss]
            assert terms == expected


@pytest.mark.parametrize("name", OPTIMISER_SEARCHES)
def test_search_composes_and_searches_keys_that_exist(name, compose_with_hydra):
    from optuna.distributions import FloatDistribution

    assert f"hparams_search={name}" in (ROOT / "experiments" / name / "README.md").read_text()
    cfg = compose_with_hydra([f"hparams_search={name}"])
    assert cfg.task_name == name and cfg.optimized_metric == "val/macro_f1"
    spec = OmegaConf.to_container(cfg.hydra.sweeper)
    assert spec.pop("_target_") == SWEEPER
    space = OptunaSweeper(**spec).search_space([])
    assert space.distributions["optimizer.lr"] == FloatDistribution(1e-5, 2e-4, log=True)
    for key in space.distributions:
        assert OmegaConf.select(cfg, key) is not None, f"{name} searches {key}, which the config does not have"


def test_architecture_search_composes_and_searches_keys_that_exist(compose_with_hydra):
    from lrkd.search.sampler import PredictorSampler

    assert "hparams_search=student_arch" in (ROOT / "experiments" / "student_search" / "README.md").read_text()
    cfg = compose_with_hydra(["hparams_search=student_arch", "search.latency_budget_ms=12.5"])
    assert cfg.task_name == "student_arch" and cfg.optimized_metric == "val/auc"
    spec = OmegaConf.to_container(cfg.hydra.sweeper, resolve=True)
    assert spec["search"]["latency_budget_ms"] == 12.5
    assert isinstance(instantiate_node(spec["sampler"]), PredictorSampler)
    spec.pop("_target_")
    space = OptunaSweeper(**spec).search_space([])
    assert sorted(space.distributions) == ["data.max_length", "extractor", "student.prune.intermediate_size",
                                           "student.prune.num_layers"]
    for key in space.distributions:
        found = key in cfg.hydra.runtime.choices or OmegaConf.select(cfg, key, default="absent") != "absent"
        assert found, f"student_arch searches {key}, which the config does not have"


def instantiate_node(node):
    from hydra.utils import instantiate

    return instantiate(node)


# -------------------------------------------------------------------------- the Optuna plugin
def space_of(*lines: str) -> SearchSpace:
    return SearchSpace.from_overrides(OverridesParser.create().parse_overrides(list(lines)))


def test_search_space_from_hydra_sweep_syntax():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space = space_of("a=interval(0.1, 0.5)", "b=tag(log, interval(1e-5, 1e-3))", "c=interval(1, 4)",
                     "d=range(1, 9, 2)", "e=mlp,poly", "f=shuffle(range(3))", "g=3", "~h", "a=interval(0.2, 0.3)")
    d = space.distributions
    assert d["a"] == FloatDistribution(0.2, 0.3)                 # the later override wins
    assert d["b"] == FloatDistribution(1e-5, 1e-3, log=True)
    assert d["c"] == FloatDistribution(1.0, 4.0)                 # an interval is continuous
    assert d["d"] == IntDistribution(1, 7, step=2)               # Hydra's range(1, 9, 2) is 1, 3, 5, 7
    assert d["e"] == CategoricalDistribution(["mlp", "poly"])
    assert sorted(d["f"].choices) == ["0", "1", "2"]
    assert space.fixed == ["g=3", "~h"]
    assert space.job_overrides({"a": 0.25, "e": "poly"}) == ["g=3", "~h", "a=0.25", "e=poly"]
    with pytest.raises(ValueError, match="nothing to search"):
        OptunaSweeper(params={"x": "1"}).search_space([])
    with pytest.raises(ValueError, match="'maximise' is not"):
        OptunaSweeper(direction="maximise")


def test_trial_outcome():
    def ret(value, status=JobStatus.COMPLETED):
        return JobReturn(status=status, _return_value=value)

    assert trial_outcome(ret(0.5), 1) == ([0.5], "")
    assert trial_outcome(ret((0.5, 2)), 2) == ([0.5, 2.0], "")
    assert trial_outcome(ret(float("nan")), 1)[1].startswith("the job returned a non-finite value")
    assert trial_outcome(ret(None), 1)[1].startswith("the job returned None")
    assert trial_outcome(ret("x"), 1)[1] == "the job returned 'x', not a number"
    assert trial_outcome(ret(0.5), 2)[1] == "the job returned 1 values for 2 directions"
    assert trial_outcome(ret(MemoryError("oom"), JobStatus.FAILED), 1) == (None, "the job raised MemoryError: oom")


class FakeLauncher:
    """Runs ``objective(params)`` per job instead of training; records what it was given."""

    def __init__(self, objective):
        self.objective, self.calls = objective, []

    def launch(self, batch, initial_job_idx):
        self.calls.append((initial_job_idx, [list(job) for job in batch]))
        returns = []
        for job in batch:
            try:
                returns.append(JobReturn(overrides=job, status=JobStatus.COMPLETED,
                                         _return_value=self.objective(parse_overrides(job))))
            except Exception as e:
                returns.append(JobReturn(overrides=job, status=JobStatus.FAILED, _return_value=e))
        return returns


def test_optuna_sweeper_optimises_the_returned_value_and_survives_failures(tmp_path):
    def objective(p):
        x = float(p["x"])
        if x > 3.5:
            raise MemoryError("out of memory")
        return None if p["mode"] == "broken" else -(x - 2.0) ** 2

    sweeper = OptunaSweeper(direction="maximize", n_trials=30, n_jobs=4, params={
        "x": "interval(0.0, 4.0)", "mode": "ok,broken", "student": "tiny"},
        sampler={"_target_": "optuna.samplers.TPESampler", "seed": 0, "n_startup_trials": 8})
    sweeper.config = OmegaConf.create({"task_name": "toy", "hydra": {"sweep": {"dir": str(tmp_path)}}})
    sweeper.launcher = FakeLauncher(objective)
    sweeper.validate_batch_is_legal = lambda batch: None
    sweeper.sweep(["seed=3"])

    calls = sweeper.launcher.calls
    assert [start for start, _ in calls] == [0, 4, 8, 12, 16, 20, 24, 28]            # batches of n_jobs
    assert all(job[:2] == ["student=tiny", "seed=3"] for _, batch in calls for job in batch)
    study = sweeper.study
    trials = study.trials
    assert len(trials) == 30 and [t.user_attrs["job_num"] for t in trials] == list(range(30))
    for t in trials:
        x, broken = t.params["x"], t.params["mode"] == "broken"
        if x > 3.5 or broken:
            assert t.state.name == "FAIL"
            assert t.user_attrs["fail_reason"].startswith(
                "the job raised MemoryError" if x > 3.5 else "the job returned None")
        else:
            assert t.state.name == "COMPLETE" and t.value == -(x - 2.0) ** 2
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert 0 < len(complete) < 30
    best = max(complete, key=lambda t: t.value)
    assert study.best_trial.number == best.number and abs(best.params["x"] - 2.0) < 0.25
    results = OmegaConf.load(tmp_path / "optimization_results.yaml")
    assert results.best_value == best.value and results.best_job == best.number
    assert results.best_params == {"x": best.params["x"], "mode": "ok"}
    assert (results.n_trials, results.n_complete, results.n_failed) == (30, len(complete), 30 - len(complete))
    assert len((tmp_path / "trials.csv").read_text().strip().splitlines()) == 31
    assert (tmp_path / "multirun.yaml").exists()


# ---------------------------------------------------------------------- the tolerant job
def test_failed_job_in_a_multirun_is_recorded_and_returns_none(tmp_path, token_cache, monkeypatch):
    cfg = compose_cfg(["hydra.mode=MULTIRUN", "student=tiny", "+optimizer.eps=-1", "seed=7"], tmp_path / "job", token_cache)
    finished = []
    monkeypatch.setattr("lrkd.run.jobs.finish_wandb", lambda: finished.append(True))

    def stage(c):
        raise ValueError(f"Invalid epsilon value: {c.optimizer.eps}")

    assert run_job_tolerantly(stage, cfg) is None
    error = json.loads((tmp_path / "job" / "error.json").read_text())
    assert (error["type"], error["message"]) == ("ValueError", "Invalid epsilon value: -1")
    assert error["overrides"] == ["student=tiny", "+optimizer.eps=-1", "seed=7"]
    assert 'raise ValueError(f"Invalid epsilon value' in error["traceback"]
    assert error["traceback"].splitlines()[-1] == "ValueError: Invalid epsilon value: -1"
    assert finished == [True]
    assert run_job_tolerantly(lambda c: {"optimized_metric": 0.5}, cfg) == {"optimized_metric": 0.5}

    def interrupted(c):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):      # Ctrl-C stops the sweep
        run_job_tolerantly(interrupted, cfg)


def test_failed_single_run_still_raises(tmp_path, token_cache, monkeypatch):
    cfg = compose_cfg(["student=tiny"], tmp_path / "run", token_cache)
    monkeypatch.setattr("lrkd.run.jobs.finish_wandb", lambda: None)

    def stage(c):
        raise FloatingPointError("loss is nan")

    with pytest.raises(FloatingPointError):
        run_job_tolerantly(stage, cfg)
    assert json.loads((tmp_path / "run" / "error.json").read_text())["type"] == "FloatingPointError"


def test_error_of_a_job_whose_config_does_not_resolve_goes_to_the_working_dir(tmp_path, token_cache, monkeypatch):
    from omegaconf import open_dict

    cfg = compose_cfg(["hydra.mode=MULTIRUN", "student=tiny"], tmp_path / "job", token_cache)
    with open_dict(cfg):
        cfg.paths.output_dir = "${oc.env:LRKD_TEST_NO_SUCH_VARIABLE}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("lrkd.run.jobs.finish_wandb", lambda: None)

    def stage(c):
        return c.paths.output_dir   # raises: the interpolation does not resolve

    assert run_job_tolerantly(stage, cfg) is None
    error = json.loads((tmp_path / "error.json").read_text())
    assert error["type"] == "InterpolationResolutionError" and "LRKD_TEST_NO_SUCH_VARIABLE" in error["message"]


def test_train_py_single_run_exits_non_zero(tmp_path, token_cache, monkeypatch, capsys):
    """train.py run as a script, in process: Hydra turns the propagated error into exit status 1."""
    import runpy

    monkeypatch.setattr(sys, "argv", ["train.py", *TINY, "+optimizer.eps=-1", "logger=none",
                                      f"paths.cache_dir={token_cache}", f"hydra.run.dir={tmp_path / 'run'}"])
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level      # Hydra reconfigures logging for its job
    GlobalHydra.instance().clear()
    try:
        with pytest.raises(SystemExit) as exit_:
            runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
    finally:
        GlobalHydra.instance().clear()
        root.handlers[:] = handlers
        root.setLevel(level)
    assert exit_.value.code == 1
    assert "Invalid epsilon value: -1" in capsys.readouterr().err  # AdamW's own check (optimizer=adamw)
    assert json.loads((tmp_path / "run" / "error.json").read_text())["type"] == "ValueError"


# ----------------------------------------------------------------------------------- W&B
def test_wandb_identity_in_a_sweep_and_in_a_single_run(tmp_path, token_cache):
    sweep = tmp_path / "2026-01-01_00-00-00"
    sweep.mkdir()
    OmegaConf.save(OmegaConf.create({"hydra": {"sweeper": {"params": {"extractor": "none,mlp"}},
                                               "overrides": {"task": ["student=tiny", "seed=1,2"]}}}),
                   sweep / "multirun.yaml")
    overrides = ["student=tiny", "extractor=mlp", "seed=2", "logger=wandb", "task_name=abl"]
    cfg = compose_cfg(["hydra.mode=MULTIRUN", f"hydra.sweep.dir={sweep}", *overrides], tmp_path / "0", token_cache)
    expected = RunIdentity(name="extractor=mlp,seed=2", group="abl/2026-01-01_00-00-00", tags=tuple(overrides))
    assert run_identity(task_name="abl") == expected
    apply_wandb_identity(cfg)
    assert (cfg.logger.wandb.name, cfg.logger.wandb.group, list(cfg.logger.wandb.tags)) == \
        (expected.name, expected.group, overrides)

    mine = compose_cfg([*overrides, "logger.wandb.name=mine"], tmp_path / "run", token_cache)   # a single run
    apply_wandb_identity(mine)
    assert mine.logger.wandb.name == "mine" and mine.logger.wandb.group is None
    assert run_identity().name == "extractor=mlp,logger.wandb.name=mine,logger=wandb,seed=2,student=tiny,task_name=abl"


class Recorder:
    def __init__(self):
        self.logged = []

    def log(self, payload):
        self.logged.append(payload)


def test_confusion_matrix_and_per_class_f1_go_to_wandb_loggers_only(tmp_path):
    import torch
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    recorder = Recorder()

    class RecordingWandbLogger(WandbLogger):
        @property
        def experiment(self):
            return recorder

    confusion = torch.tensor([[5, 1, 0], [2, 7, 1], [0, 3, 9]])   # rows gold, columns predicted
    metrics = {"test/f1/exact": 0.75, "test/f1/partial": 0.6, "test/f1/irrelevant": 0.8, "test/macro_f1": 0.7}
    names = ["exact", "partial", "irrelevant"]
    log_test_extras([CSVLogger(tmp_path), RecordingWandbLogger(project="t")], confusion, metrics, names)
    (payload,) = recorder.logged
    cm, f1 = payload["test/confusion_matrix"], payload["test/per_class_f1"]
    assert cm.spec.spec_name == "wandb/confusion_matrix/v1"
    assert cm.table.columns == ["Actual", "Predicted", "nPredictions"]
    assert [row for row in cm.table.data if row[2]] == [
        ["exact", "exact", 5], ["exact", "partial", 1], ["partial", "exact", 2], ["partial", "partial", 7],
        ["partial", "irrelevant", 1], ["irrelevant", "partial", 3], ["irrelevant", "irrelevant", 9]]
    assert len(cm.table.data) == 9
    assert f1.table.data == [["exact", 0.75], ["partial", 0.6], ["irrelevant", 0.8]]
    with pytest.raises(ValueError, match="confusion matrix is 2x2, expected 3x3"):
        log_test_extras([RecordingWandbLogger(project="t")], torch.zeros(2, 2), metrics, names)


# ------------------------------------------------------------------- real multiruns (subprocess)
def run_train(args: list[str], cache: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled",
            "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "train.py", *args, f"paths.cache_dir={cache}"], cwd=ROOT,
                          env={**base, **(env or {})}, capture_output=True, text=True, timeout=150)
    return proc


def test_multirun_with_a_failing_job_completes_the_others_and_the_report_lists_it(tmp_path, token_cache):
    from lrkd.report import build_report, find_jobs

    sweep = tmp_path / "sweep"
    proc = run_train(["-m", *TINY, "+optimizer.eps=-1,1e-8", f"hydra.sweep.dir={sweep}"], token_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (sweep / "0" / "metrics.json").exists()
    error = json.loads((sweep / "0" / "error.json").read_text())
    assert error["type"] == "ValueError" and error["message"].startswith("Invalid epsilon value: -1")
    assert "+optimizer.eps=-1" in error["overrides"]
    metrics = json.loads((sweep / "1" / "metrics.json").read_text())     # the job after the failure ran
    assert 0.0 <= metrics["test/macro_f1"] <= 1.0

    report = build_report(find_jobs([sweep]), latency_file=tmp_path / "none.json")
    assert report.group_by == ["optimizer.eps"]
    assert report.table[["optimizer.eps", "n", "failed"]].values.tolist() == [["-1", 0, 1], ["1e-08", 1, 0]]
    assert report.table["test/macro_f1 mean"].iloc[1] == pytest.approx(metrics["test/macro_f1"])
    (failure,) = report.failures.to_dict("records")
    assert failure["job"] == "sweep/0" and failure["error"] == "ValueError: Invalid epsilon value: -1"


def test_optuna_search_optimises_the_metric_train_py_returns(tmp_path, token_cache):
    sweep = tmp_path / "search"
    args = ["-m", "hparams_search=student_optuna", "hydra.sweeper.n_trials=2", *TINY, "trainer.max_steps=-1",
            "trainer.max_epochs=1", "trainer.limit_train_batches=2", f"hydra.sweep.dir={sweep}"]
    proc = run_train(args, token_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    values = [json.loads((sweep / str(j) / "metrics.json").read_text())["optimized_metric"] for j in (0, 1)]
    assert all(isinstance(v, float) and math.isfinite(v) for v in values)
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert (results.n_complete, results.n_failed) == (2, 0)
    best = max(range(2), key=lambda j: values[j])
    assert results.best_value == pytest.approx(values[best]) and results.best_job == best
    job_overrides = parse_overrides(OmegaConf.load(sweep / str(best) / ".hydra" / "overrides.yaml"))
    for key, value in results.best_params.items():
        assert float(job_overrides[key]) == pytest.approx(value)


def wandb_records(path: Path):
    """The records of an offline W&B run file (LevelDB log format: 7-byte file header, 32 KiB
    blocks, each record chunk = crc32 (4) + length (2) + type (1: full, 2: first, 3: middle, 4: last))."""
    from wandb.proto import wandb_internal_pb2

    data, pos, chunks = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:      # block padding
            pos += left
            continue
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def test_wandb_offline_multirun_makes_one_finished_run_per_job(tmp_path, token_cache):
    sweep = tmp_path / "wandb_sweep"
    env = {"WANDB_MODE": "offline", "WANDB_API_KEY": "", "WANDB_SILENT": "true",
           "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config"), "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache"),
           "WANDB_DATA_DIR": str(tmp_path / "wandb_data")}
    proc = run_train(["-m", *TINY, "logger=wandb", "seed=1,2", f"hydra.sweep.dir={sweep}"], token_cache, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_ids = set()
    for job, seed in (("0", 1), ("1", 2)):
        (run_file,) = (sweep / job / "wandb").glob("offline-run-*/run-*.wandb")
        run_ids.add(run_file.stem)
        records = list(wandb_records(run_file))
        kinds = [r.WhichOneof("record_type") for r in records]
        (run,) = [r.run for r in records if r.HasField("run")]
        assert run.display_name == f"seed={seed}" and run.run_group == f"student/{sweep.name}"
        assert f"seed={seed}" in run.tags and "logger=wandb" in run.tags
        configs = [json.loads(u.value_json) for r in records if r.HasField("config")
                   for u in r.config.update if u.key == "config"]
        assert [c["seed"] for c in configs] == [seed]               # its own config, and only its own
        assert configs[0]["student"]["config"]["hidden_size"] == 32
        logged = {item.key or "/".join(item.nested_key[:1]) for r in records if r.HasField("history")
                  for item in r.history.item}
        assert {"test/macro_f1", "test/qwk", "test/f1/poor", "test/confusion_matrix_table",
                "test/per_class_f1_table"} <= logged
        assert kinds.count("exit") == 1                            # finished before the next job
    assert len(run_ids) == 2
