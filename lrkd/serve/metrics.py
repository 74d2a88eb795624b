"""Prometheus metrics of the HTTP server (``GET /metrics``), in a registry of their own, and the
ASGI middleware that counts and times requests and enforces the body limits.

    lrkd_requests_total{endpoint, status}          HTTP requests answered
    lrkd_request_duration_seconds{endpoint}        latency histogram (arrival to last byte sent)
    lrkd_requests_in_flight                        requests being served (not /metrics itself)
    lrkd_batch_pairs, lrkd_batch_tokens            model batch sizes: pairs, pairs x padded length
    lrkd_batch_duration_seconds                    model time per batch
    lrkd_pairs_scored_total                        pairs scored
    lrkd_queued_pairs                              pairs waiting for the model
"""
from __future__ import annotations

import json
import logging
import time
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

from lrkd.serve.batching import BatchStats

log = logging.getLogger(__name__)
disable_created_metrics()  # no *_created series: one line per counter and histogram

LATENCY_BUCKETS = (.001, .0025, .005, .01, .025, .05, .075, .1, .15, .25, .5, .75, 1., 2.5, 5., 10., 30.)
PAIR_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256, 512)
TOKEN_BUCKETS = (64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


class ServerMetrics:
    def __init__(self, queued_pairs: Callable[[], float] | None = None):
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter("lrkd_requests", "HTTP requests answered", ["endpoint", "status"], registry=r)
        self.latency = Histogram("lrkd_request_duration_seconds", "request latency, arrival to response sent",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("lrkd_requests_in_flight", "requests being served", registry=r)
        self.batch_pairs = Histogram("lrkd_batch_pairs", "pairs per model batch", buckets=PAIR_BUCKETS, registry=r)
        self.batch_tokens = Histogram("lrkd_batch_tokens", "pairs x padded length per model batch",
                                      buckets=TOKEN_BUCKETS, registry=r)
        self.batch_seconds = Histogram("lrkd_batch_duration_seconds", "model time per batch",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.pairs = Counter("lrkd_pairs_scored", "pairs scored", registry=r)
        self.queued = Gauge("lrkd_queued_pairs", "pairs waiting for the model", registry=r)
        if queued_pairs is not None:
            self.queued.set_function(queued_pairs)

    def on_batch(self, stats: BatchStats) -> None:
        self.batch_pairs.observe(stats.pairs)
        self.batch_tokens.observe(stats.tokens)
        self.batch_seconds.observe(stats.seconds)
        self.pairs.inc(stats.pairs)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def error_body(message: str, error_type: str, field: str | None = None) -> dict:
    return {"error": message, "message": message, "error_type": error_type, "field": field}


async def send_json(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


class GuardMiddleware:
    """Pure ASGI middleware: counts and times every HTTP request (by endpoint, ``other`` for unknown
    paths), refuses bodies over ``max_body_bytes`` (413, before reading them when Content-Length
    says so) and bodies that are not UTF-8 (400), naming the field ``body``."""

    def __init__(self, app, metrics: ServerMetrics, max_body_bytes: int, endpoints: frozenset[str]):
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = int(max_body_bytes)
        self.endpoints = endpoints

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = scope["path"] if scope["path"] in self.endpoints else "other"
        tracked = endpoint != "/metrics"
        status = [500]
        t0 = time.perf_counter()

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        if tracked:
            self.metrics.in_flight.inc()
        try:
            if scope["method"] in ("POST", "PUT", "PATCH"):
                receive = await self._read_body(scope, receive, send_status)
                if receive is None:
                    return
            await self.app(scope, receive, send_status)
        finally:
            if tracked:
                self.metrics.in_flight.dec()
            self.metrics.requests.labels(endpoint, str(status[0])).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)

    async def _read_body(self, scope, receive, send):
        """The body read whole (within the limit) and checked; a receive that replays it, or None
        when an error was answered (or the client left)."""
        limit = self.max_body_bytes
        too_big = error_body(f"the request body is larger than the limit of {limit} bytes", "payload_too_large", "body")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await send_json(send, 413, too_big)
            return None
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await send_json(send, 413, too_big)
                return None
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as e:
            await send_json(send, 400, error_body(f"the request body is not valid UTF-8 (byte {e.start})",
                                                  "invalid_utf8", "body"))
            return None
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay


__all__ = ["ServerMetrics", "GuardMiddleware", "error_body", "send_json"]
