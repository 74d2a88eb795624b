"""How the student and teacher modules build their optimizer and learning-rate schedule.

Both come from config as partials (``conf/optimizer/*.yaml``, ``conf/scheduler/*.yaml``, as
lightning-hydra-template does): the optimizer is called with the module's parameter groups, the
schedule with ``(optimizer, total_steps)``. :func:`configure` is what ``configure_optimizers``
returns:

- parameter groups: biases, norms and other 1-d parameters take no weight decay; a module may
  give some parameters their own learning rate (the student's heads: ``head_lr``);
- under DeepSpeed's ZeRO optimizer offload, AdamW becomes DeepSpeed's ``DeepSpeedCPUAdam`` with
  the same update (DeepSpeed refuses a GPU optimizer over offloaded states);
- the schedules are transformers' warm-up schedules (``get_linear_schedule_with_warmup`` ...)
  with the warm-up given as a fraction of the optimizer steps (``warmup_ratio``).

Checkpoints written before the optimizer group (``{lr, head_lr, weight_decay, warmup_ratio, betas,
eps}``, no ``_target_``) and the teacher stages' ``stage.lr``/``stage.warmup_ratio`` read as
AdamW with a linear warm-up (:func:`as_partials`).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from hydra.utils import instantiate
from transformers import (get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup,
                          get_linear_schedule_with_warmup)

LRKD_OPTIMIZER_KEYS = ("head_lr",)  # lrkd's keys of an optimizer config, not optimizer arguments
LEGACY_ADAMW_KEYS = ("lr", "weight_decay", "betas", "eps")


def offloads_optimizer(trainer) -> bool:
    """Whether ``trainer``'s strategy keeps the optimizer states in CPU memory (DeepSpeed ZeRO with
    ``offload_optimizer``, e.g. ``trainer=deepspeed_zero3_offload``)."""
    config = getattr(getattr(trainer, "strategy", None), "config", None)
    return isinstance(config, Mapping) and bool((config.get("zero_optimization") or {}).get("offload_optimizer"))


def no_weight_decay(name: str, parameter: torch.nn.Parameter) -> bool:
    """Biases, norms and other 1-d parameters take no weight decay."""
    return parameter.ndim < 2 or "norm" in name.lower()


def parameter_groups(named_parameters: Iterable[tuple[str, torch.nn.Parameter]], weight_decay: float,
                     lr_of: Callable[[str], float | None] = lambda name: None) -> list[dict]:
    """Trainable parameters in groups: one per (learning rate, decay or not). ``lr_of(name)`` gives
    a parameter's learning rate (None: the optimizer's)."""
    groups: dict[tuple[float | None, bool], list] = {}
    for name, p in named_parameters:
        if p.requires_grad:
            groups.setdefault((lr_of(name), no_weight_decay(name, p)), []).append(p)
    out = []
    for (lr, plain_group), params in groups.items():
        group = {"params": params, "weight_decay": 0.0 if plain_group else float(weight_decay)}
        if lr is not None:
            group["lr"] = float(lr)
        out.append(group)
    return out


# ------------------------------------------------------------------------------------ schedules
def _warmup_steps(warmup_ratio: float, total_steps: int) -> tuple[int, int]:
    total = max(int(total_steps), 1)
    return int(float(warmup_ratio) * total), total


def linear_warmup_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float = 0.1):
    """Linear warm-up over ``warmup_ratio`` of ``total_steps``, then linear decay to 0."""
    warmup, total = _warmup_steps(warmup_ratio, total_steps)
    return get_linear_schedule_with_warmup(optimizer, warmup, total)


def cosine_warmup_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float = 0.1):
    """Linear warm-up over ``warmup_ratio`` of ``total_steps``, then cosine decay to 0."""
    warmup, total = _warmup_steps(warmup_ratio, total_steps)
    return get_cosine_schedule_with_warmup(optimizer, warmup, total)


def constant_warmup_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float = 0.0):
    """Linear warm-up over ``warmup_ratio`` of ``total_steps``, then the optimizer's learning rate."""
    warmup, _ = _warmup_steps(warmup_ratio, total_steps)
    return get_constant_schedule_with_warmup(optimizer, warmup)


