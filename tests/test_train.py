"""The student stage end to end: config composition, fast_dev_run per loss preset, resume, NaN stop."""
from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict

from lrkd.stages.student import run_student

ROOT = Path(__file__).resolve().parents[1]
GROUPS = ["data", "student", "extractor", "loss", "optimizer", "scheduler", "trainer", "logger", "callbacks",
          "experiment"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


def test_every_group_has_options():
    for group in GROUPS:
        assert options(group), f"conf/{group}/ has no options"


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_each_option_composes_and_instantiates(make_cfg, tmp_path, group, option):
    extra = []
    if group == "data" and option in ("home_depot", "table"):
        extra = [f"data.path={tmp_path / 'pairs.csv'}"]
    cfg = make_cfg(f"{group}={option}", *extra)
    if group == "data":
        dm = instantiate(cfg.data, _recursive_=False)
        assert isinstance(dm, L.LightningDataModule)
    elif group == "student":
        from lrkd.student.encoder import load_encoder

        enc = load_encoder(name_or_path=cfg.student.name_or_path, config=cfg.student.config,
                           tokenizer=cfg.student.tokenizer)
        assert enc.config.hidden_size > 0
    elif group == "extractor":
        ext = instantiate(cfg.extractor, hidden_size=32, num_perspectives=len(cfg.perspectives))
        z = ext(torch.randn(2, 5, 32), torch.ones(2, 5, dtype=torch.long))
        assert (z is None) == (option == "none")
    elif group == "loss":
        loss = instantiate(cfg.loss)
        assert "ce" in loss.active_terms
    elif group in ("optimizer", "scheduler"):
        params = [torch.nn.Parameter(torch.zeros(2, 2))]
        opt = instantiate({k: v for k, v in cfg.optimizer.items() if k != "head_lr"})(params)
        assert isinstance(opt, torch.optim.Optimizer)
        assert isinstance(instantiate(cfg.scheduler)(opt, total_steps=10), torch.optim.lr_scheduler.LRScheduler)
    elif group == "trainer":
        if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
            pytest.skip("no GPU (the scale-out configs are checked in tests/test_scale_out.py)")
        assert isinstance(instantiate(cfg.trainer), L.Trainer)
    elif group in ("logger", "callbacks"):
        from lightning.pytorch.loggers import Logger

        kind = Logger if group == "logger" else L.Callback
        nodes = {k: n for k, n in (cfg.get(group) or {}).items() if n is not None}
        objs = {k: instantiate(n) for k, n in nodes.items()}
        assert all(isinstance(o, kind) for o in objs.values()), objs
        if option not in ("none",):
            assert objs, f"{group}={option} instantiates nothing"
        if group == "callbacks" and option != "none":
            assert any(type(o).__name__ == "RNGStateCheckpoint" for o in objs.values())
    elif group == "experiment":
        assert cfg.task_name == option


# what each debug option (conf/debug/, as lightning-hydra-template's) sets on the trainer
DEBUG_TRAINER = {"default": {"max_epochs": 1}, "fdr": {"fast_dev_run": True},
                 "limit": {"max_epochs": 3, "limit_train_batches": 0.01, "limit_val_batches": 0.05,
                           "limit_test_batches": 0.05},
                 "overfit": {"max_epochs": 20, "overfit_batches": 3}, "profiler": {"max_epochs": 1, "profiler": "simple"}}


def test_the_debug_group_has_the_four_options():
    assert set(options("debug")) == set(DEBUG_TRAINER)


@pytest.mark.parametrize("option", options("debug"))
def test_each_debug_option_composes(make_cfg, option):
    cfg = make_cfg(f"debug={option}")
    assert cfg.task_name == "debug" and cfg.logger is None and cfg.data.num_workers == 0
    assert cfg.trainer.detect_anomaly and cfg.trainer.accelerator == "cpu" and cfg.trainer.devices == 1
    assert {k: cfg.trainer[k] for k in DEBUG_TRAINER[option]} == DEBUG_TRAINER[option]
    assert (cfg.callbacks is None) == (option == "overfit")
    assert isinstance(instantiate(cfg.trainer), L.Trainer)


def test_debug_fdr_runs_the_student_stage(make_cfg, tmp_path):
    result = run_student(make_cfg("debug=fdr", "data.batch_size=8", "data.eval_batch_size=16"))
    assert 0.0 <= result["test/macro_f1"] <= 1.0


def _attach_artefact(cfg, tmp_path: Path) -> None:
    """Build a small artefact over the configured dataset and point data.annotations at it."""
    from tests.fixtures.artefacts import make_artefact

    dm = instantiate(cfg.data, _recursive_=False)
    dm.setup("fit")
    path = make_artefact(dm.frame, tmp_path / "artefact", perspectives=list(cfg.perspectives), vector_dim=8,
                         annotate_fraction=0.8, label_names=list(cfg.data.labels.names))
    with open_dict(cfg):
        cfg.data.annotations = str(path)


@pytest.mark.parametrize("preset", ["ce", "kd", "crsd", "latent", "full"])
def test_fast_dev_run_each_loss_preset(make_cfg, tmp_path, preset):
    extractor = "mlp" if preset in ("latent", "full") else "none"
    cfg = make_cfg(f"loss={preset}", f"extractor={extractor}", "trainer.fast_dev_run=true",
                   "data.batch_size=8", "data.eval_batch_size=16")
    if preset != "ce":
        _attach_artefact(cfg, tmp_path)
    result = run_student(cfg)
    assert 0.0 <= result["test/macro_f1"] <= 1.0
    assert (tmp_path / "run" / "metrics.json").exists()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics) >= {"test/macro_f1", "test/qwk", "test/ndcg@10", "test/auc", "params/inference"}
    _every_term_trains(cfg)


