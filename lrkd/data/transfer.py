"""Generated queries and the transfer pairs they give the student (the data side of
``stage=teacher_queries``; the teacher writes the queries in :mod:`lrkd.teacher.label.queries`).

:func:`filter_queries` decides which generated queries stay, in this order (the first failing check
is a query's ``reason``):

1. ``empty`` / ``too_long`` / ``title_echo``: nothing parsed, more than ``max_words`` words or
   ``max_chars`` characters, or the product's title again (equal after :func:`normalise_query`, or a
   prefix of the title holding >= ``echo_fraction`` of its characters);
2. ``leak_text`` / ``leak_embedding``: equal to a query of the dataset (the same :func:`query_key`:
   normalised, punctuation, plurals, spacing and word order aside), or within
   cosine ``threshold`` of one (all-MiniLM-L6-v2, :func:`lrkd.data.pool.embed_texts`). Every query of
   the dataset counts, whatever its split: with cross-validation each one is a test query once;
3. ``not_retrieved``: its own product is not among its top ``k`` catalogue items by BM25
   (:func:`lrkd.data.pool.rank_catalogue`, the pool's retriever);
4. ``duplicate``: a query kept earlier (in sample order) has the same :func:`query_key`.

:func:`candidate_pairs` then pairs each kept query (id ``gen-`` + sha1 of its normalised text) with
its top-k catalogue items (bm25 | minilm): the transfer table, written by :func:`write_transfer` as
a small parquet file (query_id, query, item_id, source_item_id, rank, score) whose metadata names the
catalogue (path and sha256) and the dataset. ``data.transfer`` (:func:`append_transfer`) adds its
pairs to the train split as unlabelled rows, item text from that catalogue, as ``data.pool`` does.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from transformers import AutoTokenizer

from lrkd.data.encode import item_texts, normalise_query
from lrkd.data.pool import (MINILM, RETRIEVERS, _file_sha256, _frame, embed_texts, load_catalogue, pool_columns,
                            rank_catalogue)
from lrkd.encoders import load_encoder, resolve_model_path
from lrkd.schema import UNLABELLED, DataError, text_fields
from lrkd.utils import atomic_path

log = logging.getLogger(__name__)

GENERATED_PREFIX = "gen-"
TRANSFER_COLUMNS = ("query_id", "query", "item_id", "source_item_id", "rank", "score")
METADATA_KEY = b"lrkd_transfer"
TRANSFER_VERSION = 1
REASONS = ("empty", "too_long", "title_echo", "leak_text", "leak_embedding", "not_retrieved", "duplicate")


def generated_query_id(query: str) -> str:
    """``gen-`` + the first 12 hex digits of sha1(normalised query): never a dataset's query id."""
    return GENERATED_PREFIX + hashlib.sha1(normalise_query(query).encode("utf-8")).hexdigest()[:12]


