"""The llama.cpp engines a GGUF teacher runs on: one context, several sequences, one small surface.

:class:`LlamaEngine` is what :class:`lrkd.teacher.runtime.llama_cpp.LlamaCppRuntime` (one sequence) and
:class:`lrkd.teacher.runtime.batched.BatchedDecoder` (many sequences, continuous batching) drive:
``decode`` one batch of (token, position, sequence, wants-output) entries, then read the logits [V]
and the last-layer hidden state [D] of each entry that asked for an output, and edit the KV cache
per sequence (``seq_rm``, and ``seq_cp`` of a whole sequence: how a shared prompt prefix is reused).

Two bindings, chosen by ``teacher.llama_cpp.engine``:

- ``cyllama`` (the ``llamacpp`` extra): a prebuilt wheel of upstream llama.cpp. Each sequence has a
  KV stream of its own (``kv_unified=False``): its cells lie in the order of its positions, as in a
  one-sequence context, so its numbers do not depend on the other sequences' cells.
- ``ik_llama`` (the ``ik_llama`` extra, ``ik-llama-cpp-python``): a prebuilt wheel of the ik_llama.cpp
  fork (one KV pool for all sequences), whose CPU matrix kernels process a batch of tokens about twice as fast here (AVX2 build:
  40 against 17 tokens/s on one thread for 512-token batches of the 1.5B Q4_K_M teacher; see
  ``benchmarks/teacher_cost.py``). Its package exposes the C API through ctypes; the few functions it
  does not declare (per-sequence KV edits, per-output hidden states, the log hook) are declared here.
  Flash attention is off: its CPU kernel asserts when a KV chunk is wholly masked, which happens as
  soon as two sequences share the cache.

A context's numbers depend on the batch shapes it decodes (the kernels differ), so every caller
decodes the same segments the same way; the engine name and ``n_batch`` belong in a reading's
settings record.
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np

ENGINES = ("cyllama", "ik_llama")
INSTALL_HINTS = {
    "cyllama": "pip install 'lrkd[llamacpp]'  (cyllama: a prebuilt wheel of llama.cpp)",
    "ik_llama": "pip install 'lrkd[ikllama]'  (ik-llama-cpp-python: a prebuilt wheel of ik_llama.cpp)",
}


class LlamaEngine(ABC):
    """One llama.cpp context over one GGUF file. n_ctx: KV cells shared by all sequences;
    n_seq: sequence ids 0..n_seq-1; n_batch: the most tokens one ``decode`` takes; n_threads: threads."""

    name = "engine"

    def __init__(self, gguf_path: str | os.PathLike, *, n_ctx: int, n_threads: int, n_batch: int, n_seq: int):
        if not os.path.isfile(str(gguf_path)):
            raise FileNotFoundError(f"no GGUF file at {gguf_path}")
        self.path = str(gguf_path)
        self.n_ctx, self.n_threads, self.n_batch, self.n_seq = int(n_ctx), int(n_threads), int(n_batch), int(n_seq)
        self.n_vocab = self.n_embd = 0
        self._with_hidden = False

    def decode(self, tokens: Sequence[int], positions: Sequence[int], seqs: Sequence[int],
               outputs: Sequence[bool], hidden: bool = False) -> list[int]:
        """Decode one batch (at most ``n_batch`` entries). Returns the batch indices that asked for an
        output, in order: pass them to :meth:`logits`, :meth:`token_logits` and (after ``hidden=True``)
        :meth:`hidden`."""
        n = len(tokens)
        if not 0 < n <= self.n_batch:
            raise ValueError(f"a batch holds 1..{self.n_batch} tokens, got {n}")
        self._decode(tokens, positions, seqs, outputs, bool(hidden))
        self._with_hidden = bool(hidden)
        return [i for i in range(n) if outputs[i]]

    def logits(self, i: int) -> np.ndarray:
        """[V] float32 next-token logits after batch entry ``i`` of the last decode (a copy)."""
        return np.array(self._logits(i), dtype=np.float32)

    def token_logits(self, i: int, token_ids: Sequence[int]) -> np.ndarray:
        """[len(token_ids)] float32: the logits of these tokens only (all an answer reading needs)."""
        return self.logits(i)[np.asarray(token_ids, dtype=np.int64)]

    def hidden(self, i: int) -> np.ndarray:
        """[D] float32 last-layer state (after the final norm) of batch entry ``i`` of the last decode,
        which must have been decoded with ``hidden=True``."""
        if not getattr(self, "_with_hidden", False):
            raise RuntimeError("hidden states are read after decode(..., hidden=True)")
        return np.array(self._hidden(i), dtype=np.float32)

    @abstractmethod
    def _decode(self, tokens, positions, seqs, outputs, hidden: bool) -> None: ...

    @abstractmethod
    def _logits(self, i: int): ...

    @abstractmethod
    def _hidden(self, i: int): ...

    @abstractmethod
    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> None:
        """Drop sequence ``seq``'s cells at positions [p0, p1) (-1: open end; seq -1: every sequence)."""

    @abstractmethod
    def seq_cp(self, src: int, dst: int, p0: int = -1, p1: int = -1) -> None:
        """Give ``dst`` (empty) the cells of ``src`` at positions [p0, p1) (-1, -1: all of them; the
        only form cyllama's per-sequence streams support)."""

    @abstractmethod
    def is_eog(self, token: int) -> bool: ...

    @abstractmethod
    def close(self) -> None: ...

    def clear(self) -> None:
        self.seq_rm(-1, -1, -1)


