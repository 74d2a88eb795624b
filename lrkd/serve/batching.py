"""Dynamic batching for the HTTP server (:mod:`lrkd.serve.app`): the pairs of concurrent requests
are scored together by one worker thread.

A request hands its pairs, already tokenized, to :meth:`DynamicBatcher.score` and awaits their
class probabilities. The worker takes pairs from the queue, first come first served (a request's
pairs may be split across windows), up to ``max_batch_pairs``; when fewer are waiting it waits at
most ``max_wait_ms`` after the oldest one arrived for more. The window's pairs are sorted by length
(length buckets) and cut into model batches of at most ``max_batch_pairs`` pairs and
``max_batch_tokens`` padded tokens (pairs x the batch's longest pair), each right-padded to its own
longest pair, so a short pair never pays for a long one's padding. Padding does not change a
pair's scores (the attention mask is an input), so a pair scores the same in any batch.

A batch whose scoring raises is scored again one request at a time, so only the requests whose
own pairs fail get the error (:class:`ScoringError`); the worker goes on. :meth:`stop` scores what
is queued, then ends the thread.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)


class ScoringError(RuntimeError):
    """The scorer failed on a request's pairs (the server answers 500 and goes on)."""


class Overloaded(RuntimeError):
    """More pairs are queued than the batcher accepts (the server answers 503)."""


@dataclass(frozen=True)
class BatchLimits:
    """max_batch_pairs: pairs per model batch (and per window taken from the queue);
    max_batch_tokens: pairs x longest pair per model batch (a longer single pair still runs alone);
    max_wait_ms: how long the oldest waiting pair may wait for others before its window is scored;
    max_queue_pairs: pairs waiting at most; a request that would pass it is refused (Overloaded)."""

    # Small model batches from a length-sorted window: on 2 shared cores ONNX Runtime scores MiniLM
    # pairs of ~100 tokens 30-45 % faster per pair in batches of 2-4 than of 20-32 (benchmarks/serve_load.py).
    max_batch_pairs: int = 32
    max_batch_tokens: int = 512
    max_wait_ms: float = 2.0
    max_queue_pairs: int = 100_000

    def __post_init__(self):
        if self.max_batch_pairs < 1 or self.max_batch_tokens < 1 or self.max_wait_ms < 0 or self.max_queue_pairs < 1:
            raise ValueError(f"batch limits must be positive: {self}")


@dataclass(eq=False)
class _Job:
    ids: Sequence[Sequence[int]]
    types: Sequence[Sequence[int]]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    arrived: float
    probs: np.ndarray | None = None
    taken: int = 0          # pairs handed to windows so far
    done: int = 0           # pairs scored so far
    failed: bool = False

    def settle(self, error: BaseException | None = None) -> None:
        def _set():
            if not self.future.done():
                if error is not None:
                    self.future.set_exception(error)
                else:
                    self.future.set_result(self.probs)
        self.loop.call_soon_threadsafe(_set)


@dataclass
class BatchStats:
    """What the worker reports per model batch (for /metrics)."""

    pairs: int
    tokens: int             # pairs x padded length
    seconds: float
    window_jobs: int = 1
    extra: dict = field(default_factory=dict)