# ---------------------------------------------------------------------------------- from config
def as_partials(optimizer: Mapping | None, scheduler: Mapping | None = None,
                default_warmup_ratio: float = 0.1) -> tuple[dict, dict, dict]:
    """(optimizer partial config, scheduler partial config, lrkd's keys such as ``head_lr``) from
    an optimizer config with ``_target_``, or from the plain dict of the older layout."""
    optimizer = dict(optimizer or {})
    extra = {k: optimizer.pop(k) for k in LRKD_OPTIMIZER_KEYS if k in optimizer}
    if "_target_" not in optimizer:  # {lr, head_lr, weight_decay, warmup_ratio, betas, eps}
        warmup = optimizer.pop("warmup_ratio", default_warmup_ratio)
        unknown = sorted(set(optimizer) - set(LEGACY_ADAMW_KEYS))
        if unknown:
            raise ValueError(f"optimizer config: unknown keys {unknown} (give a _target_ for another optimizer)")
        optimizer = {"_target_": "torch.optim.AdamW", "_partial_": True, **optimizer}
        if "betas" in optimizer:
            optimizer["betas"] = tuple(optimizer["betas"])
        if scheduler is None:
            scheduler = {"_target_": "lrkd.lightning.optim.linear_warmup_schedule", "_partial_": True,
                         "warmup_ratio": float(warmup if warmup is not None else default_warmup_ratio)}
    if scheduler is None:
        scheduler = {"_target_": "lrkd.lightning.optim.linear_warmup_schedule", "_partial_": True,
                     "warmup_ratio": float(default_warmup_ratio)}
    optimizer["_partial_"] = True
    scheduler = {**dict(scheduler), "_partial_": True}
    return optimizer, scheduler, extra


def build_optimizer(module, factory: functools.partial, groups: list[dict]) -> torch.optim.Optimizer:
    """``factory(groups)``; under ZeRO optimizer offload an AdamW becomes ``DeepSpeedCPUAdam``.
    ``module``: the LightningModule (its trainer tells the strategy)."""
    if offloads_optimizer(getattr(module, "_trainer", None)):
        if factory.func is not torch.optim.AdamW:
            raise ValueError(f"DeepSpeed's optimizer offload runs AdamW only, not {factory.func.__name__}")
        from deepspeed.ops.adam import DeepSpeedCPUAdam  # the deepspeed extra

        return DeepSpeedCPUAdam(groups, adamw_mode=True, **factory.keywords)
    return factory(groups)


def configure(module, named_parameters: Iterable[tuple[str, torch.nn.Parameter]], optimizer: Mapping | None,
              scheduler: Mapping | None, total_steps: int, lr_of: Callable[[str, dict], float | None] | None = None,
              default_warmup_ratio: float = 0.1) -> dict[str, Any]:
    """What ``configure_optimizers`` returns: the optimizer over :func:`parameter_groups` and the
    schedule stepped every optimizer step. ``lr_of(name, lrkd_keys)``: a parameter's own learning
    rate (None: the optimizer's). Learning rates must be positive."""
    opt_cfg, sched_cfg, extra = as_partials(optimizer, scheduler, default_warmup_ratio)
    factory = instantiate(opt_cfg)
    lr = float(factory.keywords.get("lr", 1e-3))
    rates = [lr] + [float(v) for k, v in extra.items() if k.endswith("_lr") and v is not None]
    if not all(r > 0 for r in rates):
        raise ValueError(f"learning rates must be positive: lr={lr}, {extra}")
    groups = parameter_groups(named_parameters, float(factory.keywords.get("weight_decay", 0.0)),
                              (lambda name: lr_of(name, extra)) if lr_of is not None else (lambda name: None))
    opt = build_optimizer(module, factory, groups)
    schedule = instantiate(sched_cfg)(opt, total_steps=int(total_steps))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def total_training_steps(trainer) -> int:
    """Optimizer steps of the whole fit, for the LR schedule.

    Computed from the data module's ``num_train_batches`` (per process, before accumulation) rather
    than ``trainer.estimated_stepping_batches``: that property builds the train loader before a
    checkpoint is restored, and the loader must be built after the restore to resume mid-epoch at
    the right batch (:func:`lrkd.data.sampler.make_train_loader`). Falls back to the property when
    the data module has no such count (or under fast_dev_run / unbounded epochs)."""
    t = trainer
    if t.max_steps is not None and t.max_steps > 0:
        return int(t.max_steps)
    n = getattr(t.datamodule, "num_train_batches", None)
    if n is None or t.fast_dev_run or t.max_epochs is None or t.max_epochs < 0:
        return max(int(t.estimated_stepping_batches), 1)
    limit = t.limit_train_batches
    n = min(n, limit) if isinstance(limit, int) else int(n * float(limit))
    return max(1, math.ceil(n / t.accumulate_grad_batches) * t.max_epochs)


__all__ = ["total_training_steps", "configure", "as_partials", "build_optimizer", "parameter_groups", "no_weight_decay",
           "linear_warmup_schedule", "cosine_warmup_schedule", "constant_warmup_schedule", "offloads_optimizer"]