class CyllamaEngine(LlamaEngine):
    """:class:`LlamaEngine` on cyllama (upstream llama.cpp, unified KV cache)."""

    name = "cyllama"

    def __init__(self, gguf_path, *, n_ctx: int = 2048, n_threads: int = 1, n_batch: int = 512, n_seq: int = 1):
        super().__init__(gguf_path, n_ctx=n_ctx, n_threads=n_threads, n_batch=n_batch, n_seq=n_seq)
        try:
            import cyllama.llama.llama_cpp as cy
        except ImportError as e:  # pragma: no cover - depends on the extra
            raise ImportError(f"teacher.llama_cpp.engine=cyllama needs {INSTALL_HINTS['cyllama']}") from e
        cy.disable_logging()  # the per-tensor load log: thousands of lines per worker

        class _Model(cy.LlamaModel):  # cyllama 0.2.18 reads model.n_vocab in get_logits_ith
            @property
            def n_vocab(self):
                return self.get_vocab().n_vocab

        params = cy.LlamaModelParams()
        params.n_gpu_layers = 0
        self.model = _Model(self.path, params)
        self.vocab = self.model.get_vocab()
        ctx = cy.LlamaContextParams()
        ctx.n_ctx = self.n_ctx
        ctx.n_batch = ctx.n_ubatch = self.n_batch
        ctx.n_threads = ctx.n_threads_batch = self.n_threads
        ctx.n_seq_max = self.n_seq
        ctx.kv_unified = False  # a stream of n_ctx / n_seq cells per sequence: laid out as if alone
        ctx.embeddings = True   # per-output hidden states, alongside the logits
        ctx.pooling_type = 0    # LLAMA_POOLING_TYPE_NONE
        self.ctx = cy.LlamaContext(self.model, ctx)
        self._cy = cy
        self.n_vocab, self.n_embd = int(self.vocab.n_vocab), int(self.model.n_embd)

    def _decode(self, tokens, positions, seqs, outputs, hidden: bool) -> None:
        batch = self._cy.LlamaBatch(n_tokens=len(tokens), embd=0, n_seq_max=1)
        for token, pos, seq, out in zip(tokens, positions, seqs, outputs):
            batch.add(int(token), int(pos), [int(seq)], bool(out))
        self.ctx.decode(batch)

    def _logits(self, i: int):
        return self.ctx.get_logits_ith(int(i))

    def _hidden(self, i: int):
        return self.ctx.get_embeddings_ith(int(i))

    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> None:
        if seq < 0 and p0 < 0 and p1 < 0:
            self.ctx.kv_cache_clear()
        else:
            self.ctx.memory_seq_rm(int(seq), int(p0), int(p1))

    def seq_cp(self, src: int, dst: int, p0: int = -1, p1: int = -1) -> None:
        self.ctx.memory_seq_cp(int(src), int(dst), int(p0), int(p1))

    def is_eog(self, token: int) -> bool:
        return bool(self.vocab.is_eog(int(token)))

    def close(self) -> None:
        for name in ("ctx", "model"):
            obj = getattr(self, name, None)
            if obj is not None and hasattr(obj, "close"):
                obj.close()
            setattr(self, name, None)


IK_WRONG_FILE_TYPES = {3: "Q4_1"}  # general.file_type values ik_llama gets wrong (measured, AVX2 build)


