"""A transfer pool built the way a search log is: each train query with its top-k catalogue items.

The teacher can annotate more pairs than were judged. :func:`build_pool` pairs every TRAIN query
with the ``k`` items a first-stage retriever ranks highest for it in a product catalogue (the items
already judged for that query left out), as new unlabelled schema rows (``label`` =
:data:`~lrkd.schema.UNLABELLED`, ``relevance`` NaN). Val and test queries never enter it.

A catalogue is a table (Parquet, CSV or JSONL; :func:`lrkd.data.sources.read_table`) with one row
per item and the schema's item columns: ``item_title``, ``item_id`` (the dataset's id convention,
so that judged items are recognised; when absent it is derived from the title as
:func:`lrkd.data.sources.item_id_for` does for a table without item ids) and the dataset's text
field columns under their schema names. Items are shown to the retriever, and later to the models,
as :func:`lrkd.data.encode.item_text` renders them.

Retrievers:

- ``bm25``:   Okapi BM25 (``bm25s``, Lucene variant, k1 1.5, b 0.75) over the lower-cased word
  tokens of the item text, English stop words removed. Only items that share a term with the
  query are retrieved, so a query may get fewer than k.
- ``minilm``: cosine similarity of mean-pooled ``sentence-transformers/all-MiniLM-L6-v2``
  embeddings (the offline packaged copy, :func:`lrkd.encoders.resolve_model_path`) of the query and
  the item text (128 tokens), on the CPU by default so that every machine ranks alike; scores are
  rounded to 1e-5 before ranking.

Deterministic: equal scores are ordered by a permutation of the catalogue drawn from ``seed``
(not by file position, which would favour whatever the catalogue lists first).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import bm25s
import numpy as np
import pandas as pd
import torch
from transformers import AutoTokenizer

from lrkd.data.encode import item_texts
from lrkd.schema import UNLABELLED, DataError, text_fields
from lrkd.data.sources import text_column, item_id_for, read_table
from lrkd.encoders import load_encoder, mean_over_tokens, resolve_model_path
from lrkd.utils import atomic_path

log = logging.getLogger(__name__)

RETRIEVERS = ("bm25", "minilm")
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_MAX_LENGTH = 128  # the length all-MiniLM-L6-v2 was trained at; 256 doubles the CPU time
# Bump when the rows build_pool returns for the same inputs change: cached pools then miss.
POOL_VERSION = 1
POOL_OPTIONS = ("catalogue", "retriever", "k", "seed", "device")


# ------------------------------------------------------------------------------------ catalogue
def load_catalogue(path: str | os.PathLike, fields: Sequence[str], format: str = "auto") -> pd.DataFrame:
    """The catalogue at ``path`` as a frame of ``item_id``, ``item_title`` and ``fields`` (str; a
    missing value is ""), one row per item id (the first row of a repeated id wins), file order.

    fields: the dataset's text field columns (``text_fields(frame)``); each must be a column.
    """
    table = read_table(path, format=format)
    missing = [c for c in ["item_title", *fields] if c not in table.frame.columns]
    if missing:
        raise DataError(f"the catalogue has no column(s) {missing}; it needs item_title, optionally "
                        f"item_id, and the dataset's text fields {list(fields)} (schema names)",
                        path=str(path), column=missing[0])
    title = text_column(table, "item_title", "item title", required=True)
    if "item_id" in table.frame.columns:
        item_id = text_column(table, "item_id", "item id", required=True)
    else:
        item_id = [item_id_for(t) for t in title]
    data = {"item_id": item_id, "item_title": title,
            **{f: text_column(table, f, f, required=False) for f in fields}}
    df = pd.DataFrame(data)
    df = df[~df["item_id"].duplicated()].reset_index(drop=True)
    df.attrs["text_fields"] = list(fields)
    return df


# ------------------------------------------------------------------------------------ retrievers
ScoreBlocks = Iterator[tuple[int, np.ndarray]]  # (first query index, scores [q, N] float)


def bm25_scores(queries: Sequence[str], items: Sequence[str]) -> ScoreBlocks:
    """BM25 score of every item for each query, one query at a time: (i, [1, N] float32)."""
    corpus = bm25s.tokenize(list(items), stopwords="en", show_progress=False)
    retriever = bm25s.BM25()
    retriever.index(corpus, show_progress=False)
    query_tokens = bm25s.tokenize(list(queries), stopwords="en", return_ids=False, show_progress=False)
    for i, tokens in enumerate(query_tokens):
        ids = retriever.get_tokens_ids(list(tokens))
        scores = (np.asarray(retriever.get_scores_from_ids(ids), dtype=np.float32) if ids
                  else np.zeros(len(items), dtype=np.float32))  # no known term: nothing retrieved
        yield i, scores[None, :]


def embed_texts(texts: Sequence[str], model, tokenizer, device: str = "cpu", batch_size: int = 64,
                max_length: int = MINILM_MAX_LENGTH) -> np.ndarray:
    """Unit-length mean-pooled embeddings [N, H] float32, batches of similar lengths."""

    texts = [str(t) for t in texts]
    lengths = [len(t) for t in texts]
    order = np.argsort(lengths, kind="stable")[::-1]
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            rows = order[start:start + batch_size]
            enc = tokenizer([texts[r] for r in rows], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt").to(device)
            hidden = model(**enc).last_hidden_state
            vectors = torch.nn.functional.normalize(mean_over_tokens(hidden, enc["attention_mask"]).float(), dim=-1)
            out[rows] = vectors.cpu().numpy()
    return out


def minilm_scores(queries: Sequence[str], items: Sequence[str], device: str = "cpu",
                  block: int = 256) -> ScoreBlocks:
    """Cosine similarity of MiniLM embeddings, rounded to 1e-5: (i, [<= block, N] float32)."""

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(MINILM))
    model = load_encoder(MINILM).to(device)
    item_vectors = embed_texts(items, model, tokenizer, device)
    query_vectors = embed_texts(queries, model, tokenizer, device)
    for start in range(0, len(queries), block):
        yield start, np.round(query_vectors[start:start + block] @ item_vectors.T, 5)


def _score_blocks(retriever: str, queries: Sequence[str], items: Sequence[str], device: str) -> ScoreBlocks:
    if retriever == "bm25":
        return bm25_scores(queries, items)
    if retriever == "minilm":
        return minilm_scores(queries, items, device=device)
    raise ValueError(f"unknown pool retriever {retriever!r}; choose one of {RETRIEVERS}")


def top_k(scores: np.ndarray, k: int, tie_rank: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Indices of the (at most) k highest ``scores`` [N] among ``allowed`` [N] bool, best first;
    equal scores ordered by ``tie_rank`` [N] (lower first)."""
    candidates = np.flatnonzero(allowed)
    if len(candidates) > k:
        kth = np.partition(scores[candidates], len(candidates) - k)[len(candidates) - k]
        candidates = candidates[scores[candidates] >= kth]  # the k best and everything tied with the k-th
    order = np.lexsort((tie_rank[candidates], -scores[candidates]))
    return candidates[order[:k]]


