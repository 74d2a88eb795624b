"""Many sequences in one llama.cpp context: continuous batching for the teacher's readings and
generations.

A request is a small program, a generator that yields what its sequence needs and receives what
came out:

- :class:`Prefix` (first, optional): the shared head of the prompt (chat template, instruction,
  few-shot examples). Each distinct prefix is decoded once, in a sequence of its own, and every
  request that starts with it sees its cells (``seq_cp`` on a unified KV cache shares, never copies);
- :class:`Feed`: tokens appended to the sequence; the reply is a :class:`FeedResult` (the logits
  after the last token: all [V], or those of ``logit_ids``; with ``hidden``, the last-layer states
  of the fed tokens [n, D]);
- :class:`Rewind`: forget the sequence's cells from a position on (re-read a different continuation
  of the same prompt);
- ``return value``: the request's result.

:class:`BatchedDecoder` keeps ``n_slots`` requests in flight. Each step it gathers the pending feeds
of all slots into one ``decode`` call (a feed is never split unless it alone exceeds ``n_batch``), then
hands each slot its outputs; a finished request frees its slot for the next one. On a CPU the cost of
a decode grows with its tokens more slowly than linearly (the weights are read once per batch), so a
step that carries one new token of each of 16 generations plus a few prompts costs far less than 16
separate steps. Each sequence's tokens see only its own cells (and its prefix's), so its numbers do
not depend on which other sequences share the batch beyond the kernels' rounding: under greedy
decoding the tokens equal the one-sequence path's (:class:`lrkd.teacher.runtime.llama_cpp.LlamaCppRuntime`),
which the tests check.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Iterable, Iterator, Sequence

import numpy as np

from lrkd.teacher.runtime.engines import LlamaEngine


@dataclass(frozen=True)
class Prefix:
    """The shared head of a request's prompt (token ids), decoded once for all requests."""

    tokens: tuple[int, ...]


@dataclass
class Feed:
    """Tokens to append. outputs: 'none' | 'last' | 'all'; logit_ids: the tokens whose logits come
    back (None: all V); hidden: the fed tokens' last-layer states come back (needs outputs='all' to
    get every token's, 'last' for the last one)."""

    tokens: Sequence[int]
    outputs: str = "last"
    logit_ids: Sequence[int] | None = None
    hidden: bool = False


@dataclass(frozen=True)
class Rewind:
    """Forget the sequence's cells at positions >= ``position``."""

    position: int


@dataclass
class FeedResult:
    """logits: [V] or [len(logit_ids)] float32 after the last fed token (None when outputs='none');
    hidden: [n_outputs, D] float32 (None unless asked); position: the sequence's length after the feed."""

    logits: np.ndarray | None
    hidden: np.ndarray | None
    position: int


Program = Generator[Any, Any, Any]


def next_token(logits: np.ndarray, completion: Sequence[int], no_repeat_ngram_size: int = 0,
               temperature: float = 0.0, rng: np.random.Generator | None = None) -> int:
    """The next token after ``completion`` from ``logits`` [V] (modified in place): tokens that would
    repeat an n-gram of the completion are banned (n = ``no_repeat_ngram_size``; the prompt's n-grams
    do not count); then greedy (temperature <= 0) or sampled from softmax(logits / temperature)."""
    n = int(no_repeat_ngram_size)
    out = list(completion)
    if n > 0 and len(out) >= n - 1:
        head = tuple(out[len(out) - n + 1:]) if n > 1 else ()
        banned = [out[i + n - 1] for i in range(len(out) - n + 1) if tuple(out[i:i + n - 1]) == head]
        if banned:
            logits[np.asarray(banned)] = -np.inf
    if temperature and temperature > 0:
        z = logits.astype(np.float64) / float(temperature)
        z = np.exp(z - z.max())
        return int(rng.choice(len(z), p=z / z.sum()))
    return int(np.argmax(logits))


def generation(first: FeedResult, max_new_tokens: int, is_end: Callable[[int], bool], *, ctx_limit: int,
               no_repeat_ngram_size: int = 0, temperature: float = 0.0, seed: int = 0) -> Program:
    """A sub-program (``yield from``) that generates after a feed whose full logits are ``first``;
    returns the completion's token ids (without the end token). The same rule as
    :meth:`lrkd.teacher.runtime.llama_cpp.LlamaCppRuntime.generate`."""
    rng = np.random.default_rng(int(seed))
    out: list[int] = []
    result = first
    for step in range(int(max_new_tokens)):
        token = next_token(result.logits, out, no_repeat_ngram_size, temperature, rng)
        if is_end(token):
            break
        out.append(token)
        if result.position + 1 > ctx_limit or step == int(max_new_tokens) - 1:
            break
        result = yield Feed([token], "last")
    return out


