"""The HTTP API of ``lrkd serve`` (FastAPI; run by :mod:`lrkd.serve.server` on uvicorn):

    POST /rerank       Hugging Face text-embeddings-inference: [{index, score, text?}] by descending score
    POST /v1/rerank    Cohere v1 (and Jina): {id, results: [{index, relevance_score, document?}], meta, ...}
    POST /v2/rerank    Cohere v2 (max_tokens_per_doc)
    POST /score        lrkd: structured items (title + the model's text fields) -> grade under the saved
                       decision rule, P(grade), expected gain and relevance: what lrkd predict writes
    GET  /health, /info, /metrics (Prometheus), /openapi.json, /docs

Scores (:mod:`lrkd.serve.service`): ``score`` / ``relevance_score`` = expected relevance mapped to
[0, 1]; TEI's ``raw_scores`` = the expected relevance itself. The pairs of concurrent requests are
scored together (:mod:`lrkd.serve.batching`). Bad input gets a 4xx JSON error naming the field
(:class:`~lrkd.serve.schemas.ErrorBody`); a scoring failure a JSON 500, and the server goes on.
"""
import contextlib
import logging
import uuid
from dataclasses import asdict, dataclass
from typing import Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from lrkd.data.encode import item_text
from lrkd.serve.batching import BatchLimits, DynamicBatcher, Overloaded, ScoringError
from lrkd.serve.metrics import GuardMiddleware, ServerMetrics, error_body
from lrkd.serve.predict import PairColumns, RowError
from lrkd.serve.schemas import (CohereRerankRequest, CohereRerankResponse, ErrorBody, ScoreResponse, TeiRank,
                                TeiRerankRequest, score_models)
from lrkd.serve.service import PairTokenizer, RequestError, Scores, ServedModel, ranked
from lrkd.student.encoder import load_tokenizer

log = logging.getLogger(__name__)

ENDPOINTS = frozenset({"/rerank", "/v1/rerank", "/v2/rerank", "/score", "/health", "/info", "/metrics"})
ERRORS = {413: {"model": ErrorBody, "description": "body or pair too large"},
          422: {"model": ErrorBody, "description": "invalid request (the field is named)"},
          500: {"model": ErrorBody, "description": "scoring failed"},
          503: {"model": ErrorBody, "description": "overloaded or shutting down"}}


@dataclass(frozen=True)
class ServerLimits:
    """max_documents: documents (items) per request; max_body_bytes: request body size."""

    max_documents: int = 1000
    max_body_bytes: int = 4 * 2**20


