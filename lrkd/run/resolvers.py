"""OmegaConf resolvers used by ``conf/`` (registered on ``import lrkd``)."""
from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

from lrkd.lightning.distributed import ddp_strategy, run_stamp

ROOT_DIR = Path(__file__).resolve().parents[2]  # lrkd/run/resolvers.py -> the repository


def wandb_offline() -> bool:
    """W&B runs offline unless an API key is in the environment (the key itself is never read here)."""
    return not os.environ.get("WANDB_API_KEY")


def join(items, separator: str = "+") -> str:
    """``${lrkd_join:${perspectives}}`` -> ``user_intent+business_rules``: a list as one path-safe word."""
    return str(separator).join(map(str, items))


def register_resolvers() -> None:
    """``${lrkd_root:}``: the repository root (where conf/ and datasets/ live);
    ``${lrkd_join:<list>[,<separator>]}``: the items joined (default ``+``);
    ``${lrkd_wandb_offline:}``: true unless WANDB_API_KEY is set;
    ``${lrkd_ddp_strategy:}`` and ``${lrkd_run_stamp:<strftime>}``: see :mod:`lrkd.lightning.distributed`."""
    if not OmegaConf.has_resolver("lrkd_root"):
        OmegaConf.register_new_resolver("lrkd_root", lambda: str(ROOT_DIR))
    if not OmegaConf.has_resolver("lrkd_wandb_offline"):
        OmegaConf.register_new_resolver("lrkd_wandb_offline", wandb_offline)
    if not OmegaConf.has_resolver("lrkd_join"):
        OmegaConf.register_new_resolver("lrkd_join", join)
    if not OmegaConf.has_resolver("lrkd_ddp_strategy"):
        OmegaConf.register_new_resolver("lrkd_ddp_strategy", ddp_strategy)
    if not OmegaConf.has_resolver("lrkd_run_stamp"):
        # cached like Hydra's ${now:}: every use in one config is the same stamp
        OmegaConf.register_new_resolver("lrkd_run_stamp", run_stamp, use_cache=True)


__all__ = ["ROOT_DIR", "register_resolvers", "wandb_offline", "join"]