def _singular(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def query_key(query: str) -> str:
    """The identity of a query for the leak check and the dedupe: :func:`normalise_query`, then
    punctuation to spaces, each word made singular (a trailing s / ies), the words sorted and joined
    without spaces: "Laptops" and "laptop!" share "laptop"'s key, "smart watch" and "smart-watch"
    share "smartwatch"'s, "bag laptop" shares "laptop bag"'s."""
    text = "".join(c if c.isalnum() else " " for c in normalise_query(query))
    return "".join(sorted(_singular(w) for w in text.split()))


def query_problem(query: str, title: str, max_words: int, max_chars: int, echo_fraction: float = 0.8) -> str | None:
    """Why a parsed query is unusable (``empty``, ``too_long``, ``title_echo``), or None."""
    q, t = normalise_query(query), normalise_query(title)
    if not any(c.isalnum() for c in q):
        return "empty"
    if len(q.split()) > int(max_words) or len(q) > int(max_chars):
        return "too_long"
    if q == t or (t.startswith(q) and len(q) >= float(echo_fraction) * len(t)):
        return "title_echo"
    return None


def sample_products(catalogue: pd.DataFrame, n: int, seed: int, exclude: Sequence[str] = ()) -> np.ndarray:
    """Positions of ``n`` catalogue products in a seeded order, ``exclude``'s item ids left out; a
    larger ``n`` extends the sample of a smaller one (same seed)."""
    ids = catalogue["item_id"].astype(str).to_numpy()
    order = np.random.default_rng(int(seed)).permutation(len(ids))
    return order[~np.isin(ids[order], list(map(str, exclude)))][:int(n)]


def embed_queries(texts: Sequence[str], device: str = "cpu") -> np.ndarray:
    """Unit-length all-MiniLM-L6-v2 embeddings [n, 384] of short texts (the packaged offline copy)."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(MINILM))
    model = load_encoder(MINILM).to(device).eval()
    return embed_texts(list(texts), model, tokenizer, device, max_length=32)


def leak_check(queries: Sequence[str], labelled: Sequence[str], threshold: float,
               device: str = "cpu") -> tuple[list[str | None], list[str], np.ndarray]:
    """Per query: (``leak_text`` | ``leak_embedding`` | None, the nearest labelled query, its cosine)
    against every ``labelled`` query: the same :func:`query_key`, or cosine >= ``threshold``."""
    labelled = sorted({" ".join(str(q).split()) for q in labelled})
    if not len(queries):
        return [], [], np.zeros(0, dtype=np.float32)
    if not labelled:
        return [None] * len(queries), [""] * len(queries), np.full(len(queries), -1.0, np.float32)
    vectors = embed_queries(list(queries) + labelled, device)
    cosine = vectors[:len(queries)] @ vectors[len(queries):].T
    nearest = cosine.argmax(axis=1)
    best = cosine[np.arange(len(queries)), nearest].astype(np.float32)
    same = {query_key(q) for q in labelled}
    reasons = [("leak_text" if query_key(q) in same else "leak_embedding" if b >= float(threshold) else None)
               for q, b in zip(queries, best)]
    return reasons, [labelled[i] for i in nearest], best


def filter_queries(generated: pd.DataFrame, catalogue: pd.DataFrame, labelled_queries: Sequence[str], *,
                   max_words: int = 8, max_chars: int = 80, echo_fraction: float = 0.8, leak_threshold: float = 0.9,
                   retrieval_k: int = 10, seed: int = 0, device: str = "cpu") -> tuple[pd.DataFrame, dict]:
    """The filters of the module docstring. ``generated``: item_id, query (parsed), in sample order;
    ``catalogue``: :func:`lrkd.data.pool.load_catalogue`'s frame holding those items. Returns (one row per
    generation: item_id, query, query_id, reason (None = kept), nearest_labelled, nearest_cosine,
    source_rank (1-based rank of the product for its query; 0 = not in the top ``retrieval_k``;
    -1 = not ranked), and the count of queries left after each step)."""
    out = generated[["item_id", "query"]].copy().reset_index(drop=True)
    out["item_id"], out["query"] = out["item_id"].astype(str), out["query"].fillna("").astype(str)
    position = {item: i for i, item in enumerate(catalogue["item_id"].astype(str))}
    missing = sorted(set(out["item_id"]) - set(position))
    if missing:
        raise DataError(f"{len(missing)} generated product(s) are not in the catalogue, e.g. {missing[:3]}")
    titles = catalogue["item_title"].astype(str).to_numpy()
    reason = [query_problem(q, titles[position[i]], max_words, max_chars, echo_fraction)
              for q, i in zip(out["query"], out["item_id"])]
    counts = {"generated": len(out)}
    counts["parsed"] = sum(r is None for r in reason)
    alive = [j for j, r in enumerate(reason) if r is None]
    leaks, nearest, cosine = leak_check(out["query"].iloc[alive].tolist(), labelled_queries, leak_threshold, device)
    out["nearest_labelled"], out["nearest_cosine"] = "", np.float32(np.nan)
    for j, why, near, cos in zip(alive, leaks, nearest, cosine):
        reason[j] = why
        out.loc[j, ["nearest_labelled", "nearest_cosine"]] = [near, float(cos)]
    counts["no_leak"] = sum(r is None for r in reason)
    alive = [j for j, r in enumerate(reason) if r is None]
    ranked = rank_catalogue(out["query"].iloc[alive].tolist(), item_texts(catalogue), "bm25", retrieval_k, seed)
    source_rank = np.full(len(out), -1, dtype=np.int64)
    for j, (picks, _) in zip(alive, ranked):
        hit = np.flatnonzero(picks == position[out.loc[j, "item_id"]])
        source_rank[j] = int(hit[0]) + 1 if len(hit) else 0
        if not len(hit):
            reason[j] = "not_retrieved"
    counts["self_retrieved"] = sum(r is None for r in reason)
    seen: set[str] = set()
    for j in range(len(out)):
        if reason[j] is None:
            key = query_key(out.loc[j, "query"])
            reason[j] = "duplicate" if key in seen else None
            seen.add(key)
    counts["kept"] = sum(r is None for r in reason)
    out["reason"] = pd.Series(reason, dtype=object)
    out["source_rank"] = source_rank
    out["query_id"] = [generated_query_id(q) if r is None else "" for q, r in zip(out["query"], reason)]
    return out, counts


def candidate_pairs(kept: pd.DataFrame, catalogue: pd.DataFrame, retriever: str = "bm25", k: int = 8, seed: int = 0,
                    device: str = "cpu") -> pd.DataFrame:
    """The transfer table: per kept query (query_id, query, item_id of its source product), its top-k
    catalogue items by ``retriever``: query_id, query, item_id, source_item_id, rank (1-based), score."""
    if retriever not in RETRIEVERS:
        raise ValueError(f"the candidates' retriever must be one of {RETRIEVERS}, got {retriever!r}")
    ranked = rank_catalogue(kept["query"].tolist(), item_texts(catalogue), retriever, int(k), seed, device)
    ids = catalogue["item_id"].astype(str).to_numpy()
    rows = [(qid, q, ids[p], src, r + 1, float(s))
            for qid, q, src, (picks, scores) in zip(kept["query_id"], kept["query"], kept["item_id"], ranked)
            for r, (p, s) in enumerate(zip(picks, scores))]
    table = pd.DataFrame(rows, columns=list(TRANSFER_COLUMNS))
    return table.astype({"rank": np.int32, "score": np.float32})


# ------------------------------------------------------------------------------------ the file
def write_transfer(table: pd.DataFrame, path: str | os.PathLike, metadata: Mapping) -> Path:
    """The transfer table as zstd parquet (atomically), ``metadata`` (catalogue, catalogue_sha256,
    dataset, ...) under the schema key ``lrkd_transfer``."""
    arrow = pa.Table.from_pandas(table[list(TRANSFER_COLUMNS)], preserve_index=False)
    record = {**dict(metadata), "version": TRANSFER_VERSION}
    arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}),
                                           METADATA_KEY: json.dumps(record, default=str).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(arrow, tmp, compression="zstd")
    return Path(path)


def read_transfer(path: str | os.PathLike) -> tuple[pd.DataFrame, dict]:
    """(the transfer table, its metadata) of a file :func:`write_transfer` wrote."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError("transfer table not found (data.transfer; written by stage=teacher_queries)", path=str(path))
    arrow = pq.read_table(path)
    missing = [c for c in TRANSFER_COLUMNS if c not in arrow.column_names]
    if missing:
        raise DataError(f"not a transfer table: no column(s) {missing}", path=str(path), column=missing[0])
    raw = (arrow.schema.metadata or {}).get(METADATA_KEY)
    return arrow.to_pandas(), (json.loads(raw) if raw else {})


