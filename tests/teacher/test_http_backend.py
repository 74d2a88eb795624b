"""The OpenAI-compatible HTTP backend against a real server process on 127.0.0.1
(tests/teacher/fake_openai_server.py): payload, key, retries on 429/5xx/timeouts, Retry-After, no
retry on 4xx, rate limit, servers without ``n``, and generation resumed through it."""
from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lrkd.teacher.runtime.base import derive_seed
from lrkd.teacher.runtime.http import HTTPBackendError, OpenAIHTTPBackend, retry_after_seconds
from lrkd.teacher.train.generate import generate_mpcot, read_generations
from tests.teacher import GRADES, INTENT, SPECS, schema_frame
from tests.teacher.fake_openai_server import canned_text

SERVER = Path(__file__).with_name("fake_openai_server.py")
KEY = "sk-test-7f3a9c"


class FakeServer:
    def __init__(self, tmp: Path):
        self.script_path, self.log_path = tmp / "script.json", tmp / "requests.jsonl"
        self.set_script({})
        self.log_path.write_text("")
        self.proc = subprocess.Popen([sys.executable, str(SERVER), "--script", str(self.script_path),
                                      "--log", str(self.log_path)], stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("LISTENING "):
            self.proc.kill()
            raise RuntimeError(f"fake server did not start: {line!r}")
        self.url = f"http://127.0.0.1:{int(line.split()[1])}"

    def set_script(self, script: dict) -> None:
        self.script_path.write_text(json.dumps(script))

    def requests(self) -> list[dict]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setenv("LRKD_TEST_KEY", KEY)
    srv = FakeServer(tmp_path)
    yield srv
    srv.close()


def backend(server, **kw) -> OpenAIHTTPBackend:
    args = dict(model="fake-llm", api_key_env="LRKD_TEST_KEY", concurrency=4, timeout_s=5, max_retries=3,
                backoff_s=0.01, progress=False)
    return OpenAIHTTPBackend(server.url, **{**args, **kw})


def test_completions_with_retries_on_429_and_500(server, caplog):
    server.set_script({"fail": [{"match": "alpha", "statuses": [429, 500]}]})
    with caplog.at_level(logging.DEBUG), backend(server) as b:
        out = b.generate(["alpha prompt", "beta prompt"], n=2, temperature=0.7, max_new_tokens=12, seed=5)
        assert KEY not in repr(b) and "LRKD_TEST_KEY" in repr(b)
    assert out == [[canned_text("alpha prompt", derive_seed(5, 0), i) for i in range(2)],
                   [canned_text("beta prompt", derive_seed(5, 1), i) for i in range(2)]]
    log = server.requests()
    alpha = [r for r in log if r["body"]["prompt"] == "alpha prompt"]
    assert [r["status"] for r in alpha] == [429, 500, 200]
    assert [r["status"] for r in log if r["body"]["prompt"] == "beta prompt"] == [200]
    assert all(r["authorization"] == f"Bearer {KEY}" and r["path"] == "/v1/completions" for r in log)
    assert alpha[0]["body"] == {"model": "fake-llm", "prompt": "alpha prompt", "n": 2, "temperature": 0.7,
                                "max_tokens": 12, "seed": derive_seed(5, 0)}
    assert "retry 2/3" in caplog.text and KEY not in caplog.text


def test_retry_after_is_honoured(server):
    server.set_script({"fail": [{"match": "slow down", "statuses": [429], "retry_after": "1"}]})
    with backend(server, backoff_s=0.001) as b:
        b.generate(["slow down"], n=1, temperature=0.7, max_new_tokens=4, seed=0)
    first, second = server.requests()
    assert second["time"] - first["time"] >= 0.9
    assert retry_after_seconds("2.5") == 2.5 and retry_after_seconds(None) is None
    assert 0 <= retry_after_seconds(time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))) <= 31


def test_timeouts_are_retried(server):
    server.set_script({"slow": [{"match": "sleepy", "delays": [2.0]}]})
    with backend(server, timeout_s=0.3) as b:
        out = b.generate(["sleepy"], n=1, temperature=0.7, max_new_tokens=4, seed=0)
    assert out == [[canned_text("sleepy", derive_seed(0, 0), 0)]]


