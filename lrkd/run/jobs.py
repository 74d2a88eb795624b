"""Sweeps: failure-tolerant jobs and W&B run identity for Hydra multiruns.

- :func:`run_job_tolerantly` runs one job of ``train.py``. In a multirun (``-m``) a job that raises
  (a bad value, a NaN loss, out of memory) writes ``error.json`` into its job directory, logs the
  error, finishes its W&B run and returns ``None``: the sweep goes on, and the jobs that finished
  keep their ``metrics.json``. In a single run the error propagates (non-zero exit).
- :func:`run_identity` / :func:`apply_wandb_identity`: a job's W&B group is its sweep, its name the
  values of the swept keys (``extractor=mlp,seed=2``), its tags every override.
- :func:`log_test_extras`: the test confusion matrix and per-class F1 as W&B tables and charts.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

ERROR_FILE = "error.json"
METRICS_FILE = "metrics.json"
MULTIRUN_FILE = "multirun.yaml"     # Hydra's copy of the sweep's config, at the sweep dir's root
TRACEBACK_LINES = 40                # lines of the traceback kept in error.json (the tail)
WANDB_TAG_MAX = 64                  # W&B rejects longer tags
WANDB_GROUP_MAX = 128


# ----------------------------------------------------------------------------- the tolerant job
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
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / ERROR_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)
    return path


def run_job_tolerantly(stage: Callable[[DictConfig], dict], cfg: DictConfig) -> dict | None:
    """``stage(cfg)``; on an exception, record it in ``<cfg.paths.output_dir>/error.json``, finish
    W&B and free memory; then return ``None`` in a multirun (the sweep goes on) or re-raise in a
    single run. ``KeyboardInterrupt`` always stops (it is not an ``Exception``)."""
    try:
        return stage(cfg)
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
    """After a failed job: end its W&B run, free Python and CUDA memory for the next job."""
    finish_wandb()
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def finish_wandb() -> None:
    """End the W&B run of this job, if any, so the next job of a multirun starts its own."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


# ------------------------------------------------------------------------------ swept keys
def parse_override(line: str) -> tuple[str, str]:
    """One override line -> (key, value as written). ``+a.b=1`` -> ("a.b", "1"); ``~a`` ->
    ("a", "~"); ``extractor@x=mlp`` -> ("extractor@x", "mlp"). Uses Hydra's own grammar."""
    override = OverridesParser.create().parse_override(line)
    key = override.key_or_group if override.package is None else f"{override.key_or_group}@{override.package}"
    if override.is_delete():
        return key, "~"
    return key, override.get_value_element_as_str()


def parse_overrides(lines: Iterable[str]) -> dict[str, str]:
    """Override lines -> {key: value}, in order (a later line wins)."""
    return dict(parse_override(str(line)) for line in lines)


def declared_sweep_keys(master: DictConfig | Mapping | None) -> list[str]:
    """The keys a sweep's config declares as swept: ``hydra.sweeper.params`` and the command line's
    sweep overrides (``seed=1,2``, ``lr=interval(...)``), from ``multirun.yaml``'s config."""
    if master is None:
        return []

    params = OmegaConf.select(master, "hydra.sweeper.params", default=None) or {}
    keys = [str(k) for k in params]
    parser = OverridesParser.create()
    for line in OmegaConf.select(master, "hydra.overrides.task", default=None) or []:
        override = parser.parse_override(str(line))
        key = override.key_or_group
        if override.is_sweep_override() and key not in keys:
            keys.append(key)
    return keys


def load_multirun_config(sweep_dir: str | Path) -> DictConfig | None:
    """``<sweep_dir>/multirun.yaml`` (the config Hydra's sweeper saved before launching), or None."""
    path = Path(sweep_dir) / MULTIRUN_FILE
    return OmegaConf.load(path) if path.is_file() else None


# ------------------------------------------------------------------------------------- W&B
@dataclass(frozen=True)
class RunIdentity:
    """How a job shows in W&B. name: the swept keys' values (``extractor=mlp,seed=2``) or, outside
    a sweep, every override; group: ``<task_name>/<sweep dir name>`` in a multirun, else None;
    tags: every override ``key=value`` (cut to 64 characters)."""

    name: str | None
    group: str | None
    tags: tuple[str, ...]


