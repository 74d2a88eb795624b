"""A GGUF teacher run by llama.cpp (the ``llamacpp`` extra: the ``cyllama`` binding).

:class:`LlamaCppRuntime` is one llama.cpp context over one GGUF file, one sequence, driven with the
token ids of the teacher's Hugging Face tokenizer (the same prompts, chat template and grade tokens
as the transformers teacher; a GGUF file carries the vocabulary both read). It gives what the
teacher stages need:

- :meth:`LlamaCppRuntime.read`: teacher-force the prefix segments, then ``tokens``, and return the
  next-token logits at the last position [V] and the last-layer hidden states (after the final
  norm, as ``hidden_states[-1]`` of transformers) of every position of ``tokens`` [n, D]. Leading
  prefix segments (the chat template and instruction shared by every pair; the pair itself, read
  several times) stay in the KV cache and are decoded again only when they change. Each segment is
  always decoded as one batch, so a cached and an uncached reading are bit-identical (llama.cpp's
  kernels depend on the batch shape: splitting a sequence differently moves logits by up to ~0.5).
- :meth:`LlamaCppRuntime.generate`: greedy or seeded sampling after ``prefix + tokens``, with
  completion-only n-gram blocking (:class:`lrkd.teacher.label.annotate.CompletionNoRepeatNGram`'s rule)
  and stop at an end-of-generation token.

The engine (:mod:`lrkd.teacher.runtime.engines`) is the binding: ``cyllama`` (a prebuilt wheel of upstream
llama.cpp) or ``ik_llama`` (a prebuilt wheel of the ik_llama.cpp fork, about twice as fast on batches
of tokens here). ``llama-cpp-python`` has to compile here (26 min); ``llama-cpp-py-sync`` needs
glibc 2.38. llama.cpp threads spin-wait on each other, so several one-thread worker processes
sharing the memory-mapped file beat one process with several threads on one sequence
(:mod:`lrkd.teacher.label.score_pool`); :class:`lrkd.teacher.runtime.batched.BatchedDecoder` runs many sequences
in one context instead.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from lrkd.teacher.runtime.base import TeacherRuntime
from lrkd.teacher.runtime.batched import next_token
from lrkd.teacher.runtime.engines import open_engine

log = logging.getLogger(__name__)


def gguf_embedding_dim(path: str | os.PathLike) -> int:
    """The hidden size D recorded in a GGUF file's metadata (``<arch>.embedding_length``)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    field = reader.fields[f"{arch}.embedding_length"]
    return int(field.parts[-1][0])


@dataclass
class Reading:
    """What :meth:`LlamaCppRuntime.read` returns. logits: [V] float32 next-token logits after the
    last token ([len(logit_ids)] when read with ``logit_ids``). hidden: [n, D] float32 last-layer states of the read tokens (None when not asked)."""

    logits: np.ndarray
    hidden: np.ndarray | None


