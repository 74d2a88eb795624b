"""``data.sampler: query_groups``: training batches made of whole queries, for ranking losses.

A ranking term (``rank_kd``, :mod:`lrkd.losses.rank`) compares the candidates of one query, so a
batch must hold several items of each of its queries. The train rows are cut into *groups*: the
rows of one query (in a seeded order), in chunks of at most ``items_per_query`` rows (``null``: the
whole query in one group). A batch is ``queries_per_batch`` groups, so it holds at most
``queries_per_batch * items_per_query`` rows (a query longer than ``items_per_query`` is spread over
several groups; two of them may share a batch, and their rows are then compared too).

With ``labelled_per_batch: k`` (null: off), each batch holds k groups of *labelled* queries (a query
with at least one gold grade) and ``queries_per_batch - k`` of the others, as semi-supervised
training mixes labelled and unlabelled batches: with gold grades on 10 % of the queries, a plain
batch of 2 queries holds no gold grade 81 % of the time, and ``ce``/``ordinal`` would see a fifth
of the gold signal the gold-only student sees. An epoch is then as long as the longer of the two
lists needs; the shorter one is cycled through (in this epoch's order). With no query of one kind,
batches are plain.

The order is a pure function of (seed, epoch): the rows within each query and the order of the
groups are drawn from one generator seeded by ``seed + epoch``, as in
:class:`~lrkd.data.sampler.EpochSeededSampler`. A run resumed mid-epoch skips exactly the batches
that the checkpointed run trained on (:func:`make_query_group_loader`), so it ends with the same
weights as an uninterrupted one. ``data.batch_size`` is not used by this sampler.

Several ranks (DDP, DeepSpeed) are not supported: :func:`make_query_group_loader` refuses them
with an error saying so.
"""
from __future__ import annotations

import itertools
import math
from typing import Mapping

import numpy as np
import torch

from lrkd.lightning.compat import batches_done_this_epoch
from lrkd.data.sampler import ResumableDataLoader

SAMPLERS = ("shuffle", "query_groups")
DEFAULT_QUERY_GROUPS = {"queries_per_batch": 2, "items_per_query": 16, "labelled_per_batch": None}


def sampler_options(sampler: str, options: Mapping | None) -> tuple[str, dict]:
    """(``data.sampler``, ``data.query_groups`` checked and completed: {queries_per_batch >= 1,
    items_per_query >= 2 or None, labelled_per_batch in [1, queries_per_batch) or None})."""
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
    if out["labelled_per_batch"] is not None:
        out["labelled_per_batch"] = int(out["labelled_per_batch"])
        if not 1 <= out["labelled_per_batch"] < out["queries_per_batch"]:
            raise ValueError(f"data.query_groups.labelled_per_batch must be in [1, queries_per_batch="
                             f"{out['queries_per_batch']}) or null, got {out['labelled_per_batch']}")
    return sampler, out


def item_queries(dataset) -> np.ndarray:
    """[N] the query index of each item of a :class:`~lrkd.data.dataset.PairDataset` (item j is
    dataset row ``rows[j]``; ``query_index`` is per dataset row)."""
    return np.asarray(dataset.query_index)[np.asarray(dataset.rows)]


def item_labelled(dataset) -> np.ndarray:
    """[N] whether each item of a :class:`~lrkd.data.dataset.PairDataset` has a gold grade."""
    return np.asarray(dataset.labels)[np.asarray(dataset.rows)] >= 0


class QueryGroupOrder:
    """The per-epoch order of the groups (what Lightning calls ``set_epoch`` on, as
    ``batch_sampler.sampler``). ``query_index``: [N] the query of each dataset item; ``labelled``:
    optional [N] bool, whether the item has a gold grade (a query is labelled when one of its items is)."""

    def __init__(self, query_index, items_per_query: int | None, seed: int = 0, labelled=None):
        self.query_index = np.asarray(query_index, dtype=np.int64)
        self.items_per_query = items_per_query
        self.seed = int(seed)
        self.epoch = 0
        _, members = np.unique(self.query_index, return_inverse=True)
        order = np.argsort(members, kind="stable")      # item positions grouped by query, ascending
        self._queries = np.split(order, np.cumsum(np.bincount(members))[:-1]) if len(order) else []
        flags = np.zeros(len(self.query_index), bool) if labelled is None else np.asarray(labelled, bool)
        self._labelled = [bool(flags[rows].any()) for rows in self._queries]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _chunks(self, n: int) -> int:
        return 1 if self.items_per_query is None else max(1, math.ceil(n / self.items_per_query))

    @property
    def num_groups(self) -> int:
        return sum(self._chunks(len(rows)) for rows in self._queries)

    @property
    def num_labelled_groups(self) -> int:
        return sum(self._chunks(len(rows)) for rows, lab in zip(self._queries, self._labelled) if lab)

    def groups(self) -> list[tuple[list[int], bool]]:
        """This epoch's groups (item positions, whether their query is labelled), in batch order."""
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        groups = []
        for rows, labelled in zip(self._queries, self._labelled):
            rows = rows[torch.randperm(len(rows), generator=g).numpy()]
            groups += [(part.tolist(), labelled) for part in np.array_split(rows, self._chunks(len(rows)))]
        order = torch.randperm(len(groups), generator=g).tolist()
        return [groups[i] for i in order]


