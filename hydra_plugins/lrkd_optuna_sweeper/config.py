"""The sweeper's config (``hydra/sweeper=lrkd_optuna``), registered in Hydra's ConfigStore."""

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from hydra.core.config_store import ConfigStore


def _default_sampler() -> Dict[str, Any]:
    return {"_target_": "optuna.samplers.TPESampler", "seed": 1234}


@dataclass
class LrkdOptunaSweeperConf:
    """direction: "maximize" | "minimize", or a list of them (multi-objective; the task then
                  returns one value per direction).
    study_name:   the Optuna study's name (default: the task name).
    storage:      null (in memory) or an Optuna storage URL, e.g. ``sqlite:///optuna.db``; a
                  stored study with the same name is continued (``load_if_exists``).
    n_trials:     trials to run in this invocation.
    n_jobs:       trials asked at once and handed to the launcher as one batch (parallel only with
                  a parallel launcher).
    sampler:      an Optuna sampler (``_target_`` node); seeded by default, so every process that
                  builds it proposes the same trials.
    params:       {config key: Hydra sweep string}, the search space; plain values are fixed.
    search:       null, or a ``_target_`` node of search hooks (lrkd.search.study.ArchitectureSearch:
                  latency table, budget, latency objective, report; see optuna_sweeper.py).
    """

    _target_: str = "hydra_plugins.lrkd_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    direction: Any = "maximize"
    study_name: Optional[str] = None
    storage: Optional[str] = None
    load_if_exists: bool = True
    n_trials: int = 20
    n_jobs: int = 1
    sampler: Any = field(default_factory=_default_sampler)
    params: Optional[Dict[str, str]] = None
    search: Any = None


ConfigStore.instance().store(group="hydra/sweeper", name="lrkd_optuna", node=LrkdOptunaSweeperConf,
                             provider="lrkd")