def pad(rows: Sequence[Sequence[int]], value: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad int rows to the longest: (values [B, L] int64, mask [B, L] int64)."""
    width = max(len(r) for r in rows)
    values = np.full((len(rows), width), value, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        values[i, :len(r)] = r
        mask[i, :len(r)] = 1
    return values, mask


def length_batches(lengths: Sequence[int], max_pairs: int, max_tokens: int) -> list[list[int]]:
    """Positions of ``lengths`` sorted by length and cut into batches of at most ``max_pairs`` pairs
    and ``max_tokens`` padded tokens (a pair longer than ``max_tokens`` alone)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:  # ascending: the newest pair is the batch's longest
        if current and (len(current) + 1 > max_pairs or (len(current) + 1) * lengths[i] > max_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


class DynamicBatcher:
    """Scores the tokenized pairs of concurrent requests together (see the module docstring).

    scorer:   (input_ids, attention_mask, token_type_ids) [B, L] int64 -> probabilities [B, C]
    pad_id:   the tokenizer's pad id
    on_batch: called with a :class:`BatchStats` after each model batch (in the worker thread)
    """

    def __init__(self, scorer: Callable[..., np.ndarray], pad_id: int, limits: BatchLimits = BatchLimits(),
                 on_batch: Callable[[BatchStats], None] | None = None):
        self.scorer = scorer
        self.pad_id = int(pad_id)
        self.limits = limits
        self.on_batch = on_batch
        self._queue: collections.deque[_Job] = collections.deque()
        self._queued_pairs = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------------------- lifecycle
    def start(self) -> "DynamicBatcher":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="lrkd-batcher", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Score what is queued, then end the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def queued_pairs(self) -> int:
        return self._queued_pairs

    # ------------------------------------------------------------------------------- submit
    async def score(self, ids: Sequence[Sequence[int]], types: Sequence[Sequence[int]]) -> np.ndarray:
        """Class probabilities [n, C] of the n tokenized pairs (ids, token types)."""
        if len(ids) == 0:
            raise ValueError("no pairs to score")
        loop = asyncio.get_running_loop()
        job = _Job(ids, types, loop, loop.create_future(), time.monotonic())
        with self._cond:
            if self._stopping or self._thread is None:
                raise RuntimeError("the batcher is not running")
            if self._queued_pairs + len(ids) > self.limits.max_queue_pairs and self._queued_pairs:
                raise Overloaded(f"{self._queued_pairs} pairs are waiting (limit {self.limits.max_queue_pairs})")
            self._queue.append(job)
            self._queued_pairs += len(ids)
            self._cond.notify()
        return await job.future

    # ------------------------------------------------------------------------------- worker
    def _take_window(self) -> list[tuple[_Job, int, int]] | None:
        """(job, start, stop) slices of up to max_batch_pairs queued pairs, oldest first; None when stopped and empty."""
        limit = self.limits.max_batch_pairs
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            deadline = self._queue[0].arrived + self.limits.max_wait_ms / 1000.0
            while self._queued_pairs < limit and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            window, room = [], limit
            while self._queue and room > 0:
                job = self._queue[0]
                n = min(room, len(job.ids) - job.taken)
                window.append((job, job.taken, job.taken + n))
                job.taken += n
                room -= n
                self._queued_pairs -= n
                if job.taken == len(job.ids):
                    self._queue.popleft()
            return window

    def _run(self) -> None:
        while (window := self._take_window()) is not None:
            try:
                self._score_window(window)
            except BaseException as e:  # never let the worker die: fail the window's requests
                log.exception("batcher: unexpected error")
                for job, _, _ in window:
                    if not job.failed:
                        job.failed = True
                        job.settle(ScoringError(f"{type(e).__name__}: {e}"))

    def _score_window(self, window: list[tuple[_Job, int, int]]) -> None:
        pairs = [(job, i) for job, start, stop in window if not job.failed for i in range(start, stop)]
        lengths = [len(job.ids[i]) for job, i in pairs]
        for batch in length_batches(lengths, self.limits.max_batch_pairs, self.limits.max_batch_tokens):
            members = [pairs[k] for k in batch]
            members = [(job, i) for job, i in members if not job.failed]
            if not members:
                continue
            try:
                self._score(members, len({id(job) for job, _ in members}))
            except Exception as e:
                jobs = list(dict.fromkeys(job for job, _ in members))
                if len(jobs) == 1:
                    self._fail(jobs[0], e)
                    continue
                for job in jobs:  # one request at a time: only the failing ones get the error
                    try:
                        self._score([(j, i) for j, i in members if j is job], 1)
                    except Exception as e1:
                        self._fail(job, e1)

    def _fail(self, job: _Job, error: Exception) -> None:
        log.error("scoring failed: %s: %s", type(error).__name__, error)
        job.failed = True
        job.settle(ScoringError(f"{type(error).__name__}: {error}"))

    def _score(self, members: list[tuple[_Job, int]], n_jobs: int) -> None:
        t0 = time.perf_counter()
        input_ids, mask = pad([job.ids[i] for job, i in members], self.pad_id)
        token_types, _ = pad([job.types[i] for job, i in members], 0)
        probs = np.asarray(self.scorer(input_ids, mask, token_types), dtype=np.float32)
        if probs.shape[0] != len(members) or not np.isfinite(probs).all():
            raise ValueError(f"the scorer returned {probs.shape} {'non-finite ' if not np.isfinite(probs).all() else ''}"
                             f"probabilities for {len(members)} pairs")
        seconds = time.perf_counter() - t0
        for (job, i), p in zip(members, probs):
            if job.probs is None:
                job.probs = np.empty((len(job.ids), probs.shape[1]), dtype=np.float32)
            job.probs[i] = p
            job.done += 1
            if job.done == len(job.ids):
                job.settle()
        if self.on_batch is not None:
            self.on_batch(BatchStats(pairs=len(members), tokens=int(input_ids.size), seconds=seconds,
                                     window_jobs=n_jobs))


__all__ = ["BatchLimits", "BatchStats", "DynamicBatcher", "ScoringError", "Overloaded", "length_batches", "pad"]
