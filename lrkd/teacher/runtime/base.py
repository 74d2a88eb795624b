"""The one base of the teacher's runtimes, and what the text-generating ones share.

A runtime is a teacher LLM ready to run: a Hugging Face model in this process
(:class:`lrkd.teacher.runtime.hf.LocalHFBackend`), an OpenAI-compatible server
(:class:`lrkd.teacher.runtime.http.OpenAIHTTPBackend`) or a GGUF file on llama.cpp
(:class:`lrkd.teacher.runtime.llama_cpp.LlamaCppRuntime`). What all three share is a lifetime:
:class:`TeacherRuntime` (``close()``, and a context manager that calls it). The first two also
share one surface, text in and sampled texts out: :class:`GenerationBackend` (MPCoT generation uses
any of them, or a scripted stand-in in the tests). llama.cpp works on token ids instead
(teacher-forced readings and token-level generation with a KV-cache prefix).
"""
from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from typing import Any


def derive_seed(seed: int, *keys: Any) -> int:
    """A 31-bit seed from ``seed`` and keys (e.g. a shard or batch index); stable across processes."""
    digest = hashlib.sha256(repr((int(seed),) + tuple(keys)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class TeacherRuntime(ABC):
    """A teacher LLM ready to run. ``with runtime: ...`` closes it at the end."""

    def close(self) -> None:
        """Release what the runtime holds (a connection pool, a llama.cpp context). A runtime that
        holds nothing of its own (a local model belongs to its caller) keeps this default."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class GenerationBackend(TeacherRuntime):
    """A runtime that samples text completions of text prompts."""

    @abstractmethod
    def generate(self, prompts: list[str], n: int, temperature: float, max_new_tokens: int,
                 seed: int) -> list[list[str]]:
        """``len(prompts)`` lists of ``n`` completions each (the text after the prompt); raises when
        a prompt cannot be served."""


__all__ = ["derive_seed", "TeacherRuntime", "GenerationBackend"]
