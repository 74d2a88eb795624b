"""``data.sampler: query_groups``: training batches made of whole queries, for ranking losses.

A ranking term (``rank_kd``, :mod:`lrkd.losses.rank`) compares the candidates of one query, so a
batch must hold several items of each of its queries. The train rows are cut into *groups*: the
rows of one query (in a seeded order), in chunks of at most ``items_per_query`` rows (``null``: the
whole query in one group). A batch is ``queries_per_batch`` groups, so it holds at most
``queries_per_batch * items_per_query`` rows (a query longer than ``items_per_query`` is spread over
several groups; two of them may share a batch, and their rows are then compared too).

The order is a pure function of (seed, epoch): the rows within each query and the order of the
groups are drawn from one generator seeded by ``seed + epoch``, as in
:class:`~lrkd.data.sampler.EpochSeededSampler`. A run resumed mid-epoch skips exactly the batches
that the checkpointed run trained on (:func:`make_query_group_loader`), so it ends with the same
weights as an uninterrupted one. ``data.batch_size`` is not used by this sampler.

Several ranks (DDP, DeepSpeed) are not supported: :func:`make_query_group_loader` refuses them
with an error saying so.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch

from lrkd.compat import batches_done_this_epoch
from lrkd.data.sampler import ResumableDataLoader

SAMPLERS = ("shuffle", "query_groups")
DEFAULT_QUERY_GROUPS = {"queries_per_batch": 2, "items_per_query": 16}


def sampler_options(sampler: str, options: Mapping | None) -> tuple[str, dict]:
    """(``data.sampler``, ``data.query_groups`` checked and completed: {queries_per_batch >= 1,
    items_per_query >= 2 or None})."""
    if sampler not in SAMPLERS:
        raise ValueError(f"data.sampler must be one of {SAMPLERS}, got {sampler!r}")
    given = dict(options or {})
    unknown = set(given) - set(DEFAULT_QUERY_GROUPS)
    if unknown:
        raise ValueError(f"data.query_groups has unknown keys {sorted(unknown)}; expected {sorted(DEFAULT_QUERY_GROUPS)}")
    out = {**DEFAULT_QUERY_GROUPS, **given}
    out["queries_per_batch"] = int(out["queries_per_batch"])
    if out["queries_per_batch"] < 1:
        raise ValueError(f"data.query_groups.queries_per_batch must be >= 1, got {out['queries_per_batch']}")
    if out["items_per_query"] is not None:
        out["items_per_query"] = int(out["items_per_query"])
        if out["items_per_query"] < 2:
            raise ValueError("data.query_groups.items_per_query must be >= 2 (a ranking needs two items) or null, "
                             f"got {out['items_per_query']}")
    return sampler, out


def item_queries(dataset) -> np.ndarray:
    """[N] the query index of each item of a :class:`~lrkd.data.datamodule.PairDataset` (item j is
    dataset row ``rows[j]``; ``query_index`` is per dataset row)."""
    return np.asarray(dataset.query_index)[np.asarray(dataset.rows)]


class QueryGroupOrder:
    """The per-epoch order of the groups (what Lightning calls ``set_epoch`` on, as
    ``batch_sampler.sampler``). ``query_index``: [N] the query of each dataset item."""

    def __init__(self, query_index, items_per_query: int | None, seed: int = 0):
        self.query_index = np.asarray(query_index, dtype=np.int64)
        self.items_per_query = items_per_query
        self.seed = int(seed)
        self.epoch = 0
        _, members = np.unique(self.query_index, return_inverse=True)
        order = np.argsort(members, kind="stable")      # item positions grouped by query, ascending
        self._queries = np.split(order, np.cumsum(np.bincount(members))[:-1]) if len(order) else []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _chunks(self, n: int) -> int:
        return 1 if self.items_per_query is None else max(1, math.ceil(n / self.items_per_query))

    @property
    def num_groups(self) -> int:
        return sum(self._chunks(len(rows)) for rows in self._queries)

    def groups(self) -> list[list[int]]:
        """This epoch's groups (lists of item positions), in batch order."""
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        groups = []
        for rows in self._queries:
            rows = rows[torch.randperm(len(rows), generator=g).numpy()]
            groups += [part.tolist() for part in np.array_split(rows, self._chunks(len(rows)))]
        order = torch.randperm(len(groups), generator=g).tolist()
        return [groups[i] for i in order]


class QueryGroupBatchSampler:
    """Batches of ``queries_per_batch`` groups of :class:`QueryGroupOrder` (a ``batch_sampler``);
    ``_skip`` batches of the first epoch iterated are skipped (a mid-epoch resume)."""

    def __init__(self, order: QueryGroupOrder, queries_per_batch: int):
        self.sampler = order
        self.queries_per_batch = int(queries_per_batch)
        self._skip = 0
        self.consumed = 0

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    @property
    def seed(self) -> int:
        return self.sampler.seed

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def batches(self) -> list[list[int]]:
        groups, k = self.sampler.groups(), self.queries_per_batch
        return [[i for group in groups[s:s + k] for i in group] for s in range(0, len(groups), k)]

    def __iter__(self):
        start, self._skip = self._skip, 0
        self.consumed = start
        for batch in self.batches()[start:]:
            self.consumed += 1
            yield batch

    def __len__(self) -> int:
        return math.ceil(self.sampler.num_groups / self.queries_per_batch)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.set_epoch(int(state["epoch"]))
        self._skip = int(state["consumed"]) % max(len(self), 1)


class QueryGroupLoader(ResumableDataLoader):
    """The training DataLoader over a :class:`QueryGroupBatchSampler` (epoch and seed in its state)."""

    def state_dict(self) -> dict:
        return {"epoch": self.batch_sampler.epoch, "seed": self.batch_sampler.seed}

    def load_state_dict(self, state: dict) -> None:
        self.batch_sampler.set_epoch(int(state.get("epoch", 0)))


def num_query_group_batches(dataset, options: Mapping) -> int:
    """Batches per epoch of the ``query_groups`` sampler over ``dataset`` (:func:`item_queries`)."""
    order = QueryGroupOrder(item_queries(dataset), options["items_per_query"])
    return math.ceil(order.num_groups / options["queries_per_batch"])


def make_query_group_loader(dataset, *, options: Mapping, collate_fn, seed: int, trainer=None,
                            num_workers: int = 0, **kwargs) -> QueryGroupLoader:
    """The training loader of ``data.sampler=query_groups`` (module docstring) over ``dataset``
    (:func:`item_queries`). A ValueError under several ranks."""
    world = int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1
    if world > 1:
        raise ValueError(f"data.sampler=query_groups runs on one process only, but the trainer has {world} ranks "
                         "(DDP / DeepSpeed): use data.sampler=shuffle there, or trainer=cpu|gpu")
    batches = QueryGroupBatchSampler(QueryGroupOrder(item_queries(dataset), options["items_per_query"], seed=seed),
                                     options["queries_per_batch"])
    if trainer is not None:
        batches.set_epoch(int(getattr(trainer, "current_epoch", 0) or 0))
        batches._skip = batches_done_this_epoch(trainer)
    return QueryGroupLoader(dataset, batch_sampler=batches, collate_fn=collate_fn, num_workers=num_workers,
                            persistent_workers=num_workers > 0, **kwargs)


__all__ = ["SAMPLERS", "DEFAULT_QUERY_GROUPS", "sampler_options", "item_queries", "QueryGroupOrder", "QueryGroupBatchSampler",
           "QueryGroupLoader", "num_query_group_batches", "make_query_group_loader"]
