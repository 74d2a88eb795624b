"""Stages: each is one Hydra-composed, resumable run of ``train.py`` (``stage=<name>``)."""
from __future__ import annotations

from typing import Callable

from omegaconf import DictConfig


def get_stage(name: str) -> Callable[[DictConfig], dict]:
    """The function that runs stage ``name`` on a composed config and returns its metrics."""
    if name == "student":
        from lrkd.stages.student import run_student

        return run_student
    raise ValueError(f"unknown stage {name!r}; known stages: student")