def rank_catalogue(queries: Sequence[str], items: Sequence[str], retriever: str = "bm25", k: int = 10,
                   seed: int = 0, device: str = "cpu") -> list[tuple[np.ndarray, np.ndarray]]:
    """Per query: (positions in ``items`` of its top-k items, best first; their scores [<= k]
    float32), ranked as :func:`build_pool` ranks (the same retrievers, BM25 floor and seeded tie
    order), nothing left out. ``items``: the item texts (:func:`lrkd.data.encode.item_texts`)."""
    if retriever not in RETRIEVERS:
        raise ValueError(f"unknown retriever {retriever!r}; choose one of {RETRIEVERS}")
    tie_rank = np.empty(len(items), dtype=np.int64)
    tie_rank[np.random.default_rng(int(seed)).permutation(len(items))] = np.arange(len(items))
    floor = 0.0 if retriever == "bm25" else -np.inf
    out: list = [None] * len(queries)
    if not len(queries) or not len(items):
        return [(np.empty(0, np.int64), np.empty(0, np.float32)) for _ in queries]
    for start, block in _score_blocks(retriever, queries, items, device):
        for j, scores in enumerate(block):
            picks = top_k(scores, int(k), tie_rank, scores > floor)
            out[start + j] = (picks, scores[picks].astype(np.float32))
    return out


