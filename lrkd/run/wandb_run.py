"""A job's W&B run: its identity in a sweep, the test tables, and finishing it.

- :func:`run_identity` / :func:`apply_wandb_identity`: a job's W&B group is its sweep, its name the
  values of the swept keys (``extractor=mlp,seed=2``), its tags every override.
- :func:`log_test_extras`: the test confusion matrix and per-class F1 as W&B tables and charts.
- :func:`finish_wandb`: end the job's run (called by :func:`lrkd.run.jobs.run_stage` only).

``wandb`` and Lightning's ``WandbLogger`` are imported inside the functions that use them: ``lrkd
report`` reads overrides through this package and needs neither.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from lrkd.run.overrides import declared_sweep_keys, load_multirun_config, parse_overrides

WANDB_TAG_MAX = 64                  # W&B rejects longer tags
WANDB_GROUP_MAX = 128


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


def finish_wandb() -> None:
    """End the W&B run of this job, if any, so the next job of a multirun starts its own."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


__all__ = ["RunIdentity", "run_identity", "is_wandb_node", "apply_wandb_identity", "log_test_extras", "finish_wandb"]
