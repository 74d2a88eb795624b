"""Running a teacher LLM: one base (:class:`~lrkd.teacher.runtime.base.TeacherRuntime`) over a
local Hugging Face model (:mod:`~lrkd.teacher.runtime.hf`), an OpenAI-compatible HTTP server
(:mod:`~lrkd.teacher.runtime.http`) and a GGUF file on llama.cpp (:mod:`~lrkd.teacher.runtime.llama_cpp`);
:func:`backend_from_config` builds the text-generation backend a stage asks for."""
from __future__ import annotations

from lrkd.teacher.runtime.base import GenerationBackend, TeacherRuntime, derive_seed
from lrkd.teacher.runtime.hf import LocalHFBackend
from lrkd.teacher.runtime.http import OpenAIHTTPBackend


def backend_from_config(stage_cfg, model=None, tokenizer=None) -> GenerationBackend:
    """``stage.backend`` (``local`` | ``http``) -> a backend; ``local`` needs the loaded model and
    tokenizer, ``http`` reads ``stage.http``."""
    kind = str(stage_cfg.get("backend", "local"))
    if kind == "local":
        if model is None or tokenizer is None:
            raise ValueError("backend=local needs the teacher model and tokenizer")
        return LocalHFBackend(model, tokenizer, batch_size=int(stage_cfg.get("batch_size", 16)))
    if kind == "http":
        http = dict(stage_cfg.get("http") or {})
        unknown = set(http) - {"base_url", "model", "api_key_env", "concurrency", "timeout_s", "max_retries",
                               "backoff_s", "rate_limit_per_s", "use_chat", "max_backoff_s"}
        if unknown:
            raise ValueError(f"stage.http: unknown key(s) {sorted(unknown)}")
        return OpenAIHTTPBackend(**http)
    raise ValueError(f"stage.backend must be 'local' or 'http', got {kind!r}")


__all__ = ["TeacherRuntime", "GenerationBackend", "derive_seed", "LocalHFBackend", "OpenAIHTTPBackend",
           "backend_from_config"]
