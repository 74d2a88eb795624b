"""The Hydra application behind ``python train.py`` and ``lrkd train``: composes ``conf/train.yaml``,
runs the selected stage, and returns the metric that ``hparams_search`` optimises
(``optimized_metric``). In a multirun, a job that fails writes ``error.json`` into its job
directory and returns None, and the sweep goes on (``lrkd.run.jobs``).

It runs as ``python train.py ...`` (the documented entry point), ``python -m lrkd.train ...`` or
``lrkd train ...``; DDP and DeepSpeed re-launch each rank the same way.
"""
from __future__ import annotations

import logging
import warnings

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from lrkd.run.resolvers import ROOT_DIR
from lrkd.stages import get_stage
from lrkd.run.jobs import in_multirun, run_job_tolerantly

CONFIG_DIR = str(ROOT_DIR / "conf")
log = logging.getLogger(__name__)


class SweepNotRunWarning(UserWarning):
    """The composed config defines a sweep (``hydra.sweeper.params``) but runs as one job (no ``-m``)."""


def warn_unswept(sweep_params) -> str | None:
    """A warning when the config declares sweep parameters (an experiment or an hparams_search) but
    the run is single: Hydra then runs one job with the defaults, silently. Returns the message."""
    if not sweep_params or in_multirun():
        return None
    message = (f"this config defines a sweep over {sorted(sweep_params)} but runs as one job with their "
               f"defaults: add -m to run the sweep (python train.py -m ...)")
    log.warning(message)
    warnings.warn(message, SweepNotRunWarning, stacklevel=2)
    return message


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    if HydraConfig.initialized() and not in_multirun():
        params = HydraConfig.get().sweeper.get("params")
        warn_unswept(OmegaConf.to_container(params) if OmegaConf.is_config(params) else dict(params or {}))
    result = run_job_tolerantly(lambda c: get_stage(c.stage)(c), cfg)
    return None if result is None else result.get("optimized_metric")


if __name__ == "__main__":
    main()