def test_other_4xx_is_not_retried_and_exhausted_retries_fail_clearly(server):
    server.set_script({"always_fail": [{"match": "bad", "status": 400}, {"match": "down", "status": 503}]})
    with backend(server) as b:
        with pytest.raises(HTTPBackendError, match="HTTP 400, not retried"):
            b.generate(["bad request"], n=1, temperature=0.7, max_new_tokens=4, seed=0)
        with pytest.raises(HTTPBackendError, match="failed after 4 attempts; last error: HTTP 503"):
            b.generate(["down again"], n=1, temperature=0.7, max_new_tokens=4, seed=0)
    statuses = [(r["body"]["prompt"], r["status"]) for r in server.requests()]
    assert statuses == [("bad request", 400)] + [("down again", 503)] * 4


def test_connection_errors_are_retried_then_fail(tmp_path):
    with socket.socket() as s:                      # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    b = OpenAIHTTPBackend(f"http://127.0.0.1:{port}", model="m", max_retries=2, backoff_s=0.01, progress=False)
    with pytest.raises(HTTPBackendError, match="after 3 attempts.*Connect"):
        b.generate(["x"], n=1, temperature=0.5, max_new_tokens=4, seed=0)


def test_chat_endpoint_with_a_server_that_ignores_n_and_a_rate_limit(server, monkeypatch):
    monkeypatch.delenv("LRKD_TEST_KEY")
    server.set_script({"ignore_n": True})
    with backend(server, use_chat=True, rate_limit_per_s=20) as b:
        out = b.generate(["p1", "p2"], n=3, temperature=0.9, max_new_tokens=4, seed=1)
    assert [len(x) for x in out] == [3, 3]
    log = server.requests()
    assert len(log) == 6 and all(r["path"] == "/v1/chat/completions" and r["authorization"] is None for r in log)
    first = [r for r in log if r["body"]["messages"] == [{"role": "user", "content": "p1"}]]
    assert [r["body"]["n"] for r in first] == [3, 2, 1]
    assert out[0][0] == canned_text("p1", derive_seed(1, 0), 0)
    times = sorted(r["time"] for r in log)
    assert times[-1] - times[0] >= 5 * 0.05 * 0.9    # 6 requests at <= 20/s


def test_generation_resumes_through_http(server, tmp_path):
    frame = schema_frame([f"query {i}" for i in range(4)], [0, 1, 2, 3])

    def run(out, b):
        return generate_mpcot(frame, [0, 1, 2, 3], [INTENT, SPECS], GRADES, b, n=2, temperature=0.8,
                              max_new_tokens=16, seed=3, out_dir=out, shard_size=1)

    server.set_script({"always_fail": [{"match": "Query: query 2\n", "status": 500}]})
    with backend(server, max_retries=1) as b, pytest.raises(HTTPBackendError, match="HTTP 500"):
        run(tmp_path / "run", b)
    out = tmp_path / "run"
    done = sorted(p.name for p in out.glob("shard-*.jsonl"))
    assert done == ["shard-00000.jsonl", "shard-00001.jsonl"]
    before = {n: ((out / n).stat().st_mtime_ns, (out / n).read_bytes()) for n in done}

    server.set_script({})
    seen = len(server.requests())
    with backend(server) as b:
        stats = run(out, b)
    again = server.requests()[seen:]
    assert {r["body"]["prompt"].split("Query: ")[1].split("\n")[0] for r in again} == {"query 2", "query 3"}
    assert {n: ((out / n).stat().st_mtime_ns, (out / n).read_bytes()) for n in done} == before
    assert stats["this_run"]["shards_generated"] == 2 and stats["this_run"]["shards_reused"] == 2
    with backend(server) as b:
        run(tmp_path / "ref", b)
    resumed, reference = read_generations(out), read_generations(tmp_path / "ref")
    assert resumed.equals(reference) and len(resumed) == 4 * 2 * 2
    assert resumed["text"].str.startswith("Canned reasoning").all() and resumed["parse_error"].isna().all()
