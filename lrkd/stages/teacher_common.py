"""What the teacher stages share besides their lifecycle (:mod:`lrkd.stages.base`): the dataset,
the teacher's optimizer settings, the Lightning trainer (built like the student's from
``cfg.trainer``, ``cfg.callbacks`` and ``cfg.logger``, checkpoints in the stage folder, resumed after
a kill), and the teacher's evaluation on the test split. Not a stage: stages never import each
other, they import this module and :mod:`lrkd.stages.base` (tests/test_architecture.py).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from omegaconf import DictConfig

from lrkd.data.sampler import make_train_loader
from lrkd.lightning.distributed import fitted_global_step, full_parameters, is_zero3
from lrkd.teacher.label.evaluate import evaluate_teacher
from lrkd.stages.base import (CHECKPOINT_FOLDER, OPERATIONAL_KEYS, StageRun, finish_training, instantiate_group,
                              require_finished, select_rows, without_logger_callbacks)
from lrkd.teacher.model import inference_model
from lrkd.teacher.train.module import load_trained_teacher
from lrkd.utils import plain

log = logging.getLogger(__name__)

MODEL_FOLDER = "model"


def load_pairs(cfg: DictConfig):
    """The configured dataset, split by query (a set-up RelevanceDataModule: ``frame``, ``splits``,
    ``fingerprint``, ``label_set``), without any annotation artefact attached."""
    dm = instantiate(cfg.data, seed=cfg.seed, annotations=None, _recursive_=False)
    dm.setup("fit")
    return dm


INIT_SOURCES = ("base", "dapt")


def init_teacher(cfg: DictConfig) -> tuple[Path | None, str]:
    """Where a stage's teacher starts (``stage.init_from``): ``base`` -> (None, "base"); ``dapt`` ->
    (``<work_dir>/dapt/model``, the teacher_dapt stage's fingerprint)."""
    source = str(cfg.stage.get("init_from", "base"))
    if source not in INIT_SOURCES:
        raise ValueError(f"stage.init_from must be one of {INIT_SOURCES}, got {source!r}")
    if source == "base":
        return None, "base"
    folder, record = require_finished(cfg, "teacher_dapt")
    return folder / MODEL_FOLDER, record["fingerprint"]


def optimizer_config(stage: DictConfig) -> dict:
    """The teacher's optimizer settings from its stage config (``lr``, ``weight_decay``, ``warmup_ratio``)."""
    return {"lr": float(stage.lr), "weight_decay": float(stage.get("weight_decay", 0.0)),
            "warmup_ratio": float(stage.get("warmup_ratio", 0.0))}


def stage_without_defaults(cfg: DictConfig, **defaults) -> dict:
    """``cfg.stage`` without the operational keys, and without the given keys where they hold their
    default value (a setting added later leaves the fingerprints of earlier runs unchanged)."""
    stage = {k: v for k, v in plain(cfg.stage).items() if k not in OPERATIONAL_KEYS}
    for key, value in defaults.items():
        if stage.get(key, value) == value:
            stage.pop(key, None)
    return stage


# ------------------------------------------------------------------------------------ training
class TrainLoader(L.LightningDataModule):
    """Serves one dataset as the training loader, built after a checkpoint restore so that a resumed
    fit continues mid-epoch with the same seeded order (:func:`lrkd.data.sampler.make_train_loader`)."""

    def __init__(self, dataset, batch_size: int, collate_fn, seed: int):
        super().__init__()
        self.dataset, self.batch_size, self.collate_fn, self.seed = dataset, int(batch_size), collate_fn, int(seed)

    @property
    def num_train_batches(self) -> int:
        """Optimizer steps per epoch before accumulation, per process (each rank reads ceil(N / world)
        items): the LR schedule's length without building the loader before a checkpoint restore."""
        world = max(int(getattr(self.trainer, "world_size", 1) or 1), 1) if self.trainer is not None else 1
        return math.ceil(math.ceil(len(self.dataset) / world) / self.batch_size)

    def train_dataloader(self):
        return make_train_loader(self.dataset, batch_size=self.batch_size, collate_fn=self.collate_fn,
                                 seed=self.seed, trainer=self.trainer)


def build_trainer(cfg: DictConfig, out_dir: Path, max_epochs: int) -> L.Trainer:
    """A Trainer from ``cfg.trainer`` with the configured loggers and callbacks, except that the
    student's validation-monitored checkpoints and early stopping are replaced by one ``last.ckpt``
    in ``<out_dir>/checkpoints`` (every ``stage.checkpoint_every_n_steps`` steps and each epoch end)."""
    loggers = instantiate_group(cfg.get("logger"))
    callbacks = [c for c in instantiate_group(cfg.get("callbacks")) if not isinstance(c, (ModelCheckpoint, EarlyStopping))]
    callbacks = without_logger_callbacks(callbacks, loggers)
    every = cfg.stage.get("checkpoint_every_n_steps")
    callbacks.append(ModelCheckpoint(dirpath=str(out_dir / CHECKPOINT_FOLDER), save_top_k=0, save_last=True,
                                     every_n_train_steps=int(every) if every else None, save_on_train_epoch_end=True))
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, max_epochs=int(max_epochs),
                       limit_val_batches=0, num_sanity_val_steps=0)


