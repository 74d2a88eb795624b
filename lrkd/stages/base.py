"""The one lifecycle of a stage: where it writes, when its output can be reused, how a killed run
resumes, and its seed. Every stage runs through :class:`StageRun`:

    run = StageRun(cfg, "teacher_sft", "sft", fingerprint_config(cfg), [gen_record["fingerprint"], dm.fingerprint])
    if (done := run.reused()) is not None:     # the folder holds a finished run of this fingerprint
        return done
    ckpt = run.start(resume=True)              # clear the record, seed, last.ckpt of a killed run
    ...                                        # the stage's own work, into run.out
    return run.finish(metrics)                 # stage.json, then {**metrics, "reused": False}

A stage writes one folder (``<stage.work_dir>/<folder>`` for the teacher stages, the Hydra run
directory for the student) and, when it has finished, ``stage.json`` in it::

    {"stage": str, "fingerprint": sha256 hex, "wall_time_s": float, "finished_at": iso str, "metrics": {...}}

The fingerprint hashes the stage's resolved config (:func:`fingerprint_config`) and its inputs'
fingerprints (earlier stages' records, the dataset's content); the record is removed before a
stage (re)runs, so a killed run never looks finished. Training stages keep ``last.ckpt`` under
``checkpoints/`` with ``running.json`` naming the fingerprint being trained; a run of the same
fingerprint resumes from it, another one starts over.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import lightning as L
import numpy as np
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig

from lrkd.data.budget import gold_options, is_default as gold_is_default
from lrkd.lightning.distributed import is_rank_zero
from lrkd.utils import plain, write_json_atomic

log = logging.getLogger(__name__)

STAGE_RECORD = "stage.json"
CHECKPOINT_FOLDER = "checkpoints"
RUNNING_RECORD = "running.json"
# stage name -> its folder under stage.work_dir
STAGE_FOLDERS = {"teacher_dapt": "dapt", "teacher_generate": "generations", "teacher_sft": "sft",
                 "teacher_reward": "reward", "teacher_dpo": "dpo", "teacher_annotate": "annotations"}
# stage settings that change where or how robustly a stage runs, not its result
OPERATIONAL_KEYS = ("work_dir", "device", "checkpoint_every_n_steps", "keep_checkpoints", "enabled")
# trainer settings that change what a training stage trains (logging and paths do not)
TRAINER_KEYS = ("precision", "accumulate_grad_batches", "gradient_clip_val", "max_steps", "limit_train_batches",
                "fast_dev_run", "accelerator", "devices", "strategy", "deterministic")


# --------------------------------------------------------------------------------- folders, records
def stage_folder(cfg: DictConfig, name: str) -> Path:
    """``<cfg.stage.work_dir>/<folder>``: ``name`` is a stage (its folder of :data:`STAGE_FOLDERS`)
    or a folder name."""
    return Path(str(cfg.stage.work_dir)).expanduser() / STAGE_FOLDERS.get(name, name)


def stage_fingerprint(config_node, input_fingerprints: Sequence[str]) -> str:
    """sha256 hex of a config (DictConfig or plain, resolved; key order does not matter) and the
    fingerprints of the stage's inputs (order matters)."""
    payload = {"config": plain(config_node), "inputs": [str(f) for f in input_fingerprints]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def fingerprint_config(cfg: DictConfig, *, stage: Mapping | None = None, trainer: bool = True) -> dict:
    """The config a teacher stage's output depends on: its own settings (``stage``, default
    ``cfg.stage`` without the :data:`OPERATIONAL_KEYS`), the teacher (not its cache_dir), the
    perspectives, the seed, the dataset's name/labels/split (with ``folds``/``fold`` only under
    cross-validation), its gold budget when not the default (``data.gold``) and, for a training stage,
    the trainer settings of :data:`TRAINER_KEYS`."""
    if stage is None:
        stage = {k: v for k, v in plain(cfg.stage).items() if k not in OPERATIONAL_KEYS}
    teacher = plain(cfg.teacher)
    teacher.pop("cache_dir", None)
    data = plain(cfg.data)
    out = {"stage": dict(stage), "teacher": teacher, "perspective": plain(cfg.perspective), "seed": int(cfg.seed),
           "data": {k: data.get(k) for k in ("name", "labels", "split")}}
    split = out["data"]["split"] = dict(data.get("split") or {})
    if split.get("folds") is None:  # one split: the cross-validation keys leave earlier fingerprints as they were
        for key in ("folds", "fold"):
            split.pop(key, None)
    gold = gold_options(data.get("gold"), default_seed=int(cfg.seed))
    if not gold_is_default(gold):   # a teacher that reads gold grades depends on the budget
        out["data"]["gold"] = gold
    if trainer:
        settings = plain(cfg.get("trainer") or {})
        out["trainer"] = {k: settings.get(k) for k in TRAINER_KEYS if k in settings}
    return out


def read_stage_record(directory) -> dict | None:
    """The ``stage.json`` of a stage folder, or None when absent or unreadable."""
    path = Path(directory) / STAGE_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable stage record %s: %s", path, e)
        return None
    return record if isinstance(record, dict) else None


def write_stage_record(directory, stage: str, fingerprint: str, wall_time_s: float, metrics: Mapping) -> dict:
    """Write ``stage.json`` atomically; returns the record."""
    record = {"stage": str(stage), "fingerprint": str(fingerprint), "wall_time_s": round(float(wall_time_s), 3),
              "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "metrics": plain(dict(metrics))}
    write_json_atomic(Path(directory) / STAGE_RECORD, record, sort_keys=True, default=str)
    return record


def clear_stage_record(directory) -> None:
    """Remove ``stage.json`` (before a stage (re)runs, so a killed run never looks finished)."""
    (Path(directory) / STAGE_RECORD).unlink(missing_ok=True)


def is_up_to_date(directory, fingerprint: str) -> bool:
    """Whether the folder holds a finished stage with this fingerprint."""
    record = read_stage_record(directory)
    return record is not None and record.get("fingerprint") == fingerprint


def require_finished(cfg: DictConfig, stage: str) -> tuple[Path, dict]:
    """(folder, stage record) of a finished earlier stage; a clear error when it has not run."""
    folder = stage_folder(cfg, stage)
    record = read_stage_record(folder)
    if record is None:
        raise FileNotFoundError(f"{folder} holds no finished {stage} stage (no stage.json): run "
                                f"`python train.py stage={stage}` first (same data, teacher and work_dir), "
                                f"or `experiment=pipeline` to run every stage in order")
    return folder, record


# ------------------------------------------------------------------------------------ resuming
def resume_checkpoint(out_dir: Path, fingerprint: str) -> str | None:
    """``last.ckpt`` of a killed run of the same stage fingerprint (to resume from), else None; the
    checkpoints of another fingerprint are removed. Records the fingerprint being trained."""
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


# ----------------------------------------------------------------------------------- the lifecycle
class StageRun:
    """One run of a stage (see the module docstring).

    cfg:          the composed config (``cfg.seed``, ``cfg.stage.work_dir`` for teacher stages)
    name:         the stage's name (``conf/stage/<name>.yaml``)
    out:          its folder: a folder name under ``stage.work_dir``, or a path (the student's run dir)
    config:       what its output depends on (e.g. :func:`fingerprint_config`)
    inputs:       the fingerprints of its inputs (earlier stages, the dataset)
    """

    def __init__(self, cfg: DictConfig, name: str, out: str | Path, config: Any, inputs: Sequence[str] = ()):
        self.cfg, self.name = cfg, str(name)
        self.out = Path(out) if isinstance(out, Path) else stage_folder(cfg, str(out))
        self.fingerprint = stage_fingerprint(config, inputs)
        self.started = time.time()

    def reused(self, **extra: Any) -> dict | None:
        """The recorded metrics plus ``extra`` and ``reused: True`` when the folder holds a finished
        run of this fingerprint, else None."""
        if not is_up_to_date(self.out, self.fingerprint):
            return None
        log.info("%s: %s is up to date (fingerprint %s...): reusing it", self.name, self.out, self.fingerprint[:12])
        return {**read_stage_record(self.out)["metrics"], **extra, "reused": True}

    def seed(self) -> int:
        """Seed every generator (Python, numpy, torch, dataloader workers) with ``cfg.seed``."""
        return L.seed_everything(int(self.cfg.seed), workers=True)

    def start(self, *, resume: bool = False, seed: bool = True) -> str | None:
        """Clear the record, seed, and (``resume``) return the ``last.ckpt`` of a killed run of this
        fingerprint (None when there is none)."""
        clear_stage_record(self.out)
        ckpt = resume_checkpoint(self.out, self.fingerprint) if resume else None
        if seed:
            self.seed()
        return ckpt

    def record(self, metrics: Mapping) -> dict:
        """Write ``stage.json`` (the stage has finished)."""
        return write_stage_record(self.out, self.name, self.fingerprint, time.time() - self.started, metrics)

    def finish(self, metrics: Mapping, *, record: bool = True, **extra: Any) -> dict:
        """Record (unless ``record=False``: another rank did) and return ``{**metrics, **extra, "reused": False}``."""
        if record:
            self.record(metrics)
        return {**metrics, **extra, "reused": False}


# ------------------------------------------------------------------------------------ trainer parts
def instantiate_group(cfg: DictConfig | None) -> list:
    """A group of ``_target_`` nodes (callbacks, loggers) -> objects; null entries are skipped."""
    if not cfg:
        return []
    return [instantiate(node) for node in cfg.values() if node is not None and "_target_" in node]


def without_logger_callbacks(callbacks: list, loggers: list) -> list:
    """Drop callbacks that need a logger (LearningRateMonitor) when there is none (logger=none)."""
    return callbacks if loggers else [c for c in callbacks if not isinstance(c, LearningRateMonitor)]


# ------------------------------------------------------------------------------------- row choice
def select_rows(frame, splits: dict, names: str | Sequence[str], max_pairs: int | None, seed: int, *,
                labelled_only: bool = False) -> np.ndarray:
    """Positions of the pairs of the named splits (``"all"`` = every pair), in row order; with
    ``labelled_only`` the labelled ones only; with ``max_pairs``, a seeded random subset (the subset
    for a larger cap contains the one for a smaller cap)."""
    if isinstance(names, str):
        if names != "all":
            raise ValueError(f"stage.splits must be a list of split names or 'all', got {names!r}")
        rows = np.arange(len(frame), dtype=np.int64)
    else:
        names = list(names)
        unknown = [s for s in names if s not in splits]
        if unknown or not names:
            raise ValueError(f"stage.splits: unknown or no split(s) {unknown or names}; choose from "
                             f"{sorted(splits)}" + ("" if labelled_only else " or 'all'"))
        rows = np.concatenate([np.asarray(splits[s], dtype=np.int64) for s in names])
    if labelled_only:
        rows = rows[frame["label"].to_numpy()[rows] >= 0]
    if max_pairs is not None and len(rows) > int(max_pairs):
        rows = rows[np.random.default_rng(seed).permutation(len(rows))[:int(max_pairs)]]
    return np.sort(rows)


__all__ = ["StageRun", "stage_folder", "stage_fingerprint", "fingerprint_config", "read_stage_record",
           "write_stage_record", "clear_stage_record", "is_up_to_date", "require_finished", "resume_checkpoint",
           "finish_training", "select_rows", "instantiate_group", "without_logger_callbacks", "STAGE_RECORD", "STAGE_FOLDERS", "CHECKPOINT_FOLDER"]