def gguf_file_type(path: str) -> int | None:
    """A GGUF file's ``general.file_type`` (the llama_ftype of its weights), None when absent."""
    from gguf import GGUFReader

    field = GGUFReader(path).fields.get("general.file_type")
    return None if field is None else int(field.parts[-1][0])


_LOG_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_SILENT = _LOG_CALLBACK(lambda level, text, data: None)  # kept alive for the process


def _ik_api():
    """ik_llama_cpp's ctypes module, with the functions lrkd needs that it does not declare."""
    try:
        import ik_llama_cpp._ctypes_api as api
    except ImportError as e:  # pragma: no cover - depends on the extra
        raise ImportError(f"teacher.llama_cpp.engine=ik_llama needs {INSTALL_HINTS['ik_llama']}") from e
    lib = api._lib
    if not getattr(lib, "_lrkd_declared", False):
        c_int32, ctx = ctypes.c_int32, ctypes.c_void_p
        for name, args, res in (("llama_kv_cache_seq_rm", [ctx, c_int32, c_int32, c_int32], ctypes.c_bool),
                                ("llama_kv_cache_seq_cp", [ctx, c_int32, c_int32, c_int32, c_int32], None),
                                ("llama_get_embeddings_ith", [ctx, c_int32], ctypes.POINTER(ctypes.c_float)),
                                ("llama_n_vocab", [ctypes.c_void_p], c_int32),
                                ("llama_log_set", [_LOG_CALLBACK, ctypes.c_void_p], None)):
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, res
        lib.llama_log_set(_SILENT, None)
        api.llama_backend_init()
        lib._lrkd_declared = True
    return api, lib


class IkLlamaEngine(LlamaEngine):
    """:class:`LlamaEngine` on ik_llama.cpp through ctypes (see the module docstring)."""

    name = "ik_llama"

    def __init__(self, gguf_path, *, n_ctx: int = 2048, n_threads: int = 1, n_batch: int = 512, n_seq: int = 1):
        super().__init__(gguf_path, n_ctx=n_ctx, n_threads=n_threads, n_batch=n_batch, n_seq=n_seq)
        if gguf_file_type(self.path) in IK_WRONG_FILE_TYPES:
            raise ValueError(f"{self.path} is a {IK_WRONG_FILE_TYPES[gguf_file_type(self.path)]} file, which "
                             f"ik-llama-cpp-python 0.1.5 computes wrongly here (its logits correlate 0.79 with "
                             f"llama.cpp's); use teacher.llama_cpp.engine=cyllama, or requantize it")
        api, lib = _ik_api()
        self._api, self._lib = api, lib
        params = api.llama_model_default_params()
        params.n_gpu_layers = 0
        params.n_seq_max = self.n_seq
        self.model = api.llama_model_load_from_file(self.path.encode(), params)
        if not self.model:
            raise RuntimeError(f"ik_llama could not load {self.path}")
        ctx = api.llama_context_default_params()
        ctx.n_ctx = self.n_ctx
        ctx.n_batch = ctx.n_ubatch = self.n_batch
        ctx.n_threads = ctx.n_threads_batch = self.n_threads
        ctx.n_seq_max = self.n_seq
        ctx.embeddings = True
        ctx.pooling_type = 0
        ctx.flash_attn = False
        self.ctx = api.llama_init_from_model(self.model, ctx)
        if not self.ctx:
            raise RuntimeError(f"ik_llama could not create a context of {self.n_ctx} cells for {self.path}")
        self.n_vocab = int(lib.llama_n_vocab(self.model))
        self.n_embd = int(api.llama_model_n_embd(self.model))
        self._batch = api.llama_batch_init(self.n_batch, 0, 1)
        self._embeddings = True
        self._output_rows: dict[int, np.ndarray] = {}  # token id -> its row of the output matrix [D]

    def _decode(self, tokens, positions, seqs, outputs, hidden: bool) -> None:
        if hidden != self._embeddings:  # this fork gives hidden states or logits, never both
            self._api.llama_set_embeddings(self.ctx, hidden)
            self._embeddings = hidden
        b = self._batch
        b.n_tokens = len(tokens)
        for i, (token, pos, seq, out) in enumerate(zip(tokens, positions, seqs, outputs)):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = int(token), int(pos), 1, int(bool(out))
            b.seq_id[i][0] = int(seq)
        rc = self._api.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc} (1: no KV cell left; raise teacher.llama_cpp.n_ctx)")

    def _pointer(self, ptr, size: int, what: str):
        if not ptr:
            raise IndexError(f"no {what} for that batch entry (it did not ask for an output)")
        return np.ctypeslib.as_array(ptr, shape=(size,))

    def _logits(self, i: int):
        if self._with_hidden:
            raise RuntimeError("ik_llama gives no logits after decode(..., hidden=True): use token_logits")
        return self._pointer(self._api.llama_get_logits_ith(self.ctx, int(i)), self.n_vocab, "logits")

    def token_logits(self, i: int, token_ids: Sequence[int]) -> np.ndarray:
        """After ``hidden=True`` (no logits from this fork then): the hidden state times these
        tokens' rows of the output matrix, dequantized once from the GGUF file (the same product
        llama.cpp computes, in float32 instead of on 8-bit activations: equal to about 1e-2)."""
        if not self._with_hidden:
            return super().token_logits(i, token_ids)
        missing = [int(t) for t in token_ids if int(t) not in self._output_rows]
        if missing:
            self._output_rows.update(zip(missing, output_rows(self.path, missing)))
        rows = np.stack([self._output_rows[int(t)] for t in token_ids])
        return (rows @ self.hidden(i)).astype(np.float32)

    def _hidden(self, i: int):
        return self._pointer(self._lib.llama_get_embeddings_ith(self.ctx, int(i)), self.n_embd, "hidden state")

    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> None:
        if seq < 0 and p0 < 0 and p1 < 0:
            self._api.llama_kv_cache_clear(self.ctx)
        elif not self._lib.llama_kv_cache_seq_rm(self.ctx, int(seq), int(p0), int(p1)):
            raise RuntimeError(f"ik_llama could not remove positions [{p0}, {p1}) of sequence {seq}")

    def seq_cp(self, src: int, dst: int, p0: int = -1, p1: int = -1) -> None:
        self._lib.llama_kv_cache_seq_cp(self.ctx, int(src), int(dst), int(p0), int(p1))

    def is_eog(self, token: int) -> bool:
        return bool(self._api.llama_token_is_eog(self.model, int(token)))

    def close(self) -> None:
        if getattr(self, "_batch", None) is not None:
            self._api.llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "ctx", None):
            self._api.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            self._api.llama_free_model(self.model)
            self.model = None


