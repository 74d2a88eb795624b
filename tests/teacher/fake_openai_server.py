"""A fake OpenAI-compatible server for tests: stdlib ``http.server``, canned completions.

    python fake_openai_server.py --script script.json --log requests.jsonl

Binds 127.0.0.1 on a free port and prints ``LISTENING <port>`` on stdout. Serves
``POST /v1/completions`` and ``POST /v1/chat/completions`` (and ``GET /v1/models``). Every request is
appended to the log as JSON: {time, path, authorization, body, status}.

The script (JSON, re-read on every request, so a test can change it while the server runs):
    grades:      grade names for the canned completions (default perfect/good/fair/poor)
    fail:        [{match, statuses: [429, 500, ...], retry_after?}]: the k-th request whose prompt
                 contains ``match`` gets statuses[k] (each prompt has its own count), then success
    always_fail: [{match, status}]: every request whose prompt contains ``match`` gets ``status``
    slow:        [{match, delays: [seconds, ...]}]: the k-th such request sleeps delays[k] first
    ignore_n:    true: one choice per response whatever ``n`` asks (like servers without ``n``)
A successful response holds ``n`` choices, choice i = :func:`canned_text` (prompt, seed, i).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEFAULT_GRADES = ["perfect", "good", "fair", "poor"]


def canned_text(prompt: str, seed, index: int, grades=DEFAULT_GRADES) -> str:
    """The deterministic completion for (prompt, seed, choice index)."""
    digest = hashlib.sha256(f"{prompt}\x00{seed}\x00{index}".encode()).hexdigest()
    return f"Canned reasoning {digest[:10]}.\nLabel: {grades[int(digest[10:14], 16) % len(grades)]}"


class FakeOpenAI(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    script_path: str = ""
    log_path: str = ""
    lock = threading.Lock()
    counts: dict = {}

    def log_message(self, *args):  # quiet
        pass

    def _script(self) -> dict:
        with open(self.script_path) as f:
            return json.load(f)

    def _send(self, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.end_headers()
        self.wfile.write(data)

    def _record(self, body, status: int) -> None:
        entry = {"time": time.time(), "path": self.path, "authorization": self.headers.get("Authorization"),
                 "body": body, "status": status}
        with self.lock, open(self.log_path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def _next_count(self, kind: str, match: str, prompt: str) -> int:
        with self.lock:
            key = (kind, match, prompt)
            k = self.counts.get(key, 0)
            self.counts[key] = k + 1
            return k

    def do_GET(self):
        if self.path.rstrip("/") == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})
        else:
            self._send(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self._record(None, 400)
            return self._send(400, {"error": {"message": "body is not JSON"}})
        chat = self.path == "/v1/chat/completions"
        if self.path not in ("/v1/completions", "/v1/chat/completions"):
            self._record(body, 404)
            return self._send(404, {"error": {"message": f"no route {self.path}"}})
        prompt = body["messages"][-1]["content"] if chat else body.get("prompt", "")
        script = self._script()
        for rule in script.get("slow", []):
            if rule["match"] in prompt:
                k = self._next_count("slow", rule["match"], prompt)
                if k < len(rule["delays"]):
                    time.sleep(float(rule["delays"][k]))
        for rule in script.get("always_fail", []):
            if rule["match"] in prompt:
                self._record(body, int(rule["status"]))
                return self._send(int(rule["status"]), {"error": {"message": "scripted failure"}})
        for rule in script.get("fail", []):
            if rule["match"] in prompt:
                k = self._next_count("fail", rule["match"], prompt)
                if k < len(rule["statuses"]):
                    status = int(rule["statuses"][k])
                    headers = {"Retry-After": rule["retry_after"]} if "retry_after" in rule else {}
                    self._record(body, status)
                    return self._send(status, {"error": {"message": "scripted failure"}}, headers)
        n = 1 if script.get("ignore_n") else int(body.get("n", 1))
        grades = script.get("grades", DEFAULT_GRADES)
        texts = [canned_text(prompt, body.get("seed"), i, grades) for i in range(n)]
        if chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
                       for i, t in enumerate(texts)]
        else:
            choices = [{"index": i, "text": t, "finish_reason": "stop", "logprobs": None} for i, t in enumerate(texts)]
        self._record(body, 200)
        # choices in reverse order: clients must sort by index
        self._send(200, {"id": "cmpl-fake", "object": "chat.completion" if chat else "text_completion",
                         "created": int(time.time()), "model": body.get("model"), "choices": choices[::-1],
                         "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--script", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    FakeOpenAI.script_path, FakeOpenAI.log_path = args.script, args.log
    server = ThreadingHTTPServer(("127.0.0.1", args.port), FakeOpenAI)
    server.daemon_threads = True
    print(f"LISTENING {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    sys.exit(main())