@dataclass
class _Slot:
    seq: int
    key: Any = None
    program: Program | None = None
    position: int = 0
    prefix: tuple[int, ...] | None = None
    pending: Feed | None = None
    offset: int = 0                                   # tokens of ``pending`` already decoded
    hidden: list[np.ndarray] = field(default_factory=list)


class BatchedDecoder:
    """Runs request programs on ``engine`` with up to ``n_slots`` in flight (see the module
    docstring). The engine needs ``n_seq >= n_slots + max_prefixes`` sequences and enough cells for
    the prefixes plus ``n_slots`` requests. mix=False: each decode holds one sequence's feed (no
    speed-up; every number equals the one-sequence runtime's bit for bit, which the tests use to check
    the bookkeeping). ``stats``: decodes, tokens, busy seconds."""

    def __init__(self, engine: LlamaEngine, n_slots: int, max_prefixes: int = 2, mix: bool = True):
        if engine.n_seq < n_slots + max_prefixes:
            raise ValueError(f"the engine has {engine.n_seq} sequences; {n_slots} slots and {max_prefixes} "
                             f"prefixes need {n_slots + max_prefixes}")
        self.engine, self.n_slots, self.max_prefixes, self.mix = engine, int(n_slots), int(max_prefixes), bool(mix)
        self.both_outputs = getattr(engine, "name", "") != "ik_llama"  # logits and hidden in one decode
        self._prefixes: OrderedDict[tuple[int, ...], int] = OrderedDict()  # prefix -> its sequence id
        self.stats = {"decodes": 0, "tokens": 0, "seconds": 0.0}

    # ------------------------------------------------------------------------------------ prefixes
    def _attach_prefix(self, slot: _Slot, prefix: tuple[int, ...], busy: set) -> None:
        """Give ``slot`` the cells of ``prefix`` (decoded now, in its own sequence, if new)."""
        if prefix not in self._prefixes:
            free = [s for s in range(self.n_slots, self.n_slots + self.max_prefixes)
                    if s not in self._prefixes.values()]
            if not free:  # evict the least recently used prefix no running slot holds
                victim = next((p for p in self._prefixes if p not in busy), None)
                if victim is None:
                    raise RuntimeError(f"more than {self.max_prefixes} distinct prefixes in flight")
                free = [self._prefixes.pop(victim)]
                self.engine.seq_rm(free[0], -1, -1)
            seq = free[0]
            for start in range(0, len(prefix), self.engine.n_batch):
                chunk = prefix[start:start + self.engine.n_batch]
                self._decode(list(chunk), list(range(start, start + len(chunk))), [seq] * len(chunk),
                             [False] * len(chunk), False)
            self._prefixes[prefix] = seq
        self._prefixes.move_to_end(prefix)
        if prefix:  # the prefix sequence holds the prefix alone: copy it whole
            self.engine.seq_cp(self._prefixes[prefix], slot.seq, -1, -1)
        slot.prefix, slot.position = prefix, len(prefix)

    def _decode(self, tokens, positions, seqs, outputs, hidden) -> list[int]:
        started = time.perf_counter()
        wanted = self.engine.decode(tokens, positions, seqs, outputs, hidden=hidden)
        self.stats["decodes"] += 1
        self.stats["tokens"] += len(tokens)
        self.stats["seconds"] += time.perf_counter() - started
        return wanted

    # ----------------------------------------------------------------------------------- programs
    def _advance(self, slot: _Slot, value: Any, busy: set) -> tuple[bool, Any]:
        """Send ``value`` into the slot's program until it yields a Feed; (finished, result)."""
        while True:
            try:
                command = slot.program.send(value)
            except StopIteration as stop:
                return True, stop.value
            value = None
            if isinstance(command, Prefix):
                self._attach_prefix(slot, tuple(int(t) for t in command.tokens), busy)
            elif isinstance(command, Rewind):
                if command.position < len(slot.prefix or ()):
                    raise ValueError("a Rewind cannot cut into the shared prefix")
                self.engine.seq_rm(slot.seq, int(command.position), -1)
                slot.position = int(command.position)
            elif isinstance(command, Feed):
                if not len(command.tokens):
                    raise ValueError("a Feed needs at least one token")
                if command.outputs not in ("none", "last", "all"):
                    raise ValueError(f"Feed.outputs must be none | last | all, got {command.outputs!r}")
                slot.pending, slot.offset, slot.hidden = command, 0, []
                return False, None
            else:
                raise TypeError(f"a request program yields Prefix, Feed or Rewind, not {type(command).__name__}")

    def _release(self, slot: _Slot) -> None:
        self.engine.seq_rm(slot.seq, -1, -1)
        slot.key = slot.program = slot.pending = slot.prefix = None
        slot.position = 0

    def _needs(self, feed: Feed) -> tuple[bool, bool]:
        """(needs full logits, needs hidden states) of a feed's decode."""
        full = feed.outputs != "none" and feed.logit_ids is None
        return full, bool(feed.hidden) and feed.outputs != "none"

    def run(self, requests: Iterable[tuple[Any, Callable[[], Program]]]) -> Iterator[tuple[Any, Any]]:
        """Run ``(key, make_program)`` requests; yields ``(key, result)`` as each finishes (not in
        the input order). The next request starts as soon as a slot frees."""
        queue = iter(requests)
        slots = [_Slot(seq=i) for i in range(self.n_slots)]
        exhausted, turn = False, 0
        while True:
            busy = {s.prefix for s in slots if s.program is not None}
            for slot in slots:  # fill free slots
                while slot.program is None and not exhausted:
                    try:
                        key, make = next(queue)
                    except StopIteration:
                        exhausted = True
                        break
                    slot.key, slot.program, slot.position = key, make(), 0
                    done, result = self._advance(slot, None, busy)
                    busy.add(slot.prefix)
                    if done:
                        key = slot.key
                        self._release(slot)
                        yield key, result
            active = [s for s in slots if s.pending is not None]
            if not active:
                return
            # one batch: the pending feeds in round-robin order, whole, while they fit
            order = active[turn % len(active):] + active[:turn % len(active)]
            turn += 1
            tokens, positions, seqs, outputs, owners = [], [], [], [], []
            mode = None  # the batch's hidden flag, set by the first feed that needs one or the other
            for slot in order:
                feed = slot.pending
                full, hidden = self._needs(feed)
                if not self.both_outputs and ((full and mode is True) or (hidden and mode is False)):
                    continue  # this engine gives hidden states or all logits per decode, not both
                rest, room = len(feed.tokens) - slot.offset, self.engine.n_batch - len(tokens)
                if rest > room and tokens:
                    continue  # whole feeds only (so every sequence is cut into batches as alone)
                take = min(rest, room)
                last_chunk = slot.offset + take == len(feed.tokens)
                for j in range(take):
                    tokens.append(int(feed.tokens[slot.offset + j]))
                    positions.append(slot.position + j)
                    seqs.append(slot.seq)
                    outputs.append(feed.outputs == "all" or (feed.outputs == "last" and last_chunk and j == take - 1))
                owners.append((slot, len(tokens) - take, take))
                if hidden:
                    mode = True
                elif full and mode is None:
                    mode = False
                if len(tokens) >= self.engine.n_batch or not self.mix:
                    break
            self._decode(tokens, positions, seqs, outputs, bool(mode))
            finished = []
            for slot, first, take in owners:
                feed = slot.pending
                mine = [i for i in range(first, first + take) if outputs[i]]
                if feed.hidden:
                    slot.hidden += [self.engine.hidden(i) for i in mine]
                slot.offset += take
                slot.position += take
                if slot.offset < len(feed.tokens):
                    continue
                logits = None
                if mine and feed.outputs != "none":
                    last = mine[-1]
                    logits = (self.engine.logits(last) if feed.logit_ids is None
                              else self.engine.token_logits(last, feed.logit_ids))
                result = FeedResult(logits, np.stack(slot.hidden) if slot.hidden else None, slot.position)
                slot.pending = None
                done, value = self._advance(slot, result, busy)
                if done:
                    finished.append((slot.key, value))
                    self._release(slot)
            yield from finished


def context_cells(n_slots: int, per_sequence: int, max_prefixes: int, prefix_cells: int) -> int:
    """KV cells a :class:`BatchedDecoder` context needs when every sequence (slots and prefixes) has
    a stream of its own: each holds a prefix and ``per_sequence`` tokens beyond it."""
    return (int(n_slots) + int(max_prefixes)) * (int(per_sequence) + int(prefix_cells))


__all__ = ["Prefix", "Feed", "Rewind", "FeedResult", "BatchedDecoder", "generation", "next_token",
           "context_cells"]
