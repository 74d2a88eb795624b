"""The optimizer the student and teacher modules build: AdamW, on the device the strategy wants."""
from __future__ import annotations

from typing import Any, Mapping

import torch


def offloads_optimizer(trainer) -> bool:
    """Whether ``trainer``'s strategy keeps the optimizer states in CPU memory (DeepSpeed ZeRO with
    ``offload_optimizer``, e.g. ``trainer=deepspeed_zero3_offload``)."""
    config = getattr(getattr(trainer, "strategy", None), "config", None)
    return isinstance(config, Mapping) and bool((config.get("zero_optimization") or {}).get("offload_optimizer"))


def adamw(module, param_groups, **kwargs: Any) -> torch.optim.Optimizer:
    """``torch.optim.AdamW(param_groups, **kwargs)``; under DeepSpeed's optimizer offload
    DeepSpeed's ``DeepSpeedCPUAdam`` with the same AdamW update (DeepSpeed refuses a GPU optimizer
    over offloaded states). ``module`` is the LightningModule (its trainer tells the strategy)."""
    if offloads_optimizer(getattr(module, "_trainer", None)):
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(param_groups, adamw_mode=True, **kwargs)
    return torch.optim.AdamW(param_groups, **kwargs)
