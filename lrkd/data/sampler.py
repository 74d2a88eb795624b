"""A shuffling sampler whose order is a pure function of (seed, epoch), and that can resume mid-epoch.

Lightning calls ``set_epoch`` at the start of every epoch. The permutation does not depend on the
global RNG, so a run resumed from a checkpoint sees the same order as an uninterrupted run.
"""
from __future__ import annotations

import torch
from torch.utils.data import Sampler


class EpochSeededSampler(Sampler[int]):
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
        order = self.permutation()
        start, self._skip = self._skip, 0
        self.consumed = start
        for i in order[start:]:
            self.consumed += 1
            yield i

    def __len__(self) -> int:
        return self.num_samples

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self._skip = int(state["consumed"]) % max(self.num_samples, 1)


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


class ResumableDataLoader(torch.utils.data.DataLoader):
    """A DataLoader that Lightning treats as resumable (it has ``state_dict``/``load_state_dict``).

    The position inside the epoch is not taken from here but from the trainer's loop progress
    (see :func:`make_train_loader`); the state only records the sampler's epoch and seed.
    """

    def state_dict(self) -> dict:
        s = self.sampler
        return {"epoch": getattr(s, "epoch", 0), "seed": getattr(s, "seed", 0)}

    def load_state_dict(self, state: dict) -> None:
        if isinstance(self.sampler, EpochSeededSampler):
            self.sampler.set_epoch(int(state.get("epoch", 0)))


def make_train_loader(dataset, *, batch_size: int, collate_fn, seed: int, trainer=None,
                      num_workers: int = 0, **kwargs) -> ResumableDataLoader:
    """The training DataLoader: a seeded per-epoch shuffle that resumes mid-epoch exactly.

    On a mid-epoch resume, the first epoch's iteration skips the samples of the batches that the
    checkpointed run already trained on. (Under DDP Lightning swaps in its DistributedSampler,
    which is also a pure function of seed and epoch; mid-epoch skipping then does not apply.)
    """
    sampler = EpochSeededSampler(len(dataset), seed=seed)
    if trainer is not None:
        sampler.set_epoch(int(getattr(trainer, "current_epoch", 0) or 0))
        sampler._skip = batches_done_this_epoch(trainer) * batch_size
    return ResumableDataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn,
                               num_workers=num_workers, drop_last=False,
                               persistent_workers=num_workers > 0, **kwargs)
