"""Several processes, one run: the rank helpers lrkd's stages share (docs/SCALE_OUT.md).

How processes come to exist, and what lrkd does about each:

- **Lightning launches them** from a trainer config (``trainer=ddp``, ``ddp_cpu``, ``deepspeed_*``):
  ``ddp_spawn`` / ``ddp_fork`` start the ranks inside ``trainer.fit`` and hand rank 0's results
  back to the calling process; plain ``ddp`` and DeepSpeed re-run the script for ranks > 0.
- **An external launcher** (``torchrun``, SLURM's ``srun``) starts every rank before Python runs:
  :func:`launched_externally`. Each rank runs ``train.py`` from the start.

Config resolvers (registered by :mod:`lrkd.run.resolvers`):

- ``${lrkd_ddp_strategy:}`` (:func:`ddp_strategy`): ``ddp`` where re-running the script is safe (a
  single Hydra run, or processes started by torchrun/SLURM), ``ddp_spawn`` elsewhere (a multirun,
  where re-running the script would re-run the sweep; pytest; a notebook).
- ``${lrkd_run_stamp:<strftime>}`` (:func:`run_stamp`): the name of a run directory. Under torchrun
  or SLURM every rank composes its own config, so a timestamp could differ between ranks; there the
  stamp is the launcher's job id, the same on every rank.

The annotation stage (no Lightning trainer) uses :func:`run_on_ranks` and :class:`Ranks`.

``import lrkd`` imports this module (for the resolvers), and serving must not load Lightning: torch,
Lightning, Hydra and DeepSpeed are imported inside the functions that use them.
"""
from __future__ import annotations

import csv
import datetime as _dt
import logging
import os
import pickle
from contextlib import contextmanager
from dataclasses import fields, is_dataclass, replace
from typing import Any, Callable, Iterator, Mapping

from omegaconf import OmegaConf

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------- who launched us
def env_world_size() -> int:
    """The world size a launcher put in the environment (``WORLD_SIZE``, else SLURM's
    ``SLURM_NTASKS``); 1 when neither is set."""
    for key in ("WORLD_SIZE", "SLURM_NTASKS"):
        value = os.environ.get(key, "")
        if value.isdigit():
            return max(int(value), 1)
    return 1


def launched_externally() -> bool:
    """True when this process is one of several ranks that something else started: torchrun,
    SLURM's ``srun`` (Lightning's own detection of both), or Lightning's re-run of the script for
    plain ``ddp``/DeepSpeed (its launcher sets ``LOCAL_RANK`` and ``WORLD_SIZE`` in every rank)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if TorchElasticEnvironment.detect() or SLURMEnvironment.detect() or "LOCAL_RANK" in os.environ:
        return env_world_size() > 1
    return False


def ddp_strategy() -> str:
    """The DDP strategy name for ``conf/trainer/ddp.yaml`` (see the module docstring)."""
    if launched_externally():
        return "ddp"
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.RUN:
            return "ddp"
    except Exception:  # pragma: no cover - Hydra is a dependency
        pass
    return "ddp_spawn"


def shared_run_id() -> str | None:
    """An id that every rank of one externally launched job shares: ``LRKD_RUN_ID`` if set, else
    torchrun's rendezvous id (``--rdzv-id``, or a fresh one with ``--standalone``), else SLURM's
    job and step ids. None for a process that no launcher started."""
    if os.environ.get("LRKD_RUN_ID"):
        return os.environ["LRKD_RUN_ID"]
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if run_id and run_id != "none":
        return f"torchrun-{run_id}"
    if os.environ.get("SLURM_JOB_ID") and launched_externally():  # srun, several tasks
        step = os.environ.get("SLURM_STEP_ID")
        return f"slurm-{os.environ['SLURM_JOB_ID']}" + (f".{step}" if step else "")
    return None


def run_stamp(fmt: str = "%Y-%m-%d_%H-%M-%S") -> str:
    """The current time as ``fmt``; under torchrun/SLURM the shared job id instead (the same on
    every rank, so all ranks write into one run directory)."""
    return shared_run_id() or _dt.datetime.now().strftime(fmt)


# ------------------------------------------------------------------------------------- the trainer
def strategy_name(trainer_cfg: Mapping | None) -> str:
    """The strategy of a trainer config as a short name: its string, ``deepspeed`` for a
    DeepSpeedStrategy node, ``auto`` when unset."""
    node = (trainer_cfg or {}).get("strategy", "auto")
    if node is None:
        return "auto"
    if isinstance(node, str):
        return node
    target = str(node.get("_target_", "")) if hasattr(node, "get") else ""
    return "deepspeed" if "DeepSpeed" in target else (target.rsplit(".", 1)[-1].lower() or "auto")


def requested_processes(trainer_cfg: Mapping | None) -> int:
    """How many processes a trainer config asks for (devices x num_nodes; ``auto``/-1 on GPUs
    counts the visible GPUs), or the launcher's world size when started externally."""
    if launched_externally():
        return env_world_size()
    cfg = trainer_cfg or {}
    devices, nodes = cfg.get("devices", 1), int(cfg.get("num_nodes", 1) or 1)
    accelerator = str(cfg.get("accelerator", "auto"))
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if devices in ("auto", -1, "-1", None):
        import torch

        n = torch.cuda.device_count() if accelerator in ("gpu", "cuda", "auto") else 1
        devices = max(n, 1)
    elif isinstance(devices, str):  # "0,1"
        devices = len([d for d in devices.split(",") if d.strip()])
    elif not isinstance(devices, int):  # a list of device ids
        devices = len(list(devices))
    return max(int(devices), 1) * nodes