def transfer_options(node) -> dict | None:
    """``data.transfer``: None, a path, or {path, catalogue (null: the one the table names)}."""
    if node is None:
        return None
    node = {"path": node} if isinstance(node, (str, os.PathLike)) else dict(node)
    unknown = sorted(set(node) - {"path", "catalogue"})
    if unknown or not node.get("path"):
        raise ValueError(f"data.transfer is a path or {{path, catalogue}}, got {node}")
    return {"path": str(node["path"]), "catalogue": str(node["catalogue"]) if node.get("catalogue") else None}


def transfer_rows(frame: pd.DataFrame, options: Mapping) -> pd.DataFrame:
    """The transfer pairs of ``options`` (:func:`transfer_options`) as unlabelled schema rows of
    ``frame``'s columns (:func:`lrkd.data.pool.pool_columns`), item text from the catalogue. Stops with
    a DataError when a query is one of ``frame``'s (by id or normalised text), when an item is not
    in the catalogue, or when the catalogue is not the one the queries were retrieved from."""
    table, meta = read_transfer(options["path"])
    catalogue_path = options.get("catalogue") or meta.get("catalogue")
    if not catalogue_path:
        raise DataError("the transfer table names no catalogue; give data.transfer.catalogue", path=options["path"])
    if not Path(catalogue_path).expanduser().is_file():
        raise DataError("the transfer table's catalogue is not there; give data.transfer.catalogue",
                        path=str(catalogue_path))
    sha = _file_sha256(Path(catalogue_path).expanduser())
    if meta.get("catalogue_sha256") and meta["catalogue_sha256"] != sha:
        raise DataError(f"the catalogue differs from the one the transfer queries were retrieved from (sha256 "
                        f"{meta['catalogue_sha256'][:12]}..., this one {sha[:12]}...)", path=str(catalogue_path))
    clash = set(table["query_id"].astype(str)) & set(frame["query_id"].astype(str))
    known = {query_key(q) for q in frame["query"].astype(str)}
    same = sorted({q for q in table["query"].astype(str) if query_key(q) in known})
    if clash or same:
        raise DataError(f"transfer queries that are queries of the dataset (ids {sorted(clash)[:3]}, texts "
                        f"{same[:3]}): a generated query may never repeat a labelled one", path=options["path"])
    fields = text_fields(frame)
    catalogue = load_catalogue(catalogue_path, fields)
    items = catalogue.set_index(catalogue["item_id"].astype(str))
    table = table.drop_duplicates(["query_id", "item_id"])
    absent = sorted(set(table["item_id"].astype(str)) - set(items.index))
    if absent:
        raise DataError(f"{len(absent)} transfer item(s) are not in the catalogue, e.g. {absent[:3]}",
                        path=str(catalogue_path))
    picked = items.loc[table["item_id"].astype(str)]
    columns = pool_columns(frame)
    data = {"query_id": table["query_id"].astype(str).tolist(), "query": table["query"].astype(str).tolist(),
            "item_id": table["item_id"].astype(str).tolist(), "item_title": picked["item_title"].tolist(),
            **{f: picked[f].tolist() for f in fields}, "label": np.full(len(table), UNLABELLED, dtype=np.int64),
            "relevance": np.full(len(table), np.nan)}
    return _frame(columns, fields, data)


def append_transfer(df: pd.DataFrame, splits: Mapping[str, np.ndarray], options: Mapping):
    """(``df`` with the transfer rows appended, the splits with them in train only, their positions)."""
    rows = transfer_rows(df, options)
    rows = rows.astype({c: df[c].dtype for c in rows.columns if c in df.columns})
    combined = pd.concat([df, rows], ignore_index=True)[list(df.columns)]
    combined.attrs["text_fields"] = list(df.attrs.get("text_fields", []))
    positions = np.arange(len(df), len(combined), dtype=np.int64)
    log.info("transfer %s: %d unlabelled pairs of %d generated queries join train", options["path"], len(rows),
             rows["query_id"].nunique())
    return combined, {**splits, "train": np.concatenate([splits["train"], positions])}, positions


__all__ = ["generated_query_id", "query_key", "query_problem", "sample_products", "embed_queries", "leak_check",
           "filter_queries", "candidate_pairs",
           "write_transfer", "read_transfer", "transfer_options", "transfer_rows", "append_transfer",
           "GENERATED_PREFIX", "TRANSFER_COLUMNS", "REASONS"]