def _field(loc: Sequence) -> str | None:
    """('body', 'documents', 3, 'text') -> 'documents[3].text'."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in ("str", "int", "float", "bool", "list[str]") and not str(part).startswith(("dict[", "function-")):
            out += f".{part}" if out else str(part)
    return out or ("body" if loc and loc[0] == "body" else None)


def create_app(model: ServedModel, limits: ServerLimits = ServerLimits(),
               batch_limits: BatchLimits = BatchLimits(), tokenizer=None) -> FastAPI:
    config = model.config
    tok = PairTokenizer(tokenizer if tokenizer is not None else load_tokenizer(config.tokenizer), config.max_length)
    scores = Scores(config)
    columns = PairColumns({}, tuple(config.text_fields or ()))
    _, ScoreRequest = score_models(config.text_fields)
    metrics = ServerMetrics()
    batcher = DynamicBatcher(model.scorer, tok.pad_id, batch_limits, on_batch=metrics.on_batch)
    metrics.queued.set_function(lambda: batcher.queued_pairs)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        try:
            yield
        finally:  # uvicorn has drained the requests in flight; score what is left, then stop
            await run_in_threadpool(batcher.stop)
            model.close()

    app = FastAPI(title="lrkd serve", version="1", lifespan=lifespan,
                  description="A distilled relevance student behind the rerank APIs search stacks call "
                              "(TEI, Cohere, Jina) and lrkd's own structured scoring.")
    app.state.batcher, app.state.metrics, app.state.model = batcher, metrics, model
    app.add_middleware(GuardMiddleware, metrics=metrics, max_body_bytes=limits.max_body_bytes, endpoints=ENDPOINTS)

    # --------------------------------------------------------------------------- errors
    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
        field = _field(first.get("loc", ()))
        message = f"{field}: {first.get('msg')}" if field else str(first.get("msg"))
        if first.get("type") == "json_invalid":
            message, field = f"the body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})", "body"
        body = error_body(message, "validation", field)
        body["errors"] = [{"field": _field(e.get("loc", ())), "message": e.get("msg"), "type": e.get("type")}
                          for e in errors[:20]]
        return JSONResponse(body, status_code=422)

    @app.exception_handler(RequestError)
    async def bad_request(request, exc: RequestError):
        kind = "payload_too_large" if exc.status == 413 else "validation"
        message = f"{exc.field}: {exc}" if exc.field else str(exc)
        return JSONResponse(error_body(message, kind, exc.field), status_code=exc.status)

    @app.exception_handler(ScoringError)
    async def scoring_failed(request, exc: ScoringError):
        return JSONResponse(error_body(f"scoring failed: {exc}", "scoring"), status_code=500)

    @app.exception_handler(Overloaded)
    async def overloaded(request, exc: Overloaded):
        return JSONResponse(error_body(f"overloaded: {exc}", "overloaded"), status_code=503,
                            headers={"Retry-After": "1"})

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http")
        return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request, exc: Exception):
        log.exception("unexpected error")
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "internal"), status_code=500)

    # -------------------------------------------------------------------------- scoring
    def check_count(n: int, field: str) -> None:
        if n > limits.max_documents:
            raise RequestError(f"{n} documents, more than the limit of {limits.max_documents}", field)

    async def probabilities(query: str, items: list[str], **options):
        ids, types = await run_in_threadpool(lambda: tok(query, items, **options))
        return await batcher.score(ids, types), sum(len(x) for x in ids)

    @app.post("/rerank", response_model=list[TeiRank], response_model_exclude_none=True, tags=["rerank"],
              responses=ERRORS, summary="TEI rerank: texts by descending score")
    async def tei_rerank(req: TeiRerankRequest):
        check_count(len(req.texts), "texts")
        query = tok.query(req.query)
        probs, _ = await probabilities(query, [t.strip() for t in req.texts], truncate=req.truncate is not False,
                                       left=req.truncation_direction.lower() == "left", field="texts")
        values = scores.expected_relevance(probs) if req.raw_scores else scores.normalised(probs)
        out = [{"index": i, "score": float(values[i]), **({"text": req.texts[i]} if req.return_text else {})}
               for i in ranked(values)]
        return JSONResponse(out)

    async def cohere(req: CohereRerankRequest, version: str):
        check_count(len(req.documents), "documents")
        if req.relevant_spans is not None:
            raise RequestError("relevant spans are not supported", "relevant_spans")
        query = tok.query(req.query)
        texts = [_document_text(d, i, req.rank_fields) for i, d in enumerate(req.documents)]
        probs, tokens = await probabilities(query, texts, max_item_tokens=req.max_tokens_per_doc, field="documents")
        values = scores.normalised(probs)
        with_docs = req.return_documents if req.return_documents is not None else version == "1"
        results = []
        for i in ranked(values, req.top_n):
            result = {"index": i, "relevance_score": float(values[i])}
            if with_docs:
                doc = req.documents[i]
                result["document"] = {"text": doc} if isinstance(doc, str) else dict(doc)
            results.append(result)
        return JSONResponse({"id": str(uuid.uuid4()), "results": results, "model": model.name,
                             "usage": {"total_tokens": tokens},
                             "meta": {"api_version": {"version": version},
                                      "billed_units": {"search_units": 1}, "tokens": {"input_tokens": tokens}}})

    @app.post("/v1/rerank", response_model=CohereRerankResponse, tags=["rerank"], responses=ERRORS,
              summary="Cohere v1 / Jina rerank")
    async def cohere_v1(req: CohereRerankRequest):
        return await cohere(req, "1")

    @app.post("/v2/rerank", response_model=CohereRerankResponse, tags=["rerank"], responses=ERRORS,
              summary="Cohere v2 rerank")
    async def cohere_v2(req: CohereRerankRequest):
        return await cohere(req, "2")

    @app.post("/score", response_model=ScoreResponse, tags=["score"], responses=ERRORS,
              summary="lrkd: grade, P(grade) and expected relevance of structured items, as lrkd predict")
    async def score(req: ScoreRequest):  # type: ignore[valid-type]
        check_count(len(req.items), "items")
        query = tok.query(req.query)
        items = []
        for i, item in enumerate(req.items):
            values = {"query": query, "item_title": item.title, **{f: getattr(item, f) for f in columns.text_fields}}
            try:
                items.append(columns.texts(values)[1])
            except RowError as e:
                name = "title" if e.column == "item_title" else e.column
                raise RequestError("empty" if "empty" in str(e) else str(e), f"items[{i}].{name}") from None
        probs, _ = await probabilities(query, items)
        grades, expected = scores.grades(probs), scores.expected_relevance(probs)
        gains, normalised = probs @ scores.gains, scores.normalised(probs)
        results = [{"index": i, "id": item.id, "grade": grades[i],
                    "probs": {n: float(p) for n, p in zip(scores.names, probs[i])},
                    "expected_gain": float(gains[i]), "expected_relevance": float(expected[i]),
                    "score": float(normalised[i])} for i, item in enumerate(req.items)]
        return JSONResponse({"model": model.name, "grades": scores.names,
                             "decision": scores.rule.kind, "results": results})

    # ------------------------------------------------------------------------ the server
    @app.get("/health", tags=["server"], summary="200 while the server serves")
    async def health():
        return {"status": "ok"}

    @app.get("/info", tags=["server"], summary="the model: grades, decision rule, max length, limits")
    async def info():
        label_set = config.label_set
        return {"model": model.name, "source": model.source, "backend": model.backend, "precision": model.precision,
                "grades": [{"name": n, "gain": g, "value": v}
                           for n, g, v in zip(label_set.names, label_set.gains, label_set.values)],
                "relevant_up_to": label_set.relevant_up_to,
                "decision": dict(config.decision) if config.decision else {"kind": "argmax"},
                "max_length": config.max_length, "text_fields": list(config.text_fields or ()),
                "score": "expected relevance sum_c P(c) * value_c, mapped to [0, 1] by the values' range "
                         "(TEI raw_scores: unmapped)",
                "limits": asdict(limits), "batching": asdict(batch_limits)}

    @app.get("/metrics", tags=["server"], summary="Prometheus metrics")
    async def prometheus():
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


def _document_text(doc, i: int, rank_fields: list[str] | None) -> str:
    """A Cohere document as the item text: a string as it is; an object's ``text``, or its
    ``rank_fields`` (the first as the title, the others as ``"<Field>: value"``, as lrkd.data.encode.item_text)."""
    if isinstance(doc, str):
        return doc.strip()
    fields = list(rank_fields or ["text"])
    for f in fields:
        if f not in doc:
            raise RequestError(f"the document has no {f!r} field", f"documents[{i}].{f}")
    return item_text({"item_title": doc[fields[0]], **{f: doc[f] for f in fields[1:]}}, fields[1:])


__all__ = ["create_app", "ServerLimits", "ENDPOINTS"]
