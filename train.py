"""lrkd's one entry point: ``python train.py [stage=student] [group=option ...] [-m for a sweep]``.

Composes ``conf/train.yaml`` with Hydra, runs the selected stage, and returns the metric that
``hparams_search`` optimises (``optimized_metric``). In a multirun, a job that fails writes
``error.json`` into its job directory and returns None, and the sweep goes on (``lrkd.sweep``).
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

import lrkd  # noqa: F401  (registers the config resolvers)
from lrkd.stages import get_stage
from lrkd.sweep import run_job_tolerantly


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    result = run_job_tolerantly(lambda c: get_stage(c.stage)(c), cfg)
    return None if result is None else result.get("optimized_metric")


if __name__ == "__main__":
    main()
