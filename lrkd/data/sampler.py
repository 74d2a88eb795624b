"""A shuffling sampler whose order is a pure function of (seed, epoch), and that can resume mid-epoch.

Lightning calls ``set_epoch`` at the start of every epoch. The permutation does not depend on the
global RNG, so a run resumed from a checkpoint sees the same order as an uninterrupted run.

Under DDP / DeepSpeed (several ranks) the training loader uses :class:`DistributedEpochSeededSampler`
instead: the same permutation, split across ranks as torch's ``DistributedSampler`` splits it, with
the same mid-epoch resume on every rank. Being a ``DistributedSampler``, Lightning keeps it as it is.
"""
from __future__ import annotations

import torch
from torch.utils.data import DistributedSampler, Sampler

from lrkd.lightning.compat import UnrepeatedDistributedSampler, batches_done_this_epoch, uses_distributed_sampler


class _ResumesMidEpoch:
    """Mid-epoch resume shared by both samplers: iterate an epoch's ``order`` from the first index
    not yet consumed, and keep ``{"epoch", "consumed", "seed"}`` in the state dict. Needs
    ``epoch``, ``seed`` and ``num_samples`` (indices per epoch on this rank) from the sampler."""

    _skip = 0
    consumed = 0

    def _resume(self, order):
        start, self._skip = self._skip, 0
        self.consumed = start
        for i in order[start:]:
            self.consumed += 1
            yield i

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self._skip = int(state["consumed"]) % max(self.num_samples, 1)


class EpochSeededSampler(_ResumesMidEpoch, Sampler[int]):
    """Random permutation of ``range(num_samples)`` seeded by ``seed + epoch``.

    ``state_dict``/``load_state_dict`` record how many indices of the current epoch were consumed,
    so that a mid-epoch resume skips exactly those.
    """

    def __init__(self, num_samples: int, seed: int = 0, shuffle: bool = True):
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0
        self._skip = 0
        self.consumed = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def permutation(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_samples))
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        return torch.randperm(self.num_samples, generator=g).tolist()

    def __iter__(self):
        yield from self._resume(self.permutation())

    def __len__(self) -> int:
        return self.num_samples


class DistributedEpochSeededSampler(_ResumesMidEpoch, DistributedSampler):
    """This rank's share of the permutation of :class:`EpochSeededSampler` (the same order for
    ``seed + epoch``: torch's ``DistributedSampler`` draws it the same way), padded by repeating its
    start so that every rank gets ``ceil(N / world)`` indices (ranks must run the same number of
    training steps). A mid-epoch resume skips the indices this rank already consumed.
    """

    def __init__(self, num_samples: int, num_replicas: int, rank: int, seed: int = 0, shuffle: bool = True):
        super().__init__(range(int(num_samples)), num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=int(seed), drop_last=False)
        self._skip = 0
        self.consumed = 0

    def __iter__(self):
        yield from self._resume(list(super().__iter__()))


class ResumableDataLoader(torch.utils.data.DataLoader):
    """A DataLoader that Lightning treats as resumable (it has ``state_dict``/``load_state_dict``).

    The position inside the epoch is not taken from here but from the trainer's loop progress
    (see :func:`make_train_loader`); the state only records the sampler's epoch and seed.
    """

    def state_dict(self) -> dict:
        s = self.sampler
        return {"epoch": getattr(s, "epoch", 0), "seed": getattr(s, "seed", 0)}

    def load_state_dict(self, state: dict) -> None:
        if isinstance(self.sampler, (EpochSeededSampler, DistributedEpochSeededSampler)):
            self.sampler.set_epoch(int(state.get("epoch", 0)))


def make_train_loader(dataset, *, batch_size: int, collate_fn, seed: int, trainer=None,
                      num_workers: int = 0, **kwargs) -> ResumableDataLoader:
    """The training DataLoader: a seeded per-epoch shuffle that resumes mid-epoch exactly.

    On a mid-epoch resume, the first epoch's iteration skips the samples of the batches that the
    checkpointed run already trained on. Under several ranks (``trainer.world_size > 1`` with
    Lightning's distributed sampler on) each rank reads its share
    (:class:`DistributedEpochSeededSampler`) and skips its own consumed batches on a resume.
    """
    world = _distributed_world(trainer)
    if world is not None:
        sampler = DistributedEpochSeededSampler(len(dataset), num_replicas=world[1], rank=world[0], seed=seed)
    else:
        sampler = EpochSeededSampler(len(dataset), seed=seed)
    if trainer is not None:
        sampler.set_epoch(int(getattr(trainer, "current_epoch", 0) or 0))
        sampler._skip = batches_done_this_epoch(trainer) * batch_size
    return ResumableDataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn,
                               num_workers=num_workers, drop_last=False,
                               persistent_workers=num_workers > 0, **kwargs)


def _distributed_world(trainer) -> tuple[int, int] | None:
    """(rank, world size) when ``trainer`` trains on several ranks and lets Lightning shard the data
    (``use_distributed_sampler``); None otherwise."""
    if trainer is None:
        return None
    try:
        world = int(trainer.world_size)
        if world <= 1 or not uses_distributed_sampler(trainer):
            return None
        kwargs = trainer.distributed_sampler_kwargs or {}
        return int(kwargs.get("rank", trainer.global_rank)), int(kwargs.get("num_replicas", world))
    except (AttributeError, RuntimeError, TypeError):
        return None


def eval_sampler(dataset, trainer):
    """The validation/test/predict sampler: None (in order) on one process; under several ranks
    Lightning's ``UnrepeatedDistributedSampler``: rank r reads rows r, r + W, ... with no padding, so
    every row is evaluated exactly once and the metrics (reduced over ranks by torchmetrics) equal a
    single process's. (Lightning's default DistributedSampler pads the last ranks with repeated
    rows.) Ranks may then run one batch more or fewer; the eval steps hold no collective per batch."""
    world = _distributed_world(trainer)
    if world is None:
        return None
    return UnrepeatedDistributedSampler(dataset, num_replicas=world[1], rank=world[0], shuffle=False)
