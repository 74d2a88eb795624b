"""Completions from any OpenAI-compatible server (vLLM, TGI, llama.cpp server, a provider) over
``/v1/completions`` or ``/v1/chat/completions`` (:class:`OpenAIHTTPBackend`), with concurrent
requests, a rate limit, timeouts and retries with exponential backoff. The API key is read from the
environment only and never logged. ``httpx`` (the ``teacher`` extra) is imported when a backend is
built.
"""
from __future__ import annotations

import concurrent.futures
import email.utils
import logging
import os
import random
import threading
import time
from typing import Mapping

from tqdm.auto import tqdm

from lrkd.teacher.runtime.base import GenerationBackend, derive_seed

log = logging.getLogger(__name__)


class HTTPBackendError(RuntimeError):
    """A request that failed for good: a 4xx other than 429, or all retries spent."""


class RateLimiter:
    """At most ``per_s`` acquisitions per second across threads (evenly spaced); None = no limit."""

    def __init__(self, per_s: float | None):
        self.interval = 1.0 / float(per_s) if per_s else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            at = max(now, self._next)
            self._next = at + self.interval
        if at > now:
            time.sleep(at - now)


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header (seconds, or an HTTP date) -> seconds to wait, or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class OpenAIHTTPBackend(GenerationBackend):
    """Completions from an OpenAI-compatible server.

    base_url: e.g. ``http://127.0.0.1:8000`` (``/v1`` is appended unless it ends with it).
    model: the model name the server knows. use_chat: POST ``/v1/chat/completions`` with the prompt
    as one user message (the server applies its chat template) instead of ``/v1/completions``.
    api_key_env: the environment variable holding the key (sent as ``Authorization: Bearer``);
    none is sent when it is unset. concurrency: requests in flight. timeout_s: per request.
    max_retries: retries after the first attempt, on 429, 5xx, timeouts and connection errors,
    waiting ``backoff_s * 2**attempt`` (times 1 to 1.25, jitter) or the server's ``Retry-After``,
    at most ``max_backoff_s``. rate_limit_per_s: requests started per second (None = unlimited).
    Prompt i of a call is sent with seed ``derive_seed(seed, i)``. A server that returns fewer than
    n choices is asked again for the rest.
    """

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", concurrency: int = 8,
                 timeout_s: float = 60, max_retries: int = 5, backoff_s: float = 1.0,
                 rate_limit_per_s: float | None = None, use_chat: bool = False, max_backoff_s: float = 60.0,
                 progress: bool = True):
        import httpx

        url = str(base_url).rstrip("/")
        self.base_url = url if url.endswith("/v1") else url + "/v1"
        self.model = str(model)
        self.api_key_env = api_key_env
        self.concurrency = max(1, int(concurrency))
        self.timeout_s = float(timeout_s)
        self.max_retries = max(0, int(max_retries))
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.use_chat = bool(use_chat)
        self.progress = progress
        self.rate_limiter = RateLimiter(rate_limit_per_s)
        key = os.environ.get(api_key_env) if api_key_env else None
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        if not key:
            log.info("no API key in $%s: requests carry no Authorization header", api_key_env)
        self._client = httpx.Client(headers=headers, timeout=httpx.Timeout(self.timeout_s),
                                    limits=httpx.Limits(max_connections=self.concurrency))
        self.has_key = bool(key)

    def __repr__(self) -> str:  # never the key itself
        return (f"OpenAIHTTPBackend(base_url={self.base_url!r}, model={self.model!r}, use_chat={self.use_chat}, "
                f"api_key_env={self.api_key_env!r} ({'set' if self.has_key else 'unset'}), "
                f"concurrency={self.concurrency})")

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------------------------ requests
    @property
    def endpoint(self) -> str:
        return f"{self.base_url}/chat/completions" if self.use_chat else f"{self.base_url}/completions"

    def _payload(self, prompt: str, n: int, temperature: float, max_new_tokens: int, seed: int) -> dict:
        payload = {"model": self.model, "n": int(n), "temperature": float(temperature),
                   "max_tokens": int(max_new_tokens), "seed": int(seed)}
        if self.use_chat:
            payload["messages"] = [{"role": "user", "content": prompt}]
        else:
            payload["prompt"] = prompt
        return payload

    def _texts(self, body: Mapping) -> list[str]:
        choices = sorted(body.get("choices") or [], key=lambda c: c.get("index", 0))
        if self.use_chat:
            return [str((c.get("message") or {}).get("content") or "") for c in choices]
        return [str(c.get("text") or "") for c in choices]

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        wait = retry_after_seconds(retry_after)
        if wait is None:
            wait = self.backoff_s * (2 ** attempt) * (1.0 + 0.25 * random.random())
        return min(wait, self.max_backoff_s)

    def _post(self, payload: dict) -> dict:
        """One request with retries -> the JSON body. Raises HTTPBackendError."""
        import httpx

        last = ""
        for attempt in range(self.max_retries + 1):
            self.rate_limiter.acquire()
            retry_after = None
            try:
                response = self._client.post(self.endpoint, json=payload)
            except (httpx.TimeoutException, httpx.TransportError) as e:
                last = f"{type(e).__name__}: {e}"
            else:
                if response.status_code == 200:
                    try:
                        return response.json()
                    except ValueError:
                        last = f"200 with a body that is not JSON: {response.text[:200]!r}"
                elif response.status_code == 429 or response.status_code >= 500:
                    last = f"HTTP {response.status_code}: {response.text[:200]!r}"
                    retry_after = response.headers.get("retry-after")
                else:
                    raise HTTPBackendError(f"POST {self.endpoint} (model {self.model!r}) -> HTTP "
                                           f"{response.status_code}, not retried: {response.text[:500]!r}")
            if attempt < self.max_retries:
                wait = self._delay(attempt, retry_after)
                log.warning("POST %s failed (%s); retry %d/%d in %.2f s", self.endpoint, last, attempt + 1,
                            self.max_retries, wait)
                time.sleep(wait)
        raise HTTPBackendError(f"POST {self.endpoint} (model {self.model!r}) failed after "
                               f"{self.max_retries + 1} attempts; last error: {last}")

    def _complete(self, prompt: str, n: int, temperature: float, max_new_tokens: int, seed: int) -> list[str]:
        texts: list[str] = []
        for round_ in range(int(n)):  # a server that ignores n gives one choice a round
            want = int(n) - len(texts)
            body = self._post(self._payload(prompt, want, temperature, max_new_tokens,
                                            seed if round_ == 0 else derive_seed(seed, round_)))
            got = self._texts(body)
            if not got:
                raise HTTPBackendError(f"POST {self.endpoint}: a response without choices: {str(body)[:300]!r}")
            texts += got[:want]
            if len(texts) >= int(n):
                break
        return texts

    def generate(self, prompts: list[str], n: int, temperature: float, max_new_tokens: int,
                 seed: int) -> list[list[str]]:
        results: list[list[str] | None] = [None] * len(prompts)
        with concurrent.futures.ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = {pool.submit(self._complete, p, n, temperature, max_new_tokens, derive_seed(seed, i)): i
                       for i, p in enumerate(prompts)}
            try:
                for future in tqdm(concurrent.futures.as_completed(futures), total=len(futures), desc="requests",
                                   leave=False, disable=not self.progress or len(futures) < 2):
                    results[futures[future]] = future.result()
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        return results  # type: ignore[return-value]


__all__ = ["OpenAIHTTPBackend", "HTTPBackendError", "RateLimiter", "retry_after_seconds"]
