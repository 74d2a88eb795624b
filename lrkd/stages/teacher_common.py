"""What the teacher_sft, teacher_dpo and teacher_annotate stages share: the dataset, the config part
that a stage's fingerprint covers, reading a previous stage's output, the Lightning trainer (built
like the student's from ``cfg.trainer``, ``cfg.callbacks`` and ``cfg.logger``, checkpoints in the
stage folder, resumed after a kill), and the teacher's evaluation on the test split.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lrkd.stages.work_dir import read_stage_record

log = logging.getLogger(__name__)

# stage name -> its folder under stage.work_dir
STAGE_FOLDERS = {"teacher_generate": "generations", "teacher_sft": "sft", "teacher_dpo": "dpo",
                 "teacher_annotate": "annotations"}
MODEL_FOLDER = "model"
CHECKPOINT_FOLDER = "checkpoints"
RUNNING_RECORD = "running.json"
# trainer settings that change what a teacher stage trains (logging and paths do not)
# stage settings that change where or how robustly a stage runs, not its result
OPERATIONAL_KEYS = ("work_dir", "device", "checkpoint_every_n_steps", "keep_checkpoints")
TRAINER_KEYS = ("precision", "accumulate_grad_batches", "gradient_clip_val", "max_steps", "limit_train_batches",
                "fast_dev_run", "accelerator", "devices", "strategy", "deterministic")


def plain(node) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def stage_folder(cfg: DictConfig, stage: str) -> Path:
    """``<cfg.stage.work_dir>/<folder of stage>``."""
    return Path(str(cfg.stage.work_dir)).expanduser() / STAGE_FOLDERS[stage]


def stage_folder_path(cfg: DictConfig, folder: str) -> Path:
    """``<cfg.stage.work_dir>/<folder>``."""
    return Path(str(cfg.stage.work_dir)).expanduser() / folder


def load_pairs(cfg: DictConfig):
    """The configured dataset, split by query (a set-up RelevanceDataModule: ``frame``, ``splits``,
    ``fingerprint``, ``label_set``), without any annotation artefact attached."""
    dm = instantiate(cfg.data, seed=cfg.seed, annotations=None, _recursive_=False)
    dm.setup("fit")
    return dm


def fingerprint_config(cfg: DictConfig) -> dict:
    """The config a teacher training/annotation stage depends on: its own settings (not the
    :data:`OPERATIONAL_KEYS`),
    the teacher (not cache_dir), perspectives, seed, the dataset's name/labels/split, the trainer
    settings of :data:`TRAINER_KEYS`."""
    stage = {k: v for k, v in plain(cfg.stage).items() if k not in OPERATIONAL_KEYS}
    teacher = plain(cfg.teacher)
    teacher.pop("cache_dir", None)
    data = plain(cfg.data)
    trainer = plain(cfg.get("trainer") or {})
    return {"stage": stage, "teacher": teacher, "perspective": plain(cfg.perspective), "seed": int(cfg.seed),
            "data": {k: data.get(k) for k in ("name", "labels", "split")},
            "trainer": {k: trainer.get(k) for k in TRAINER_KEYS if k in trainer}}


def require_finished(cfg: DictConfig, stage: str) -> tuple[Path, dict]:
    """(folder, stage record) of a finished earlier stage; a clear error when it has not run."""
    folder = stage_folder(cfg, stage)
    record = read_stage_record(folder)
    if record is None:
        raise FileNotFoundError(f"{folder} holds no finished {stage} stage (no stage.json): run "
                                f"`python train.py stage={stage}` first (same data, teacher and work_dir), "
                                f"or `experiment=pipeline` to run every stage in order")
    return folder, record


def pool_rows(frame, splits: dict, names: str | Sequence[str], max_pairs: int | None, seed: int) -> np.ndarray:
    """Positions of the pairs of the named splits (``"all"`` = every pair, labelled or not), in row
    order; with ``max_pairs``, a seeded random subset."""
    if isinstance(names, str):
        if names != "all":
            raise ValueError(f"stage.splits must be a list of split names or 'all', got {names!r}")
        rows = np.arange(len(frame), dtype=np.int64)
    else:
        names = list(names)
        unknown = [s for s in names if s not in splits]
        if unknown or not names:
            raise ValueError(f"stage.splits: unknown or no split(s) {unknown or names}; choose from "
                             f"{sorted(splits)} or 'all'")
        rows = np.concatenate([np.asarray(splits[s], dtype=np.int64) for s in names])
    if max_pairs is not None and len(rows) > int(max_pairs):
        rows = rows[np.random.default_rng(seed).permutation(len(rows))[:int(max_pairs)]]
    return np.sort(rows)


# ------------------------------------------------------------------------------------ training
class TrainLoader(L.LightningDataModule):
    """Serves one dataset as the training loader, built after a checkpoint restore so that a resumed
    fit continues mid-epoch with the same seeded order (:func:`lrkd.data.sampler.make_train_loader`)."""

    def __init__(self, dataset, batch_size: int, collate_fn, seed: int):
        super().__init__()
        self.dataset, self.batch_size, self.collate_fn, self.seed = dataset, int(batch_size), collate_fn, int(seed)

    def train_dataloader(self):
        from lrkd.data.sampler import make_train_loader

        return make_train_loader(self.dataset, batch_size=self.batch_size, collate_fn=self.collate_fn,
                                 seed=self.seed, trainer=self.trainer)


def build_trainer(cfg: DictConfig, out_dir: Path, max_epochs: int) -> L.Trainer:
    """A Trainer from ``cfg.trainer`` with the configured loggers and callbacks, except that the
    student's validation-monitored checkpoints and early stopping are replaced by one ``last.ckpt``
    in ``<out_dir>/checkpoints`` (every ``stage.checkpoint_every_n_steps`` steps and each epoch end)."""
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from lrkd.stages.student import _instantiate_group, without_logger_callbacks

    loggers = _instantiate_group(cfg.get("logger"))
    callbacks = [c for c in _instantiate_group(cfg.get("callbacks")) if not isinstance(c, (ModelCheckpoint, EarlyStopping))]
    callbacks = without_logger_callbacks(callbacks, loggers)
    every = cfg.stage.get("checkpoint_every_n_steps")
    callbacks.append(ModelCheckpoint(dirpath=str(out_dir / CHECKPOINT_FOLDER), save_top_k=0, save_last=True,
                                     every_n_train_steps=int(every) if every else None, save_on_train_epoch_end=True))
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, max_epochs=int(max_epochs),
                       limit_val_batches=0, num_sanity_val_steps=0)


def resume_checkpoint(out_dir: Path, fingerprint: str) -> str | None:
    """``last.ckpt`` of a killed run of the same stage fingerprint (to resume from), else None; the
    checkpoints of another fingerprint are removed. Records the fingerprint being trained."""
    from lrkd.distributed import is_rank_zero

    ckpt_dir = out_dir / CHECKPOINT_FOLDER
    running = out_dir / RUNNING_RECORD
    last = ckpt_dir / "last.ckpt"
    if not is_rank_zero():  # the other ranks of a DDP/DeepSpeed run read what rank 0 decides
        try:
            same = running.is_file() and json.loads(running.read_text()).get("fingerprint") == fingerprint
        except ValueError:  # rank 0 is rewriting it: it is starting over
            same = False
        return str(last) if same and last.exists() else None
    same = running.is_file() and json.loads(running.read_text()).get("fingerprint") == fingerprint
    if same and last.exists():  # a file, or a directory under DeepSpeed
        log.info("resuming the killed run of %s from %s", out_dir.name, last)
        return str(last)
    if ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    running.write_text(json.dumps({"fingerprint": fingerprint}) + "\n")
    return None


def finish_training(out_dir: Path, keep_checkpoints: bool) -> None:
    """After the model is saved: drop the resume state (and the checkpoints unless kept)."""
    (out_dir / RUNNING_RECORD).unlink(missing_ok=True)
    if not keep_checkpoints and (out_dir / CHECKPOINT_FOLDER).exists():
        shutil.rmtree(out_dir / CHECKPOINT_FOLDER)


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
    """The stage's greedy-labelling options for :func:`lrkd.teacher.annotate.label_pairs`:
    ``{"calibrate": bool, "no_repeat_ngram_size": int}`` (off when the stage config lacks them)."""
    return {"calibrate": bool(cfg.stage.get("calibrate", False)),
            "no_repeat_ngram_size": int(cfg.stage.get("no_repeat_ngram_size", 0) or 0)}


def evaluate_on_test(cfg: DictConfig, model, tokenizer, dm, perspectives, name: str) -> dict[str, float]:
    """``stage.evaluate``: the teacher's macro-F1 / QWK on (at most ``stage.eval_max_pairs`` of) the
    labelled test pairs, as ``{"eval/<name>/<metric>": value}``; {} when evaluation is off."""
    if not cfg.stage.get("evaluate", False):
        return {}
    from lrkd.teacher.annotate import evaluate_teacher
    from lrkd.teacher.model import inference_model

    rows = pool_rows(dm.frame, dm.splits, ["test"], cfg.stage.get("eval_max_pairs"), int(cfg.seed))
    rows = rows[dm.frame["label"].to_numpy()[rows] >= 0]
    model.to(inference_device(cfg))
    result = evaluate_teacher(inference_model(model, cfg.teacher, copy=True), tokenizer, dm.frame, rows, perspectives,
                              list(dm.label_set.names), batch_size=int(cfg.stage.get("eval_batch_size", 8)),
                              max_new_tokens=int(cfg.stage.get("eval_max_new_tokens", 256)),
                              max_item_words=cfg.teacher.get("max_item_words"), **decoding_options(cfg))
    log.info("teacher (%s) on %d test pairs: %s", name, len(rows), result)
    return {f"eval/{name}/{k}": v for k, v in result.items()}


def fit_save_and_record(cfg: DictConfig, module, data, out_dir: Path, ckpt: str | None, *, stage: str,
                        fingerprint: str, started: float, metrics: dict, tokenizer, dm, perspectives,
                        eval_name: str) -> dict:
    """The shared tail of the SFT and DPO stages: fit ``module`` on ``data`` (resuming from
    ``ckpt``), save the trained teacher into ``<out_dir>/model``, score it on the test split, and
    write the stage record. Returns the stage's metrics with ``reused: False``."""
    import time

    from lrkd.stages.work_dir import write_stage_record
    from lrkd.sweep import finish_wandb

    from lrkd.distributed import fitted_global_step, full_parameters, is_zero3

    trainer = build_trainer(cfg, out_dir, int(cfg.stage.epochs))
    try:
        module.train()
        trainer.fit(module, datamodule=data, ckpt_path=ckpt, weights_only=True)
        metrics.update(trained_metrics(trainer))
        metrics["steps"] = fitted_global_step(trainer, out_dir / CHECKPOINT_FOLDER / "last.ckpt")
    finally:
        finish_wandb()
    # several ranks (DDP / DeepSpeed re-run this stage on every rank): rank 0 saves and records
    with full_parameters(trainer, module):  # ZeRO-3: the partitioned weights gathered on every rank
        if trainer.is_global_zero:
            module.save_model(out_dir / MODEL_FOLDER)
    trainer.strategy.barrier("teacher saved")
    if trainer.is_global_zero:
        finish_training(out_dir, bool(cfg.stage.get("keep_checkpoints", False)))
        model = module.model
        if is_zero3(trainer):  # the in-memory model is partitioned: evaluate the saved one
            from lrkd.teacher.module import load_trained_teacher

            model = load_trained_teacher(cfg.teacher, out_dir / MODEL_FOLDER)[0]
        metrics.update(evaluate_on_test(cfg, model, tokenizer, dm, perspectives, eval_name))
        write_stage_record(out_dir, stage, fingerprint, time.time() - started, metrics)
        log.info("%s: %s", stage, metrics)
    trainer.strategy.barrier("teacher recorded")
    return {**metrics, "reused": False}