def ranks_ran_elsewhere(trainer) -> bool:
    """True when ``trainer``'s fit/test ran in processes it spawned (``ddp_spawn``/``ddp_fork``):
    the calling process then holds only what Lightning hands back (the last weights,
    ``callback_metrics``, the best checkpoint's path)."""
    from lrkd.lightning.compat import MultiProcessingLauncher

    launcher = getattr(trainer.strategy, "launcher", None)
    return isinstance(launcher, MultiProcessingLauncher) and trainer.world_size > 1


def best_model_score(checkpoint_callback) -> float | None:
    """The monitored score of ``checkpoint_callback``'s best checkpoint. After a spawned fit
    Lightning hands back the path but not the score; it is then read from the checkpoint's own
    callback state (a file, since DeepSpeed does not spawn)."""
    if checkpoint_callback is None:
        return None
    if checkpoint_callback.best_model_score is not None:
        return float(checkpoint_callback.best_model_score)
    path = checkpoint_callback.best_model_path
    if not path or not os.path.isfile(path):
        return None
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True).get("callbacks", {})
    key = checkpoint_callback.state_key
    score = (state.get(key) or {}).get("best_model_score")
    return None if score is None else float(score)


def fitted_global_step(trainer, last_checkpoint: str | os.PathLike | None = None) -> int:
    """Optimizer steps of the fit that just ran. After a spawned fit the calling process's loops
    never ran (``trainer.global_step`` is 0); the step is then read from ``last_checkpoint`` (a
    ``last.ckpt`` file written at the end of the fit)."""
    if not ranks_ran_elsewhere(trainer) or last_checkpoint is None or not os.path.isfile(last_checkpoint):
        return int(trainer.global_step)
    import torch

    return int(torch.load(last_checkpoint, map_location="cpu", weights_only=True).get("global_step", 0))


def sync_loggers_after_spawned_fit(trainer) -> None:
    """Before a second spawned run of the same trainer (``trainer.test`` after ``trainer.fit``
    under ``ddp_spawn``/``ddp_fork``): the CSV logger's column list grew in the fit's processes
    only, and the test's processes, forked from this one, would rewrite ``metrics.csv`` with the
    test's columns alone (Lightning raises). Reload the columns from the file's header."""
    if not ranks_ran_elsewhere(trainer):
        return
    for logger in trainer.loggers:
        writer = getattr(logger, "_experiment", None)
        path = getattr(writer, "metrics_file_path", None)
        if path and os.path.isfile(path) and isinstance(getattr(writer, "metrics_keys", None), list):
            with open(path, newline="") as f:
                header = next(csv.reader(f), [])
            writer.metrics_keys = sorted(set(writer.metrics_keys) | set(header))


def is_zero3(trainer) -> bool:
    """Whether ``trainer`` partitions the parameters themselves (DeepSpeed ZeRO stage 3)."""
    config = getattr(trainer.strategy, "config", None)
    return isinstance(config, Mapping) and int((config.get("zero_optimization") or {}).get("stage", 0)) == 3


@contextmanager
def full_parameters(trainer, module) -> Iterator[None]:
    """Inside: every parameter of ``module`` whole on every rank, for saving after a fit. A no-op
    except under DeepSpeed ZeRO-3, where it gathers the partitions
    (``deepspeed.zero.GatheredParameters``; every rank must enter)."""
    if not is_zero3(trainer):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
        yield