class LlamaCppRuntime(TeacherRuntime):
    """One sequence on one llama.cpp context over ``gguf_path`` (see the module docstring).

    n_ctx: context length in tokens (prompt + completion). n_threads: threads of this process
    (1 is fastest per core on a CPU; use several processes). n_batch: the largest batch decoded at
    once (longer inputs are split into n_batch chunks, always at the same places). engine: the
    binding (:mod:`lrkd.teacher.runtime.engines`: ``cyllama`` | ``ik_llama``).
    """

    def __init__(self, gguf_path: str | os.PathLike, *, n_ctx: int = 2048, n_threads: int = 1, n_batch: int = 512,
                 engine: str = "cyllama", verbose: bool = False):
        self.engine = open_engine(gguf_path, engine, n_ctx=int(n_ctx), n_threads=int(n_threads),
                                  n_batch=int(n_batch), n_seq=1)
        self.path = self.engine.path
        self.n_ctx, self.n_batch = int(n_ctx), int(n_batch)
        self.n_vocab, self.n_embd = self.engine.n_vocab, self.engine.n_embd
        self._cached_prefix: list[tuple[int, ...]] = []
        self.cache_prefix = True
        self.stats = {"prefix_decodes": 0, "prefix_hits": 0, "tokens_decoded": 0}
        self._last: list[int] = []  # batch indices with an output in the last decode

    # ---------------------------------------------------------------------------------- decoding
    def _decode(self, tokens: Sequence[int], start: int, outputs: str, hidden: bool = False) -> list[np.ndarray]:
        """Decode ``tokens`` at positions ``start...`` in n_batch chunks; outputs: 'none' | 'last' | 'all'.
        Returns, with ``hidden``, the [D] states of the outputs."""
        total = len(tokens)
        if start + total > self.n_ctx:
            raise ValueError(f"{start + total} tokens do not fit the context of {self.n_ctx} (teacher.llama_cpp.n_ctx)")
        states = []
        for offset in range(0, total, self.n_batch):
            chunk = list(tokens[offset:offset + self.n_batch])
            last_chunk = offset + len(chunk) == total
            want = [outputs == "all" or (outputs == "last" and last_chunk and i == len(chunk) - 1)
                    for i in range(len(chunk))]
            self._last = self.engine.decode(chunk, range(start + offset, start + offset + len(chunk)),
                                            [0] * len(chunk), want, hidden=hidden and any(want))
            if hidden:
                states += [self.engine.hidden(i) for i in self._last]
            self.stats["tokens_decoded"] += len(chunk)
        return states

    def _set_prefix(self, segments: Sequence[Sequence[int]]) -> int:
        """Make the KV cache hold exactly the concatenated ``segments``, each decoded as one batch;
        leading segments equal to the cached ones are kept. Returns the prefix length in tokens."""
        segments = [tuple(int(t) for t in seg) for seg in segments]
        keep = 0
        if self.cache_prefix:
            while keep < min(len(segments), len(self._cached_prefix)) and segments[keep] == self._cached_prefix[keep]:
                keep += 1
        start = sum(len(seg) for seg in segments[:keep])
        if keep:
            self.engine.seq_rm(0, start, -1)
            self.stats["prefix_hits"] += 1
        else:
            self.engine.clear()
        self._cached_prefix = list(segments[:keep])
        for seg in segments[keep:]:
            if seg:
                self._decode(seg, start, "none")
                self.stats["prefix_decodes"] += 1
            start += len(seg)
            self._cached_prefix.append(seg)
        return start

    def read(self, prefix: Sequence[Sequence[int]], tokens: Sequence[int], hidden: bool = False,
             logit_ids: Sequence[int] | None = None) -> Reading:
        """Teacher-force the ``prefix`` segments, then ``tokens`` (non-empty), and read the logits
        after the last token (all [V], or those of ``logit_ids``) and, with ``hidden``, the
        last-layer states of ``tokens``."""
        if not len(tokens):
            raise ValueError("read() needs at least one token after the prefix")
        start = self._set_prefix(prefix)
        states = self._decode(list(tokens), start, "all" if hidden else "last", hidden=hidden)
        last = self._last[-1]
        logits = self.engine.logits(last) if logit_ids is None else self.engine.token_logits(last, logit_ids)
        return Reading(logits, np.stack(states) if hidden else None)

    def is_end(self, token: int) -> bool:
        return self.engine.is_eog(token)

    def generate(self, prefix: Sequence[Sequence[int]], tokens: Sequence[int], max_new_tokens: int, *,
                 temperature: float = 0.0, seed: int = 0, no_repeat_ngram_size: int = 0,
                 stop_ids: Sequence[int] = ()) -> list[int]:
        """The completion's token ids after the ``prefix`` segments and ``tokens`` (without the end token,
        nor a token of ``stop_ids``, which ends the completion too: e.g. the tokens holding a newline).

        temperature <= 0: greedy; otherwise sampled from softmax(logits / temperature) with a numpy
        generator seeded by ``seed``. no_repeat_ngram_size n > 0: a token that would repeat an
        n-gram of the completion so far is banned (the prompt's n-grams do not count)."""
        position = self._set_prefix(prefix)
        self._decode(list(tokens), position, "last")
        position += len(tokens)
        rng = np.random.default_rng(int(seed))
        out: list[int] = []
        stop = frozenset(int(t) for t in stop_ids)
        for _ in range(int(max_new_tokens)):
            token = next_token(self.engine.logits(self._last[-1]), out, no_repeat_ngram_size, temperature, rng)
            if self.is_end(token) or token in stop:
                break
            out.append(token)
            if position + 1 > self.n_ctx:
                break
            self._decode([token], position, "last")
            position += 1
        return out

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None


__all__ = ["LlamaCppRuntime", "Reading"]
