"""``lrkd serve``: the student behind HTTP rerank APIs (:mod:`lrkd.serve.app`) on uvicorn.

    lrkd serve --onnx student.onnx [--host 127.0.0.1] [--port 8080] [--threads N]
    lrkd serve --checkpoint best.ckpt [--int8 | --backend torch]
    lrkd serve --hf-dir student_hf/

One uvicorn worker process (uvloop and httptools when installed): the model is loaded once and
one batching thread feeds it, with ONNX Runtime's intra-op threads on the cores; more worker
processes would hold copies of the model that compete for the same cores and split the batches.
SIGTERM or Ctrl-C stops accepting connections, lets the requests in flight finish (at most
``--graceful-timeout`` seconds) and scores what is queued before the process exits.
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
from typing import Sequence

from lrkd.schema import DataError
from lrkd.serve.batching import BatchLimits

log = logging.getLogger(__name__)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def serve_parser(prog: str = "lrkd serve") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Serve a student over HTTP: TEI POST /rerank, Cohere/Jina "
                                "POST /v1/rerank and /v2/rerank, lrkd POST /score, GET /health /info /metrics "
                                "(OpenAPI at /docs).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a student .ckpt (exported to ONNX at start-up unless --backend torch)")
    src.add_argument("--onnx", help="an exported student (lrkd export), with its sidecar JSON; int8 or fp32")
    src.add_argument("--hf-dir", help="a save_pretrained directory (lrkd export --hf-dir)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--threads", type=int, default=None, help="model threads (default: the cores this process may use)")
    p.add_argument("--backend", choices=("onnx", "torch"), default="onnx",
                   help="ONNX Runtime (default) or eager PyTorch, for --checkpoint and --hf-dir")
    p.add_argument("--int8", action="store_true", help="with --checkpoint/--hf-dir: int8 dynamic quantization")
    p.add_argument("--max-length", type=int, default=None, help="tokens per pair (default: the model's)")
    p.add_argument("--model-name", default=None, help="the name responses report (default: the file or dir name)")
    p.add_argument("--max-documents", type=int, default=1000, help="documents (items) per request")
    p.add_argument("--max-body-bytes", type=int, default=4 * 2**20, help="request body size")
    p.add_argument("--max-batch-pairs", type=int, default=BatchLimits.max_batch_pairs, help="pairs per model batch")
    p.add_argument("--max-batch-tokens", type=int, default=BatchLimits.max_batch_tokens,
                   help="pairs x padded length per model batch")
    p.add_argument("--max-wait-ms", type=float, default=BatchLimits.max_wait_ms,
                   help="how long a pair waits for others to batch with")
    p.add_argument("--max-queue-pairs", type=int, default=BatchLimits.max_queue_pairs,
                   help="pairs waiting at most; past it requests get 503")
    p.add_argument("--spin", action="store_true", help="ONNX Runtime threads spin-wait between batches")
    p.add_argument("--graceful-timeout", type=float, default=30.0,
                   help="seconds the requests in flight get to finish after SIGTERM")
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    return p


def uvicorn_config(app, args: argparse.Namespace):
    import uvicorn

    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return uvicorn.Config(app, host=args.host, port=args.port, loop=loop, http=http, workers=1, lifespan="on",
                          log_level=args.log_level, access_log=args.access_log, server_header=False,
                          timeout_graceful_shutdown=args.graceful_timeout, timeout_keep_alive=30)


def main(argv: Sequence[str] | None = None, prog: str = "lrkd serve") -> int:
    parser = serve_parser(prog)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("lrkd").setLevel(getattr(logging, args.log_level.upper()))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import uvicorn

    from lrkd.serve.app import ServerLimits, create_app
    from lrkd.serve.service import load_model

    threads = args.threads or _cores()
    try:
        limits = ServerLimits(max_documents=args.max_documents, max_body_bytes=args.max_body_bytes)
        batching = BatchLimits(max_batch_pairs=args.max_batch_pairs, max_batch_tokens=args.max_batch_tokens,
                               max_wait_ms=args.max_wait_ms, max_queue_pairs=args.max_queue_pairs)
        model = load_model(args.checkpoint, args.onnx, args.hf_dir, backend=args.backend, int8=args.int8,
                           threads=threads, max_length=args.max_length, name=args.model_name, spin=args.spin)
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    app = create_app(model, limits, batching)
    log.info("serving %s (%s, %s, %d threads) on http://%s:%d", model.name, model.backend, model.precision,
             threads, args.host, args.port)
    server = uvicorn.Server(uvicorn_config(app, args))
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
