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

Why cyllama: a prebuilt manylinux wheel of upstream llama.cpp (installs in seconds, no compiler),
with the whole C API the teacher needs (per-position logits and embeddings, ``memory_seq_rm`` for
prefix reuse). ``llama-cpp-python`` has to compile here (26 min); ``ik-llama-cpp-python`` is a fork
whose KV-cache editing needs hand-written ctypes; ``llama-cpp-py-sync`` needs glibc 2.38.
llama.cpp threads spin-wait on each other, so several one-thread worker processes sharing the
memory-mapped file beat one process with several threads (:mod:`lrkd.teacher.label.score_pool`).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from lrkd.teacher.runtime.base import TeacherRuntime

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'lrkd[llamacpp]'  (the cyllama binding of llama.cpp, a prebuilt wheel)"


def _binding():
    try:
        import cyllama.llama.llama_cpp as cy
    except ImportError as e:  # pragma: no cover - depends on the extra
        raise ImportError(f"teacher.runtime=llama_cpp needs the llama.cpp binding: {INSTALL_HINT}") from e
    return cy


def _quiet_logs(cy) -> None:
    """Silence llama.cpp's per-tensor load log (thousands of lines per worker)."""
    for name in ("disable_logging", "llama_log_disable"):
        fn = getattr(cy, name, None)
        if callable(fn):
            try:
                fn()
                return
            except Exception:  # noqa: BLE001 - best effort
                pass


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
    last token. hidden: [n, D] float32 last-layer states of the read tokens (None when not asked)."""

    logits: np.ndarray
    hidden: np.ndarray | None


class LlamaCppRuntime(TeacherRuntime):
    """One llama.cpp context over ``gguf_path`` (see the module docstring).

    n_ctx: context length in tokens (prompt + completion). n_threads: threads of this process
    (1 is fastest per core on a CPU; use several processes). n_batch: the largest batch decoded at
    once (longer inputs are split into n_batch chunks, always at the same places).
    """

    def __init__(self, gguf_path: str | os.PathLike, *, n_ctx: int = 2048, n_threads: int = 1, n_batch: int = 512,
                 verbose: bool = False):
        cy = _binding()
        if not verbose:
            _quiet_logs(cy)
        if not os.path.isfile(str(gguf_path)):
            raise FileNotFoundError(f"no GGUF file at {gguf_path}")

        class _Model(cy.LlamaModel):  # cyllama 0.2.18 reads model.n_vocab in get_logits_ith
            @property
            def n_vocab(self):
                return self.get_vocab().n_vocab

        params = cy.LlamaModelParams()
        params.n_gpu_layers = 0
        self.path = str(gguf_path)
        self.model = _Model(self.path, params)
        self.vocab = self.model.get_vocab()
        ctx_params = cy.LlamaContextParams()
        ctx_params.n_ctx = int(n_ctx)
        ctx_params.n_batch = ctx_params.n_ubatch = int(n_batch)
        ctx_params.n_threads = ctx_params.n_threads_batch = int(n_threads)
        ctx_params.embeddings = True   # per-position hidden states, alongside the logits
        ctx_params.pooling_type = 0    # LLAMA_POOLING_TYPE_NONE
        self.ctx = cy.LlamaContext(self.model, ctx_params)
        self._cy = cy
        self.n_ctx, self.n_batch = int(n_ctx), int(n_batch)
        self.n_vocab, self.n_embd = int(self.vocab.n_vocab), int(self.model.n_embd)
        self._cached_prefix: list[tuple[int, ...]] = []
        self.cache_prefix = True
        self.stats = {"prefix_decodes": 0, "prefix_hits": 0, "tokens_decoded": 0}

    # ---------------------------------------------------------------------------------- decoding
    def _decode(self, tokens: Sequence[int], start: int, outputs: str) -> None:
        """Decode ``tokens`` at positions ``start...`` in n_batch chunks; outputs: 'none' | 'last' | 'all'."""
        total = len(tokens)
        if start + total > self.n_ctx:
            raise ValueError(f"{start + total} tokens do not fit the context of {self.n_ctx} (teacher.llama_cpp.n_ctx)")
        for offset in range(0, total, self.n_batch):
            chunk = tokens[offset:offset + self.n_batch]
            batch = self._cy.LlamaBatch(n_tokens=len(chunk), embd=0, n_seq_max=1)
            last_chunk = offset + len(chunk) == total
            for i, token in enumerate(chunk):
                want = outputs == "all" or (outputs == "last" and last_chunk and i == len(chunk) - 1)
                batch.add(int(token), start + offset + i, [0], want)
            self.ctx.decode(batch)
            self.stats["tokens_decoded"] += len(chunk)

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
            self.ctx.memory_seq_rm(0, start, -1)
            self.stats["prefix_hits"] += 1
        else:
            self.ctx.kv_cache_clear()
        self._cached_prefix = list(segments[:keep])
        for seg in segments[keep:]:
            if seg:
                self._decode(seg, start, "none")
                self.stats["prefix_decodes"] += 1
            start += len(seg)
            self._cached_prefix.append(seg)
        return start

    def _logits(self, i: int = -1) -> np.ndarray:
        return np.asarray(self.ctx.get_logits_ith(i), dtype=np.float32)

    def read(self, prefix: Sequence[Sequence[int]], tokens: Sequence[int], hidden: bool = False) -> Reading:
        """Teacher-force the ``prefix`` segments, then ``tokens`` (non-empty), and read the logits
        after the last token and, with ``hidden``, the last-layer states of ``tokens``."""
        if not len(tokens):
            raise ValueError("read() needs at least one token after the prefix")
        start = self._set_prefix(prefix)
        self._decode(list(tokens), start, "all" if hidden else "last")
        logits = self._logits(-1)
        states = None
        if hidden:
            states = np.stack([np.asarray(self.ctx.get_embeddings_ith(i), dtype=np.float32)
                               for i in range(len(tokens))])
        return Reading(logits, states)

    def is_end(self, token: int) -> bool:
        return bool(self.vocab.is_eog(int(token)))

    def generate(self, prefix: Sequence[Sequence[int]], tokens: Sequence[int], max_new_tokens: int, *,
                 temperature: float = 0.0, seed: int = 0, no_repeat_ngram_size: int = 0) -> list[int]:
        """The completion's token ids after the ``prefix`` segments and ``tokens`` (without the end token).

        temperature <= 0: greedy; otherwise sampled from softmax(logits / temperature) with a numpy
        generator seeded by ``seed``. no_repeat_ngram_size n > 0: a token that would repeat an
        n-gram of the completion so far is banned (the prompt's n-grams do not count)."""
        position = self._set_prefix(prefix)
        self._decode(list(tokens), position, "last")
        position += len(tokens)
        rng = np.random.default_rng(int(seed))
        out: list[int] = []
        n = int(no_repeat_ngram_size)
        for _ in range(int(max_new_tokens)):
            logits = self._logits(-1)
            if n > 0 and len(out) >= n - 1:
                head = tuple(out[len(out) - n + 1:]) if n > 1 else ()
                banned = [out[i + n - 1] for i in range(len(out) - n + 1) if tuple(out[i:i + n - 1]) == head]
                if banned:
                    logits[np.asarray(banned)] = -np.inf
            if temperature and temperature > 0:
                z = logits / float(temperature)
                z = np.exp(z - z.max())
                token = int(rng.choice(len(z), p=z / z.sum()))
            else:
                token = int(np.argmax(logits))
            if self.is_end(token):
                break
            out.append(token)
            if position + 1 > self.n_ctx:
                break
            self._decode([token], position, "last")
            position += 1
        return out

    def close(self) -> None:
        for name in ("ctx", "model"):
            obj = getattr(self, name, None)
            if obj is not None and hasattr(obj, "close"):
                try:
                    obj.close()
                except Exception:  # noqa: BLE001
                    pass
            setattr(self, name, None)


__all__ = ["LlamaCppRuntime", "Reading", "INSTALL_HINT"]
