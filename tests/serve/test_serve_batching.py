"""The dynamic batcher: concurrent requests are scored together, within the pair and token limits,
in length buckets; every request gets its own pairs' scores; a failing batch fails only the
requests whose pairs fail; stop() scores what is queued."""
from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from lrkd.serve.batching import BatchLimits, DynamicBatcher, Overloaded, ScoringError, length_batches


class RecordingScorer:
    """probs [B, 2] = (s, 1 - s) with s a function of the unpadded ids; records each batch."""

    def __init__(self, fail_on: int | None = None, gate: threading.Event | None = None):
        self.batches: list[tuple[int, int, list[int]]] = []   # (pairs, padded length, lengths)
        self.fail_on = fail_on
        self.gate = gate

    def __call__(self, input_ids, attention_mask, token_type_ids):
        if self.gate is not None:
            self.gate.wait(5)
        lengths = attention_mask.sum(1).tolist()
        self.batches.append((len(input_ids), input_ids.shape[1], lengths))
        if self.fail_on is not None and (input_ids == self.fail_on).any():
            raise RuntimeError("bad token")
        s = np.array([(ids[:n].sum() % 97) / 97 for ids, n in zip(input_ids, lengths)], dtype=np.float32)
        return np.stack([s, 1 - s], axis=1)


def _pairs(seed: int, n: int, max_len: int = 30):
    rng = np.random.default_rng(seed)
    ids = [rng.integers(5, 1000, size=int(rng.integers(3, max_len))).tolist() for _ in range(n)]
    return ids, [[0] * len(x) for x in ids]


def _expected(ids):
    return np.array([(sum(x) % 97) / 97 for x in ids], dtype=np.float32)


def test_length_batches_sort_and_bound():
    lengths = [10, 3, 50, 7, 7, 20, 3]
    batches = length_batches(lengths, max_pairs=3, max_tokens=60)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 3 and (len(b) * max(lengths[i] for i in b) <= 60 or len(b) == 1)
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat)


def test_concurrent_requests_are_batched_together_and_get_their_own_scores():
    gate = threading.Event()
    scorer = RecordingScorer(gate=gate)
    batcher = DynamicBatcher(scorer, pad_id=0, limits=BatchLimits(max_batch_pairs=16, max_batch_tokens=10_000,
                                                                 max_wait_ms=50)).start()
    requests = [_pairs(seed, n) for seed, n in enumerate([5, 3, 7, 1, 6, 4])]

    async def main():
        tasks = [asyncio.create_task(batcher.score(ids, types)) for ids, types in requests]
        await asyncio.sleep(0.2)  # all queued while the first window waits on the gate
        gate.set()
        return await asyncio.gather(*tasks)

    try:
        results = asyncio.run(main())
    finally:
        batcher.stop()
    for (ids, _), probs in zip(requests, results):
        assert probs.shape == (len(ids), 2)
        np.testing.assert_allclose(probs[:, 0], _expected(ids), atol=1e-6)
    sizes = [b[0] for b in scorer.batches]
    assert sum(sizes) == 26 and max(sizes) == 16  # requests were merged, up to the pair limit
    for pairs, width, lengths in scorer.batches:
        assert width == max(lengths)      # padded to its own longest pair


def test_token_limit_and_length_buckets():
    scorer = RecordingScorer()
    batcher = DynamicBatcher(scorer, pad_id=0, limits=BatchLimits(max_batch_pairs=64, max_batch_tokens=100,
                                                                 max_wait_ms=0)).start()
    ids, types = _pairs(3, 40, max_len=40)
    try:
        probs = asyncio.run(batcher.score(ids, types))
    finally:
        batcher.stop()
    np.testing.assert_allclose(probs[:, 0], _expected(ids), atol=1e-6)
    for pairs, width, _ in scorer.batches:
        assert pairs * width <= 100 or pairs == 1


def test_a_failing_batch_fails_only_the_request_that_fails():
    gate = threading.Event()
    scorer = RecordingScorer(fail_on=999_999, gate=gate)
    batcher = DynamicBatcher(scorer, pad_id=0, limits=BatchLimits(max_batch_pairs=64, max_wait_ms=50)).start()
    good = [_pairs(s, 4) for s in range(3)]
    bad_ids, bad_types = _pairs(9, 4)
    bad_ids[2] = bad_ids[2] + [999_999]
    bad_types[2] = bad_types[2] + [0]

    async def main():
        tasks = [asyncio.create_task(batcher.score(i, t)) for i, t in good[:2]]
        tasks.append(asyncio.create_task(batcher.score(bad_ids, bad_types)))
        tasks.append(asyncio.create_task(batcher.score(*good[2])))
        await asyncio.sleep(0.1)
        gate.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    try:
        results = asyncio.run(main())
        assert isinstance(results[2], ScoringError) and "bad token" in str(results[2])
        for k, r in zip((0, 1, 3), (results[0], results[1], results[3])):
            np.testing.assert_allclose(r[:, 0], _expected(good[min(k, 2)][0]), atol=1e-6)
        # the worker goes on
        again = asyncio.run(batcher.score(*good[0]))
        np.testing.assert_allclose(again[:, 0], _expected(good[0][0]), atol=1e-6)
    finally:
        batcher.stop()


def test_overload_and_stop_scores_what_is_queued():
    gate = threading.Event()
    scorer = RecordingScorer(gate=gate)
    batcher = DynamicBatcher(scorer, pad_id=0, limits=BatchLimits(max_batch_pairs=4, max_wait_ms=0,
                                                                 max_queue_pairs=10)).start()

    async def main():
        first = asyncio.create_task(batcher.score(*_pairs(1, 8)))
        await asyncio.sleep(0.1)   # 4 taken by the worker (blocked on the gate), 4 queued
        with pytest.raises(Overloaded):
            await batcher.score(*_pairs(2, 7))
        second = asyncio.create_task(batcher.score(*_pairs(3, 5)))
        await asyncio.sleep(0.05)
        stopper = threading.Thread(target=batcher.stop)
        stopper.start()           # stop while work is queued: it is still scored
        gate.set()
        out = await asyncio.gather(first, second)
        stopper.join(5)
        return out

    a, b = asyncio.run(main())
    assert a.shape == (8, 2) and b.shape == (5, 2)
