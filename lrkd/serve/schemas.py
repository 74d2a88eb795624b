"""The HTTP API's request and response bodies (pydantic; FastAPI turns them into the OpenAPI schema).

Every request model is strict about types (a number is not a string, "5" is not an integer).
Unknown fields: lrkd's own ``/score`` and the Cohere/Jina bodies reject them (422 naming the field);
the Cohere bodies accept every field the Cohere SDKs send, including those lrkd ignores. TEI's
``/rerank`` ignores them, as TEI does.
"""
from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

STRICT = ConfigDict(strict=True, extra="forbid")


class ErrorBody(BaseModel):
    """Every error: ``error`` (and ``message``, its copy for Cohere-style clients), ``error_type``
    (validation, payload_too_large, overloaded, scoring, not_found, ...) and ``field``: where in the
    request the problem is (``texts[3]``, ``documents``, ``body``), when it is in one place."""

    error: str
    message: str
    error_type: str
    field: Optional[str] = None


# ------------------------------------------------------------------------------------- TEI
class TeiRerankRequest(BaseModel):
    """Hugging Face text-embeddings-inference ``POST /rerank``."""

    model_config = ConfigDict(strict=True, extra="ignore")
    query: str = Field(examples=["usb c charger 20w"])
    texts: list[str] = Field(min_length=1, examples=[["Anker 20W USB-C wall charger", "HDMI cable 2 m"]])
    truncate: Optional[bool] = Field(None, description="cut pairs longer than the model reads (the default, "
                                     "as the student was trained); false: such a pair is an error (413)")
    truncation_direction: Literal["Right", "Left", "right", "left"] = Field(
        "Right", description="which end of the text is cut: Right (its end) or Left (its start)")
    raw_scores: bool = Field(False, description="score = the expected relevance in the label set's values "
                             "instead of its [0, 1] form")
    return_text: bool = False


class TeiRank(BaseModel):
    index: int
    score: float
    text: Optional[str] = None


# ------------------------------------------------------------------------------- Cohere, Jina
Document = Union[str, dict[str, str]]


class CohereRerankRequest(BaseModel):
    """Cohere ``POST /v1/rerank`` and ``/v2/rerank`` (also Jina's and llama-server's shape).
    ``documents``: strings, or objects whose ``text`` (or ``rank_fields``) is scored."""

    model_config = STRICT
    model: Optional[str] = Field(None, description="any name: the server serves one model and reports its own")
    query: str = Field(examples=["usb c charger 20w"])
    documents: list[Document] = Field(min_length=1, examples=[["Anker 20W USB-C wall charger", "HDMI cable 2 m"]])
    top_n: Optional[int] = Field(None, ge=1, description="return the best top_n (default all)")
    return_documents: Optional[bool] = Field(None, description="include each document (v1 default true for "
                                             "compatibility with Jina, v2 default false)")
    rank_fields: Optional[list[str]] = Field(None, description="v1, object documents: the fields scored, in "
                                             "order (the first as the title; default text)")
    max_chunks_per_doc: Optional[int] = Field(None, ge=1, description="v1: accepted, ignored (no chunking)")
    max_tokens_per_doc: Optional[int] = Field(None, ge=1, description="v2: each document cut to this many tokens")
    relevant_spans: Optional[dict] = Field(None, description="not supported: must be absent or null")
    priority: Optional[int] = Field(None, description="accepted, ignored")


class CohereDocument(BaseModel):
    text: Optional[str] = None
    model_config = ConfigDict(extra="allow")


class CohereResult(BaseModel):
    index: int
    relevance_score: float
    document: Optional[CohereDocument] = None


class Usage(BaseModel):
    total_tokens: int


class CohereRerankResponse(BaseModel):
    id: str
    results: list[CohereResult]
    meta: dict
    model: str
    usage: Usage


# --------------------------------------------------------------------------------- /score
class ScoreResult(BaseModel):
    """One item, as ``lrkd predict`` scores it: ``grade`` (the saved decision rule),
    ``probs`` (P(grade), label-set order), ``expected_gain``, ``expected_relevance``; ``score``:
    expected relevance in [0, 1]."""

    index: int
    id: Optional[Union[str, int]] = None
    grade: str
    probs: dict[str, float]
    expected_gain: float
    expected_relevance: float
    score: float


class ScoreResponse(BaseModel):
    model: str
    grades: list[str]
    decision: str
    results: list[ScoreResult]


def score_models(text_fields: tuple[str, ...] | None):
    """(item model, request model) of ``POST /score`` for a student whose items have ``text_fields``
    after the title (each optional; text or a number, as predict reads file cells)."""
    cell = Optional[Union[str, int, float]]
    fields = {name: (cell, Field(None, description=f"item text field {name!r}")) for name in (text_fields or ())}
    item = create_model("ScoreItem", __config__=STRICT,
                        id=(Optional[Union[str, int]], Field(None, description="returned with the result")),
                        title=(Union[str, int, float], Field(description="the item title")), **fields)
    request = create_model("ScoreRequest", __config__=STRICT,
                           query=(str, Field(examples=["usb c charger 20w"])),
                           items=(list[item], Field(min_length=1)),
                           model=(Optional[str], Field(None, description="any name (one model is served)")))
    return item, request


__all__ = ["ErrorBody", "TeiRerankRequest", "TeiRank", "CohereRerankRequest", "CohereResult", "CohereDocument",
           "CohereRerankResponse", "ScoreResult", "ScoreResponse", "score_models", "Usage"]