def trained_metrics(trainer: L.Trainer, prefix: str = "train/") -> dict[str, float]:
    """The trainer's last logged values under ``prefix`` as floats."""
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix)}


# ---------------------------------------------------------------------------------- evaluation
def inference_device(cfg: DictConfig) -> torch.device:
    """Where a stage generates, scores and annotates outside the Lightning trainer: ``stage.device``
    (``auto`` = the GPU when there is one, else the CPU)."""
    name = str(cfg.stage.get("device", "auto"))
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def decoding_options(cfg: DictConfig) -> dict:
    """The stage's greedy-labelling options for :func:`lrkd.teacher.label.annotate.label_pairs`:
    ``{"calibrate": bool, "no_repeat_ngram_size": int}`` (off when the stage config lacks them)."""
    return {"calibrate": bool(cfg.stage.get("calibrate", False)),
            "no_repeat_ngram_size": int(cfg.stage.get("no_repeat_ngram_size", 0) or 0)}


def evaluate_on_test(cfg: DictConfig, model, tokenizer, dm, perspectives, name: str) -> dict[str, float]:
    """``stage.evaluate``: the teacher's macro-F1 / QWK on (at most ``stage.eval_max_pairs`` of) the
    labelled test pairs, as ``{"eval/<name>/<metric>": value}``; {} when evaluation is off."""
    if not cfg.stage.get("evaluate", False):
        return {}

    rows = select_rows(dm.frame, dm.splits, ["test"], cfg.stage.get("eval_max_pairs"), int(cfg.seed))
    rows = rows[dm.frame["label"].to_numpy()[rows] >= 0]
    model.to(inference_device(cfg))
    result = evaluate_teacher(inference_model(model, cfg.teacher, copy=True), tokenizer, dm.frame, rows, perspectives,
                              list(dm.label_set.names), batch_size=int(cfg.stage.get("eval_batch_size", 8)),
                              max_new_tokens=int(cfg.stage.get("eval_max_new_tokens", 256)),
                              max_item_words=cfg.teacher.get("max_item_words"), **decoding_options(cfg))
    log.info("teacher (%s) on %d test pairs: %s", name, len(rows), result)
    return {f"eval/{name}/{k}": v for k, v in result.items()}


def fit_save_and_record(cfg: DictConfig, module, data, run: StageRun, ckpt: str | None, *, metrics: dict, tokenizer,
                        dm, perspectives, eval_name: str, after=None) -> dict:
    """The shared tail of the DAPT, SFT and DPO stages: fit ``module`` on ``data`` (resuming from
    ``ckpt``), save the trained teacher into ``<run.out>/model``, score it on the test split (and
    with ``after(model) -> dict`` when given), and write the stage record. Returns the stage's
    metrics with ``reused: False``."""
    out_dir = run.out
    trainer = build_trainer(cfg, out_dir, int(cfg.stage.epochs))
    module.train()
    trainer.fit(module, datamodule=data, ckpt_path=ckpt, weights_only=True)
    metrics.update(trained_metrics(trainer))
    metrics["steps"] = fitted_global_step(trainer, out_dir / CHECKPOINT_FOLDER / "last.ckpt")
    # several ranks (DDP / DeepSpeed re-run this stage on every rank): rank 0 saves and records
    with full_parameters(trainer, module):  # ZeRO-3: the partitioned weights gathered on every rank
        if trainer.is_global_zero:
            module.save_model(out_dir / MODEL_FOLDER)
    trainer.strategy.barrier("teacher saved")
    if trainer.is_global_zero:
        finish_training(out_dir, bool(cfg.stage.get("keep_checkpoints", False)))
        model = module.model
        if is_zero3(trainer):  # the in-memory model is partitioned: evaluate the saved one

            model = load_trained_teacher(cfg.teacher, out_dir / MODEL_FOLDER)[0]
        if after is not None:
            metrics.update(after(model))
        metrics.update(evaluate_on_test(cfg, model, tokenizer, dm, perspectives, eval_name))
        run.record(metrics)
        log.info("%s: %s", run.name, metrics)
    trainer.strategy.barrier("teacher recorded")
    return {**metrics, "reused": False}