def run_identity(hydra_cfg: DictConfig | None = None, task_name: str | None = None) -> RunIdentity:
    """The W&B identity of the current Hydra job (``hydra_cfg`` defaults to ``HydraConfig.get()``;
    ``task_name`` names the group, default Hydra's job name)."""
    if hydra_cfg is None:
        if not HydraConfig.initialized():
            return RunIdentity(None, None, ())
        hydra_cfg = HydraConfig.get()
    lines = [str(o) for o in hydra_cfg.overrides.task]
    overrides = parse_overrides(lines)
    tags = tuple(dict.fromkeys(line[:WANDB_TAG_MAX] for line in lines))
    name = str(hydra_cfg.job.get("override_dirname") or "") or str(hydra_cfg.job.name)
    group = None
    if hydra_cfg.mode == RunMode.MULTIRUN:
        sweep_dir = Path(str(hydra_cfg.sweep.dir))
        master = load_multirun_config(sweep_dir)
        swept = declared_sweep_keys(master) or [str(k) for k in (hydra_cfg.sweeper.get("params") or {})]
        picked = [f"{k}={overrides[k]}" for k in swept if k in overrides]
        if picked:
            name = ",".join(picked)
        group = f"{task_name or hydra_cfg.job.name}/{sweep_dir.name}"[-WANDB_GROUP_MAX:]
    return RunIdentity(name=name or None, group=group, tags=tags)


def is_wandb_node(node: Any) -> bool:
    return isinstance(node, (DictConfig, dict)) and str(node.get("_target_", "")).endswith("WandbLogger")


def apply_wandb_identity(cfg: DictConfig, identity: RunIdentity | None = None) -> None:
    """Fill ``name``, ``group`` and ``tags`` of every WandbLogger node of ``cfg.logger`` that leaves
    them unset (null / empty), from :func:`run_identity`; values set in the config are kept."""
    nodes = [n for n in (cfg.get("logger") or {}).values() if is_wandb_node(n)]
    if not nodes:
        return
    identity = identity or run_identity(task_name=cfg.get("task_name"))
    for node in nodes:
        if node.get("name") is None:
            node.name = identity.name
        if node.get("group") is None:
            node.group = identity.group
        if not node.get("tags"):
            node.tags = list(identity.tags)


def log_test_extras(loggers: Sequence, confusion: Any, metrics: Mapping[str, Any],
                    label_names: Sequence[str], prefix: str = "test/") -> None:
    """Log to every WandbLogger: the confusion matrix ``confusion`` ([C, C] counts, rows = gold,
    columns = predicted, in ``label_names`` order) as ``<prefix>confusion_matrix`` (W&B's confusion
    matrix chart over a table Actual/Predicted/nPredictions), and the per-class F1 read from
    ``metrics[<prefix>f1/<name>]`` as ``<prefix>per_class_f1`` (a bar chart over a table grade/f1)."""
    from lightning.pytorch.loggers import WandbLogger

    targets = [lg for lg in loggers if isinstance(lg, WandbLogger)]
    if not targets:
        return
    import wandb

    names = [str(n) for n in label_names]
    payload = {}
    if confusion is not None:
        counts = confusion.tolist() if hasattr(confusion, "tolist") else list(confusion)
        if len(counts) != len(names) or any(len(row) != len(names) for row in counts):
            raise ValueError(f"confusion matrix is {len(counts)}x{len(counts[0]) if counts else 0}, "
                             f"expected {len(names)}x{len(names)} for grades {names}")
        table = wandb.Table(columns=["Actual", "Predicted", "nPredictions"],
                            data=[[names[i], names[j], int(counts[i][j])]
                                  for i in range(len(names)) for j in range(len(names))])
        payload[f"{prefix}confusion_matrix"] = wandb.plot_table(
            "wandb/confusion_matrix/v1", table,
            {"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "nPredictions"},
            {"title": f"{prefix}confusion matrix (rows gold, columns predicted)"})
    f1 = [[n, float(metrics[f"{prefix}f1/{n}"])] for n in names if f"{prefix}f1/{n}" in metrics]
    if f1:
        payload[f"{prefix}per_class_f1"] = wandb.plot.bar(wandb.Table(columns=["grade", "f1"], data=f1),
                                                          "grade", "f1", title=f"{prefix}per-class F1")
    for lg in targets:
        lg.experiment.log(payload)
