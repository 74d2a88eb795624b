"""The failure-tolerant job of a Hydra multirun, and the one wrapper every stage runs in.

- :func:`run_stage` runs one stage and finishes its W&B run however it ends (train.py's job and
  each step of the pipeline go through it).
- :func:`run_job_tolerantly` runs one job of ``train.py``. In a multirun (``-m``) a job that raises
  (a bad value, a NaN loss, out of memory) writes ``error.json`` into its job directory, logs the
  error, finishes its W&B run and returns ``None``: the sweep goes on, and the jobs that finished
  keep their ``metrics.json``. In a single run the error propagates (non-zero exit).

Job directory files: ``metrics.json`` (a finished job, written by the stage), ``error.json`` (a
failed job: ``{"type", "message", "traceback", "overrides", "job_num", "output_dir", "time"}``).
"""
from __future__ import annotations

import datetime as _dt
import gc
import json
import logging
import sys
import traceback
from pathlib import Path
from typing import Callable, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from lrkd.run.wandb_run import finish_wandb
from lrkd.utils import write_text_atomic

log = logging.getLogger(__name__)

ERROR_FILE = "error.json"
METRICS_FILE = "metrics.json"
TRACEBACK_LINES = 40                # lines of the traceback kept in error.json (the tail)


def in_multirun() -> bool:
    """True inside a job of a Hydra multirun (``-m``, or ``hydra.mode=MULTIRUN``)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def job_overrides() -> list[str]:
    """This job's task overrides (``["extractor=mlp", "seed=2"]``); [] outside a Hydra job."""
    if not HydraConfig.initialized():
        return []
    return [str(o) for o in HydraConfig.get().overrides.task]


def write_error(output_dir: str | Path, exc: BaseException, overrides: Sequence[str] = (),
                job_num: int | None = None) -> Path:
    """Write ``error.json`` for ``exc`` into ``output_dir``; returns its path. The traceback is
    kept as its last :data:`TRACEBACK_LINES` lines."""
    lines = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip().splitlines()
    record = {"type": type(exc).__name__, "message": str(exc),
              "traceback": "\n".join(lines[-TRACEBACK_LINES:]), "overrides": list(overrides),
              "job_num": job_num, "output_dir": str(output_dir),
              "time": _dt.datetime.now().isoformat(timespec="seconds")}
    return write_text_atomic(Path(output_dir) / ERROR_FILE, json.dumps(record, indent=2))


def run_stage(stage: Callable[[DictConfig], dict], cfg: DictConfig) -> dict:
    """``stage(cfg)``, and its W&B run finished however it ends (the one place that does), so that
    the next stage of a pipeline, or the next job of a multirun, starts its own run."""
    try:
        return stage(cfg)
    finally:
        finish_wandb()


def run_job_tolerantly(stage: Callable[[DictConfig], dict], cfg: DictConfig) -> dict | None:
    """:func:`run_stage`; on an exception, record it in ``<cfg.paths.output_dir>/error.json`` and
    free memory; then return ``None`` in a multirun (the sweep goes on) or re-raise in a single run.
    ``KeyboardInterrupt`` always stops (it is not an ``Exception``)."""
    try:
        return run_stage(stage, cfg)
    except Exception as exc:
        job_num = HydraConfig.get().job.get("num") if HydraConfig.initialized() else None
        try:
            path = write_error(job_dir(cfg), exc, job_overrides(), job_num=job_num)
        except Exception as write_exc:  # never hide the job's own error behind this one
            path = f"nowhere ({type(write_exc).__name__}: {write_exc})"
        _release_resources()
        if not in_multirun():
            raise
        log.error("job %s failed (%s: %s); recorded in %s, the sweep goes on", job_num,
                  type(exc).__name__, exc, path, exc_info=exc)
        return None


def job_dir(cfg: DictConfig) -> Path:
    """The job's directory: ``cfg.paths.output_dir``, else Hydra's ``runtime.output_dir``, else the
    working directory (also when the config itself cannot be resolved)."""
    try:
        found = OmegaConf.select(cfg, "paths.output_dir", default=None)
        if found:
            return Path(str(found))
    except Exception:
        pass
    if HydraConfig.initialized():
        found = OmegaConf.select(HydraConfig.get(), "runtime.output_dir", default=None)
        if found:
            return Path(str(found))
    return Path.cwd()


def _release_resources() -> None:
    """After a failed job (its W&B run is finished by :func:`run_stage`): free Python and CUDA memory
    for the next job."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


__all__ = ["ERROR_FILE", "METRICS_FILE", "in_multirun", "job_overrides", "write_error", "run_stage",
           "run_job_tolerantly", "job_dir"]
