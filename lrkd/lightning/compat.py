"""The few places where lrkd reads Lightning internals that have no public API (pinned by the
tests; check them when upgrading Lightning). Nothing else in lrkd touches a private Lightning name.

- :func:`batches_done_this_epoch`: the fit loop's restored batch progress, for an exact
  mid-epoch resume of the seeded sampler (lrkd.data.sampler).
- :func:`uses_distributed_sampler`: whether the trainer lets Lightning shard the data.
- :class:`UnrepeatedDistributedSampler`: Lightning's evaluation sampler without padding.
- :class:`MultiProcessingLauncher`: the launcher of ``strategy=ddp_spawn`` (lrkd.lightning.distributed).
"""
from __future__ import annotations

from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher as MultiProcessingLauncher


def batches_done_this_epoch(trainer) -> int:
    """Training batches already completed in the current epoch when Lightning resumes mid-epoch
    from a checkpoint (0 otherwise). Read from the trainer's restored loop progress, so it is exact
    even though Lightning's fetcher pre-fetches a batch ahead of training."""
    if trainer is None:
        return 0
    try:
        loop = trainer.fit_loop
        if not loop.restarting:
            return 0
        # `processed`: batches whose training step ran (a checkpoint written in on_train_batch_end
        # already holds their update; `completed` is only incremented after that hook)
        return int(loop.epoch_loop.batch_progress.current.processed)
    except (AttributeError, RuntimeError):
        return 0


def uses_distributed_sampler(trainer) -> bool:
    """``Trainer(use_distributed_sampler=...)`` as the trainer resolved it (no public accessor)."""
    return bool(trainer._accelerator_connector.use_distributed_sampler)


__all__ = ["batches_done_this_epoch", "uses_distributed_sampler", "UnrepeatedDistributedSampler",
           "MultiProcessingLauncher"]


__all__ = ["batches_done_this_epoch", "uses_distributed_sampler", "UnrepeatedDistributedSampler",
           "MultiProcessingLauncher"]