# ---------------------------------------------------------------------------------------- pool
def pool_columns(frame: pd.DataFrame) -> list[str]:
    """The schema columns of ``frame`` in the order a pool frame carries them."""
    fields = text_fields(frame)
    columns = ["query_id", "query", "item_id", "item_title", *fields, "label"]
    return columns + (["relevance"] if "relevance" in frame.columns else [])


def build_pool(frame: pd.DataFrame, train_rows: Sequence[int], catalogue: pd.DataFrame,
               retriever: str = "bm25", k: int = 10, seed: int = 0, device: str = "cpu") -> pd.DataFrame:
    """Unlabelled (train query, catalogue item) rows: per train query, its top-k catalogue items.

    frame:      the schema DataFrame of judged pairs.
    train_rows: positions in ``frame`` of the train split; only their queries get pool rows.
    catalogue:  items (:func:`load_catalogue`): ``item_id``, ``item_title`` and the text fields of
                ``frame`` (columns named by ``text_fields(frame)``).
    retriever:  "bm25" or "minilm" (see the module docstring); k: items per query (>= 1).
    seed:       orders equal scores (a seeded permutation of the catalogue).
    device:     torch device of the "minilm" encoder.

    Returns a schema frame (``pool_columns(frame)``; label UNLABELLED, relevance NaN, text fields as
    ``frame.attrs["text_fields"]``), one block per train query in order of first appearance among
    ``train_rows``, items best first. An item already judged for the query (any row of ``frame``
    with its query_id) is never among them, nor is the same item twice.
    """
    if retriever not in RETRIEVERS:
        raise ValueError(f"unknown pool retriever {retriever!r}; choose one of {RETRIEVERS}")
    if int(k) < 1:
        raise ValueError(f"pool k must be >= 1, got {k}")
    k = int(k)
    fields = text_fields(frame)
    absent = [c for c in ["item_id", "item_title", *fields] if c not in catalogue.columns]
    if absent:
        raise DataError(f"the catalogue has no column(s) {absent} (the dataset's item columns)", column=absent[0])
    catalogue = catalogue[~catalogue["item_id"].astype(str).duplicated()].reset_index(drop=True)
    catalogue.attrs["text_fields"] = list(fields)

    train = frame.iloc[np.asarray(train_rows, dtype=np.int64)]
    first = train.drop_duplicates("query_id")
    query_ids, queries = first["query_id"].astype(str).tolist(), first["query"].astype(str).tolist()
    columns = pool_columns(frame)
    if not query_ids or len(catalogue) == 0:
        return _frame(columns, fields, {c: [] for c in columns})

    item_ids = catalogue["item_id"].astype(str).to_numpy()
    position = {item: i for i, item in enumerate(item_ids)}
    judged: dict[str, list[int]] = {}  # query id -> catalogue positions of its judged items
    for query_id, item_id in zip(frame["query_id"].astype(str), frame["item_id"].astype(str)):
        if item_id in position:
            judged.setdefault(query_id, []).append(position[item_id])
    tie_rank = np.empty(len(catalogue), dtype=np.int64)
    tie_rank[np.random.default_rng(int(seed)).permutation(len(catalogue))] = np.arange(len(catalogue))

    started = time.perf_counter()
    chosen: list[np.ndarray] = [np.empty(0, np.int64)] * len(query_ids)
    floor = 0.0 if retriever == "bm25" else -np.inf  # BM25: only items sharing a term with the query
    for start, block in _score_blocks(retriever, queries, item_texts(catalogue), device):
        for j, scores in enumerate(block):
            q = start + j
            allowed = scores > floor
            allowed[judged.get(query_ids[q], [])] = False
            chosen[q] = top_k(scores, k, tie_rank, allowed)

    counts = np.array([len(c) for c in chosen], dtype=np.int64)
    picks = np.concatenate(chosen) if counts.sum() else np.empty(0, np.int64)
    items = catalogue.iloc[picks]
    data = {"query_id": np.repeat(query_ids, counts).tolist(), "query": np.repeat(queries, counts).tolist(),
            "item_id": items["item_id"].astype(str).tolist(), "item_title": items["item_title"].tolist(),
            **{f: items[f].tolist() for f in fields},
            "label": np.full(len(picks), UNLABELLED, dtype=np.int64)}
    if "relevance" in columns:
        data["relevance"] = np.full(len(picks), np.nan, dtype=np.float64)
    log.info("pool (%s, k=%d): %d pairs for %d train queries from %d catalogue items in %.1fs", retriever, k,
             len(picks), len(query_ids), len(catalogue), time.perf_counter() - started)
    return _frame(columns, fields, data)


