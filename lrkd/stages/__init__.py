"""Stages: each is one Hydra-composed, resumable run of ``train.py`` (``stage=<name>``).

A stage is the module ``lrkd.stages.<name>`` with a function ``run(cfg: DictConfig) -> dict``
returning its metrics; its config is ``conf/stage/<name>.yaml``.
"""
from __future__ import annotations

import importlib
import re
from typing import Callable

from omegaconf import DictConfig


def get_stage(stage) -> Callable[[DictConfig], dict]:
    """The ``run`` function of a stage, given its name or the ``stage`` config node (``.name``)."""
    name = stage if isinstance(stage, str) else stage.name
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", str(name)):
        raise ValueError(f"bad stage name {name!r}")
    try:
        module = importlib.import_module(f"lrkd.stages.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"lrkd.stages.{name}":
            raise ValueError(f"unknown stage {name!r}: there is no lrkd/stages/{name}.py") from None
        raise
    return module.run