def _every_term_trains(cfg) -> None:
    """Each active term of the preset, on a real training batch, is a positive finite loss whose
    gradient reaches the student (a term that returned 0, or a constant, would fail here)."""
    from lrkd.student.module import StudentModule

    loss = instantiate(cfg.loss)
    dm = instantiate(cfg.data, seed=cfg.seed, with_augmented_view=bool(loss.needs_augmented_view), _recursive_=False)
    dm.setup("fit")
    spec = {**dm.spec.to_dict(), "train_class_counts": dm.class_counts("train")}
    model = StudentModule(encoder=cfg.student, extractor=cfg.extractor, loss=cfg.loss, optimizer=cfg.optimizer,
                          scheduler=cfg.scheduler, data_spec=spec)
    batch = next(iter(dm.train_dataloader()))
    out = model(batch, with_augmented_view=model.loss_fn.needs_augmented_view)
    assert loss.active_terms
    for name in loss.active_terms:
        value = model.loss_fn.terms[name](out, batch)["loss"]
        assert torch.isfinite(value) and float(value) > 0, (name, float(value))
        model.zero_grad()
        value.backward(retain_graph=True)
        grads = [p.grad for p in model.student.parameters() if p.grad is not None]
        assert grads and any(float(g.abs().sum()) > 0 for g in grads), f"{name} sends no gradient to the student"


class SimulatedCrash(RuntimeError):
    pass


class KillAtStep(L.Callback):
    """Simulates a crash: raises at the start of the batch after `step` optimizer steps."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise SimulatedCrash(f"killed after step {self.step}")


def _fit(cfg, extra_callbacks=(), ckpt_path=None):
    from lrkd.student.module import StudentModule
    from lrkd.stages.base import instantiate_group, without_logger_callbacks

    L.seed_everything(cfg.seed, workers=True)
    needs_view = bool(instantiate(cfg.loss).needs_augmented_view)
    dm = instantiate(cfg.data, seed=cfg.seed, with_augmented_view=needs_view, _recursive_=False)
    dm.setup("fit")
    model = StudentModule(encoder=cfg.student, extractor=cfg.extractor, loss=cfg.loss,
                          optimizer=cfg.optimizer, scheduler=cfg.scheduler, data_spec=dm.spec.to_dict(),
                          decision=cfg.get("decision"))
    callbacks = without_logger_callbacks(instantiate_group(cfg.callbacks), [])
    trainer = instantiate(cfg.trainer, callbacks=callbacks + list(extra_callbacks), logger=False)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    return model, trainer


def test_resume_after_kill_matches_uninterrupted_run(make_cfg, tmp_path):
    # the full method (every term, the augmented view) on the SmolLM2 artefact, which has rationales
    common = ["extractor=mlp", "loss=full", "data.annotations=${paths.root_dir}/datasets/chorus_icecat/annotations",
              "trainer.max_epochs=2", "trainer.limit_train_batches=6",
              "trainer.limit_val_batches=2", "data.batch_size=8", "callbacks.last_checkpoint.every_n_train_steps=2",
              "callbacks.progress_bar=null"]
    full_cfg = make_cfg(*common, output_dir=tmp_path / "full")
    full, _ = _fit(full_cfg)

    # killed after 4 steps: mid-epoch 0 (6 batches an epoch), with last.ckpt saved at step 4
    cfg = make_cfg(*common, output_dir=tmp_path / "killed")
    with pytest.raises(SimulatedCrash):
        _fit(cfg, extra_callbacks=[KillAtStep(4)])
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    assert last.exists()
    at_kill = torch.load(last, weights_only=True)
    assert at_kill["global_step"] == 4

    resumed, trainer = _fit(make_cfg(*common, output_dir=tmp_path / "killed"), ckpt_path=str(last))
    assert trainer.global_step == 12
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=f"{name} differs after resume")
    # and training moved the weights after the resume: the comparison is not vacuous
    assert not torch.allclose(at_kill["state_dict"]["student.classifier.1.weight"], resumed.student.classifier[1].weight)


def test_resume_with_query_group_batches_matches_uninterrupted_run(make_cfg, tmp_path):
    # rank_kd on batches of whole queries (data.sampler=query_groups), on the shipped Qwen artefact
    common = ["loss=rank_kd", "data.sampler=query_groups", "data.query_groups.items_per_query=4",
              "trainer.max_epochs=2", "trainer.limit_train_batches=5", "trainer.limit_val_batches=1",
              "callbacks.last_checkpoint.every_n_train_steps=3", "callbacks.progress_bar=null"]
    full, _ = _fit(make_cfg(*common, output_dir=tmp_path / "full"))
    with pytest.raises(SimulatedCrash):
        _fit(make_cfg(*common, output_dir=tmp_path / "killed"), extra_callbacks=[KillAtStep(3)])
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 3
    resumed, trainer = _fit(make_cfg(*common, output_dir=tmp_path / "killed"), ckpt_path=str(last))
    assert trainer.global_step == 10
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=f"{name} differs after resume")


def test_nan_loss_stops_with_step_and_batch(make_cfg, monkeypatch):
    from lrkd.losses import NonFiniteLossError
    from lrkd.student.module import StudentModule

    cfg = make_cfg("trainer.max_steps=5", "trainer.limit_val_batches=0", "data.batch_size=8",
                   "callbacks.progress_bar=null")
    original = StudentModule.training_step

    def poisoned(self, batch, batch_idx):
        if self.global_step == 2:
            with torch.no_grad():
                self.student.classifier[1].weight.fill_(float("nan"))
        return original(self, batch, batch_idx)

    monkeypatch.setattr(StudentModule, "training_step", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"global step 2, epoch 0, batch 2"):
        run_student(cfg)