def output_rows(gguf_path: str, token_ids: Sequence[int]) -> np.ndarray:
    """[len(token_ids), D] float32: these tokens' rows of a GGUF model's output matrix
    (``output.weight``, or the tied ``token_embd.weight``), dequantized."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    tensors = {t.name: t for t in GGUFReader(gguf_path).tensors}
    weight = tensors.get("output.weight") or tensors["token_embd.weight"]
    return dequantize(np.asarray(weight.data[np.asarray(token_ids, dtype=np.int64)]), weight.tensor_type).astype(
        np.float32)


def resolve_engine(engine: str, gguf_path) -> str:
    """``auto``: ik_llama where it is installed and computes this file's type right, else cyllama."""
    if engine == "auto":
        ok = engine_available("ik_llama") and gguf_file_type(str(gguf_path)) not in IK_WRONG_FILE_TYPES
        return "ik_llama" if ok else "cyllama"
    if engine not in ENGINES:
        raise ValueError(f"teacher.llama_cpp.engine must be auto or one of {ENGINES}, got {engine!r}")
    return engine


def open_engine(gguf_path, engine: str = "cyllama", **kwargs) -> LlamaEngine:
    """An engine by name (``cyllama`` | ``ik_llama`` | ``auto``) over ``gguf_path``; kwargs: n_ctx,
    n_threads, n_batch, n_seq."""
    engines = {"cyllama": CyllamaEngine, "ik_llama": IkLlamaEngine}
    return engines[resolve_engine(engine, gguf_path)](gguf_path, **kwargs)


def engine_available(engine: str) -> bool:
    """Whether ``engine``'s binding is installed (without loading a model)."""
    module = {"cyllama": "cyllama", "ik_llama": "ik_llama_cpp"}[engine]

    return importlib.util.find_spec(module) is not None


__all__ = ["LlamaEngine", "CyllamaEngine", "IkLlamaEngine", "open_engine", "resolve_engine", "engine_available",
           "gguf_file_type", "ENGINES",
           "INSTALL_HINTS"]