class QueryGroupBatchSampler:
    """Batches of ``queries_per_batch`` groups of :class:`QueryGroupOrder` (a ``batch_sampler``),
    ``labelled_per_batch`` of them labelled when set (module docstring); ``_skip`` batches of the
    first epoch iterated are skipped (a mid-epoch resume)."""

    def __init__(self, order: QueryGroupOrder, queries_per_batch: int, labelled_per_batch: int | None = None):
        self.sampler = order
        self.queries_per_batch = int(queries_per_batch)
        self.labelled_per_batch = labelled_per_batch
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

    def _mixed(self) -> tuple[int, int] | None:
        """(labelled, other) groups per batch when batches mix them, else None."""
        labelled = self.sampler.num_labelled_groups
        if not self.labelled_per_batch or labelled in (0, self.sampler.num_groups):
            return None
        return self.labelled_per_batch, self.queries_per_batch - self.labelled_per_batch

    def batches(self) -> list[list[int]]:
        groups, k, mixed = self.sampler.groups(), self.queries_per_batch, self._mixed()
        if mixed is None:
            return [[i for group, _ in groups[s:s + k] for i in group] for s in range(0, len(groups), k)]
        sides = [[g for g, lab in groups if lab], [g for g, lab in groups if not lab]]
        n = len(self)
        cycled = [list(itertools.islice(itertools.cycle(side), n * per)) for side, per in zip(sides, mixed)]
        return [[i for side, per in zip(cycled, mixed) for group in side[b * per:(b + 1) * per] for i in group]
                for b in range(n)]

    def __iter__(self):
        start, self._skip = self._skip, 0
        self.consumed = start
        for batch in self.batches()[start:]:
            self.consumed += 1
            yield batch

    def __len__(self) -> int:
        mixed = self._mixed()
        if mixed is None:
            return math.ceil(self.sampler.num_groups / self.queries_per_batch)
        labelled = self.sampler.num_labelled_groups
        return max(math.ceil(labelled / mixed[0]), math.ceil((self.sampler.num_groups - labelled) / mixed[1]))

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


def _batch_sampler(dataset, options: Mapping, seed: int) -> QueryGroupBatchSampler:
    order = QueryGroupOrder(item_queries(dataset), options["items_per_query"], seed=seed,
                            labelled=item_labelled(dataset) if options.get("labelled_per_batch") else None)
    return QueryGroupBatchSampler(order, options["queries_per_batch"], options.get("labelled_per_batch"))


def num_query_group_batches(dataset, options: Mapping) -> int:
    """Batches per epoch of the ``query_groups`` sampler over ``dataset`` (:func:`item_queries`)."""
    return len(_batch_sampler(dataset, options, seed=0))


def make_query_group_loader(dataset, *, options: Mapping, collate_fn, seed: int, trainer=None,
                            num_workers: int = 0, **kwargs) -> QueryGroupLoader:
    """The training loader of ``data.sampler=query_groups`` (module docstring) over ``dataset``
    (:func:`item_queries`). A ValueError under several ranks."""
    world = int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1
    if world > 1:
        raise ValueError(f"data.sampler=query_groups runs on one process only, but the trainer has {world} ranks "
                         "(DDP / DeepSpeed): use data.sampler=shuffle there, or trainer=cpu|gpu")
    batches = _batch_sampler(dataset, options, seed)
    if trainer is not None:
        batches.set_epoch(int(getattr(trainer, "current_epoch", 0) or 0))
        batches._skip = batches_done_this_epoch(trainer)
    return QueryGroupLoader(dataset, batch_sampler=batches, collate_fn=collate_fn, num_workers=num_workers,
                            persistent_workers=num_workers > 0, **kwargs)


__all__ = ["SAMPLERS", "DEFAULT_QUERY_GROUPS", "sampler_options", "item_queries", "QueryGroupOrder", "QueryGroupBatchSampler",
           "QueryGroupLoader", "num_query_group_batches", "make_query_group_loader"]
