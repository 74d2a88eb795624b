"""lrkd's one entry point: ``python train.py [stage=student] [group=option ...] [-m for a sweep]``.

Composes ``conf/train.yaml`` with Hydra, runs the selected stage, and returns the metric that
``hparams_search`` optimises (``optimized_metric``).
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

import lrkd  # noqa: F401  (registers the config resolvers)
from lrkd.stages import get_stage


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    result = get_stage(cfg.stage)(cfg)
    return result.get("optimized_metric")


if __name__ == "__main__":
    main()