def is_rank_zero() -> bool:
    """Rank 0 of the job (or a single process): Lightning's view of this process's global rank."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


# ---------------------------------------------------------------------- ranks outside a trainer
class Ranks:
    """This process's place among the ranks of a run, for work outside a Lightning trainer.

    One process: rank 0 of 1, every method a no-op. Several: the ranks of the initialized default
    process group; barriers and object exchange go through a gloo group with an effectively
    infinite timeout (Lightning's ``_InfiniteBarrier``), since ranks may finish their share of a
    long annotation hours apart."""

    def __init__(self, rank: int = 0, world_size: int = 1):
        self.rank, self.world_size = int(rank), int(world_size)
        self._group = None

    @classmethod
    def current(cls) -> "Ranks":
        """The ranks of the initialized default process group, or a single process."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            ranks = cls(dist.get_rank(), dist.get_world_size())
            ranks._group = dist.new_group(backend="gloo", timeout=_dt.timedelta(days=10_000))
            return ranks
        return cls()

    @property
    def is_zero(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, items):
        """This rank's share of ``items``: ``items[rank::world_size]``."""
        return items[self.rank::self.world_size] if self.distributed else items

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier(group=self._group)

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (on every rank)."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self._group)
        return out

    def from_zero(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        return self.gather(obj)[0]

    def sum(self, obj: Any) -> Any:
        """Add up a dataclass of counters over the ranks: int/float fields summed, dict fields
        merged by summing their values (e.g. :class:`lrkd.teacher.label.annotate.AnnotationStats`)."""
        if not self.distributed:
            return obj
        parts = self.gather(obj)
        if not is_dataclass(obj):
            return sum(parts)
        values = {}
        for f in fields(obj):
            items = [getattr(p, f.name) for p in parts]
            if isinstance(items[0], Mapping):
                merged: dict = {}
                for d in items:
                    for k, v in d.items():
                        merged[k] = merged.get(k, 0) + v
                values[f.name] = merged
            elif isinstance(items[0], (int, float)) and not isinstance(items[0], bool):
                values[f.name] = sum(items)
        return replace(obj, **values)


def _fabric_for(trainer_cfg: Mapping):
    """A Lightning Fabric with the trainer config's accelerator, devices, nodes and (DDP-family)
    strategy; DeepSpeed and other training-only strategies become ``ddp`` (inference only)."""
    from lightning.fabric import Fabric

    name = strategy_name(trainer_cfg)
    strategy = name if name.startswith("ddp") else "ddp"
    cfg = trainer_cfg or {}
    return Fabric(accelerator=cfg.get("accelerator", "auto"), devices=cfg.get("devices", "auto"),
                  num_nodes=int(cfg.get("num_nodes", 1) or 1), strategy=strategy, precision="32-true")


def _rank_main(fabric, function: Callable, cfg_bytes: bytes):
    cfg = pickle.loads(cfg_bytes)
    return function(cfg)


def run_on_ranks(cfg, function: Callable) -> Any:
    """``function(cfg)`` on every rank of the run that ``cfg.trainer`` describes, for a stage that
    runs outside a Lightning trainer and splits its own work with :meth:`Ranks.current`.

    - a process group already exists (ranks Lightning or a launcher started): run here, as-is;
    - started by torchrun/SLURM, or the trainer asks for several processes: Lightning Fabric
      launches or joins the ranks (``ddp_spawn``/``ddp_fork`` start them here and return rank 0's
      result; ``ddp`` re-runs the script); the function must be a module-level function;
    - otherwise one process: ``function(cfg)``, unchanged.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return function(cfg)
    trainer_cfg = cfg.get("trainer") or {}
    if requested_processes(trainer_cfg) <= 1:
        return function(cfg)
    plain_trainer = OmegaConf.to_container(trainer_cfg, resolve=True) if OmegaConf.is_config(trainer_cfg) \
        else dict(trainer_cfg)
    fabric = _fabric_for(plain_trainer)
    if fabric.world_size <= 1:
        return function(cfg)
    # resolved here (the Hydra job's interpolations resolve in this process only), pickled for spawn
    resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)) if OmegaConf.is_config(cfg) else cfg
    log.info("running on %d ranks (%s, %s)", fabric.world_size, type(fabric.strategy).__name__,
             plain_trainer.get("accelerator"))
    return fabric.launch(_rank_main, function, pickle.dumps(resolved))


__all__ = ["ddp_strategy", "run_stamp", "env_world_size", "launched_externally", "shared_run_id", "strategy_name",
           "requested_processes", "ranks_ran_elsewhere", "best_model_score", "fitted_global_step",
           "sync_loggers_after_spawned_fit", "is_zero3", "full_parameters", "is_rank_zero", "Ranks", "run_on_ranks"]