def _frame(columns: list[str], fields: list[str], data: Mapping) -> pd.DataFrame:
    df = pd.DataFrame({c: data[c] for c in columns}, columns=columns)
    for c in columns:
        if c == "label":
            df[c] = df[c].astype(np.int64)
        elif c == "relevance":
            df[c] = df[c].astype(np.float64)
        else:
            df[c] = df[c].astype(object)
    df.attrs["text_fields"] = list(fields)
    return df


# -------------------------------------------------------------------------------- cache and config
def pool_options(pool: Mapping | None) -> dict | None:
    """A ``data.pool`` config mapping, checked and completed: {catalogue, retriever, k, seed, device}
    (None stays None: no pool)."""
    if pool is None:
        return None
    pool = dict(pool)
    unknown = sorted(set(pool) - set(POOL_OPTIONS))
    if unknown:
        raise ValueError(f"data.pool: unknown option(s) {unknown}; expected {list(POOL_OPTIONS)}")
    if not pool.get("catalogue"):
        raise ValueError("data.pool needs a catalogue (a Parquet, CSV or JSONL file of items)")
    options = {"catalogue": str(pool["catalogue"]), "retriever": str(pool.get("retriever") or "bm25"),
               "k": int(pool.get("k", 10)), "seed": int(pool.get("seed", 0) or 0),
               "device": str(pool.get("device") or "cpu")}
    if options["retriever"] not in RETRIEVERS:
        raise ValueError(f"data.pool.retriever must be one of {RETRIEVERS}, got {options['retriever']!r}")
    if options["k"] < 1:
        raise ValueError(f"data.pool.k must be >= 1, got {options['k']}")
    return options


def _file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pool_cache_key(fingerprint: str, train_query_ids: Sequence[str], catalogue_sha256: str,
                   retriever: str, k: int, seed: int) -> str:
    """sha256 over what a pool depends on (the device is left out: it should not change the pool)."""
    spec = {"dataset": fingerprint, "train_queries": sorted(set(map(str, train_query_ids))),
            "catalogue": catalogue_sha256, "retriever": retriever, "k": int(k), "seed": int(seed),
            "version": POOL_VERSION}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode("utf-8")).hexdigest()


def cached_pool(frame: pd.DataFrame, train_rows: Sequence[int], options: Mapping, cache_dir: str | os.PathLike,
                fingerprint: str, build: Callable[..., pd.DataFrame] = build_pool) -> tuple[pd.DataFrame, bool]:
    """:func:`build_pool` for ``options`` (:func:`pool_options`), read from
    ``<cache_dir>/pool/<key>.parquet`` when an earlier call wrote it: (pool frame, hit).

    fingerprint: ``dataset_fingerprint(frame)``.
    """
    path_in = Path(options["catalogue"]).expanduser()
    if not path_in.is_file():
        raise DataError("pool catalogue not found", path=str(path_in))
    train_ids = frame["query_id"].iloc[np.asarray(train_rows, dtype=np.int64)].astype(str).tolist()
    key = pool_cache_key(fingerprint, train_ids, _file_sha256(path_in), options["retriever"],
                         options["k"], options["seed"])
    path = Path(cache_dir) / "pool" / f"{key}.parquet"
    columns, fields = pool_columns(frame), text_fields(frame)
    if path.exists():
        try:
            df = pd.read_parquet(path)
            df = _frame(columns, fields, {c: df[c].tolist() for c in columns})
            log.info("pool cache hit: %s (%d pairs)", path, len(df))
            return df, True
        except Exception as err:  # a truncated or foreign file: rebuild it
            log.warning("unreadable pool cache entry %s (%s); rebuilding", path, err)
    catalogue = load_catalogue(path_in, fields)
    df = build(frame, train_rows, catalogue, retriever=options["retriever"], k=options["k"],
               seed=options["seed"], device=options["device"])
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, compression="zstd", index=False)
    log.info("pool cache written: %s (%d pairs)", path, len(df))
    return df, False
