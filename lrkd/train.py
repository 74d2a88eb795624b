"""The Hydra application behind ``python train.py`` and ``lrkd train``: composes ``conf/train.yaml``,
runs the selected stage, and returns the metric that ``hparams_search`` optimises
(``optimized_metric``). In a multirun, a job that fails writes ``error.json`` into its job
directory and returns None, and the sweep goes on (``lrkd.sweep``).

It runs as ``python train.py ...`` (the documented entry point), ``python -m lrkd.train ...`` or
``lrkd train ...``; DDP and DeepSpeed re-launch each rank the same way.
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from lrkd.config import ROOT_DIR
from lrkd.stages import get_stage
from lrkd.sweep import run_job_tolerantly

CONFIG_DIR = str(ROOT_DIR / "conf")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    result = run_job_tolerantly(lambda c: get_stage(c.stage)(c), cfg)
    return None if result is None else result.get("optimized_metric")


if __name__ == "__main__":
    main()
