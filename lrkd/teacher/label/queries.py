"""New search queries from a product catalogue, written by the teacher (InPars style).

For each sampled product the teacher writes one short query a shopper would type to find it. The
prompt is one user message, cut into segments that stay in the KV cache:

    <chat header> <instruction> Examples: (Product: <item> / Query: <query>) x k     shared prefix
    Product: <the product> <end of turn> <assistant> Query:                           the product

The examples are gold pairs of the few-shot bank (train queries only: ``data.split.train_only``, or
:func:`lrkd.teacher.label.panel.choose_bank`): each bank query with one of its relevant judged
products. Generation is greedy (or sampled at ``temperature`` with a seed drawn from the product's
id, so a product's query does not depend on the order or the batch it ran in) and stops at the end
of the turn or at the first token holding a newline; :func:`parse_query` keeps the first line.

:class:`QueryWriter` is, like the readers of :mod:`lrkd.teacher.label.readers`, a one-sequence
callable (:class:`lrkd.teacher.runtime.llama_cpp.LlamaCppRuntime`) and a request program for
:class:`lrkd.teacher.runtime.batched.BatchedDecoder` (``n_seq`` products in flight).
:func:`generate_queries` runs it in worker processes into resumable parts, ``<out>/worker-<r>/
shard-<n>.parquet`` (item_id, completion, new_tokens; each shard written atomically): a killed run
resumes with the products it has, and a folder made with other settings (``settings.json``) stops
the run instead of being overwritten. The filters (leaks, self-retrieval, duplicates) and the
candidates are data work: :mod:`lrkd.data.transfer`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from transformers import AutoTokenizer

from lrkd.data.encode import item_text
from lrkd.schema import text_fields
from lrkd.teacher.label.readers import SequenceLimits
from lrkd.teacher.label.workers import (PART_PREFIX, append_progress, part_slots, run_requests, run_workers,
                                        settings_difference)
from lrkd.teacher.prompts import clip_words, prompt_add_special_tokens, render_message
from lrkd.teacher.runtime.batched import Feed, Prefix, generation
from lrkd.utils import atomic_path, write_json_atomic

log = logging.getLogger(__name__)

QUERY_INSTRUCTION = ("You write the search queries of an online shop's customers. For the product below, write "
                     "one search query that a shopper looking for it would type into the shop's search box: a few "
                     "words, lower case, naming the kind of product and, where it helps, its brand or a key "
                     "feature. Do not copy the product title. Reply with the query only.")
PRODUCT_MARK = "Product: "
QUERY_PREFIX = "Query:"
SETTINGS_FILE = "settings.json"


@dataclass(frozen=True)
class QueryExample:
    """A few-shot example: a bank query and one of its relevant judged products (its item text)."""

    query_id: str
    query: str
    item_id: str
    item: str


def choose_query_examples(frame, rows: Sequence[int], bank: Sequence[str], k: int, relevant_up_to: int,
                          seed: int) -> list[QueryExample]:
    """``k`` examples from the labelled ``rows`` of the ``bank`` queries: the bank queries in a
    seeded order, each with one of its most relevant judged products (seeded), cycling through the
    bank again while fewer than ``k`` (never the same pair twice). [] for k = 0."""
    if k <= 0:
        return []
    fields = text_fields(frame)
    rng = np.random.default_rng(int(seed))
    labels = frame["label"].to_numpy()
    qids = frame["query_id"].astype(str).to_numpy()
    rows = np.asarray(rows, dtype=np.int64)
    per_query = {}
    for q in [str(b) for b in bank]:
        mine = rows[(qids[rows] == q) & (labels[rows] >= 0) & (labels[rows] <= int(relevant_up_to))]
        if len(mine):  # the most relevant grade first, seeded within a grade
            mine = mine[rng.permutation(len(mine))]
            per_query[q] = list(mine[np.argsort(labels[mine], kind="stable")])
    if not per_query:
        raise ValueError(f"no bank query has a relevant labelled train pair (bank: {list(bank)})")
    order = [list(per_query)[i] for i in rng.permutation(len(per_query))]
    picked: list[int] = []
    while len(picked) < k and any(per_query.values()):
        for q in order:
            if per_query[q] and len(picked) < k:
                picked.append(int(per_query[q].pop(0)))
    records = frame.iloc[picked].to_dict("records")
    return [QueryExample(str(r["query_id"]), " ".join(str(r["query"]).split()), str(r["item_id"]),
                         item_text(r, fields)) for r in records]


def query_message(item: str, examples: Sequence[QueryExample], instruction: str = QUERY_INSTRUCTION,
                  max_item_words: int | None = None) -> str:
    """The user message: instruction, examples, the product (cut to ``max_item_words`` words)."""
    lines = [" ".join(str(instruction).split())]
    if examples:
        lines.append("Examples:")
        for ex in examples:
            lines += [f"{PRODUCT_MARK}{clip_words(ex.item, max_item_words)}", f"{QUERY_PREFIX} {ex.query}"]
        lines.append("Now the product to write a query for.")
    lines.append(f"{PRODUCT_MARK}{clip_words(item, max_item_words)}")
    return "\n".join(lines)


@dataclass
class ProductPrompt:
    """One product's prompt as token segments: ``shared`` (every product's) and ``product``."""

    item_id: str
    shared: list[int]
    product: list[int]


def product_prompts(tokenizer, item_ids: Sequence[str], items: Sequence[str], examples: Sequence[QueryExample],
                    instruction: str = QUERY_INSTRUCTION, max_item_words: int | None = None) -> list[ProductPrompt]:
    """:class:`ProductPrompt` of each product: the rendered prompt (chat template) plus
    :data:`QUERY_PREFIX`, cut before the product's line; each side tokenized alone."""
    out, shared = [], None
    for item_id, item in zip(item_ids, items):
        text = render_message(tokenizer, query_message(item, examples, instruction, max_item_words)) + QUERY_PREFIX
        cut = text.rindex("\n" + PRODUCT_MARK) + 1
        if shared is None:
            shared = list(tokenizer(text[:cut], add_special_tokens=prompt_add_special_tokens(tokenizer))["input_ids"])
        product = tokenizer(text[cut:], add_special_tokens=False)["input_ids"]
        out.append(ProductPrompt(str(item_id), shared, list(product)))
    return out


def newline_token_ids(tokenizer) -> list[int]:
    """The ids of every token whose text holds a newline (generation stops at them)."""
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return [i for i, t in enumerate(texts) if "\n" in t]


def parse_query(completion: str) -> str:
    """A completion's query: its first non-empty line, a leading ``Query:`` and surrounding quotes,
    backticks and end punctuation (``.!;,:/-``) dropped, whitespace collapsed ("" when nothing is left)."""
    lines = [line.strip() for line in str(completion).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if text.lower().startswith(QUERY_PREFIX.lower()):
        text = text[len(QUERY_PREFIX):]
    text = text.strip().strip("\"'`*“”‘’").strip().rstrip(".!;,:/-").strip()
    return " ".join(text.split())


def product_seed(seed: int, item_id: str) -> int:
    """The sampling seed of one product: from the run's seed and the product's id (order-free)."""
    return int.from_bytes(hashlib.sha256(f"{int(seed)}:{item_id}".encode()).digest()[:8], "little")


class QueryWriter:
    """Writes one product's query: ``(completion text, new tokens)``. Picklable (sent to workers);
    the tokenizer (to decode) is loaded from ``tokenizer_dir`` in the worker."""

    kind = "query"

    def __init__(self, tokenizer_dir: str, max_new_tokens: int, stop_ids: Sequence[int] = (), temperature: float = 0.0,
                 seed: int = 0, no_repeat_ngram_size: int = 0):
        self.tokenizer_dir = str(tokenizer_dir)
        self.max_new_tokens, self.stop_ids = int(max_new_tokens), frozenset(int(t) for t in stop_ids)
        self.temperature, self.seed = float(temperature), int(seed)
        self.no_repeat_ngram_size = int(no_repeat_ngram_size)
        self._tokenizer = None

    def __getstate__(self):
        return {**self.__dict__, "_tokenizer": None}

    def _decode(self, ids: Sequence[int]) -> tuple[str, int]:
        if self._tokenizer is None:
            self._tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_dir)
        return self._tokenizer.decode(list(ids), skip_special_tokens=True), len(ids)

    def __call__(self, runtime, prompt: ProductPrompt) -> tuple[str, int]:
        ids = runtime.generate([prompt.shared], prompt.product, self.max_new_tokens, temperature=self.temperature,
                               seed=product_seed(self.seed, prompt.item_id),
                               no_repeat_ngram_size=self.no_repeat_ngram_size, stop_ids=self.stop_ids)
        return self._decode(ids)

    def program(self, prompt: ProductPrompt, limits: SequenceLimits):
        """The same generation as a :class:`lrkd.teacher.runtime.batched.BatchedDecoder` request."""
        yield Prefix(tuple(prompt.shared))
        first = yield Feed(prompt.product, "last")
        ids = yield from generation(first, self.max_new_tokens, lambda t: limits.is_end(t) or t in self.stop_ids,
                                    ctx_limit=limits.n_ctx, no_repeat_ngram_size=self.no_repeat_ngram_size,
                                    temperature=self.temperature, seed=product_seed(self.seed, prompt.item_id))
        return self._decode(ids)


# ------------------------------------------------------------------------------- resumable parts
@dataclass
class GenerationJob:
    """What one worker process needs (picklable)."""

    worker: int
    gguf: str
    runtime: dict
    part_dir: str
    writer: Any
    rows: list[ProductPrompt]
    shard_size: int = 32


def _shards(part: Path) -> list[Path]:
    return sorted(part.glob("shard-*.parquet"))


def _run_job(job: GenerationJob) -> dict:
    """Generate ``job.rows`` into the worker's part (continuing its shard numbering); returns stats."""
    logging.basicConfig(level=logging.INFO, format=f"[worker {job.worker}] %(asctime)s %(message)s")
    os.environ.setdefault("OMP_NUM_THREADS", str(job.runtime.get("n_threads", 1)))
    part = Path(job.part_dir)
    part.mkdir(parents=True, exist_ok=True)
    shard = max((int(p.stem.split("-")[1]) for p in _shards(part)), default=-1) + 1
    started, chunk, written = time.time(), [], 0
    last = started

    def flush():
        nonlocal shard, last
        frame = pd.DataFrame({"item_id": [c[0] for c in chunk], "completion": [c[1] for c in chunk],
                              "new_tokens": np.asarray([c[2] for c in chunk], dtype=np.int32)})
        with atomic_path(part / f"shard-{shard:05d}.parquet") as tmp:
            frame.to_parquet(tmp, index=False)
        now = time.time()
        append_progress(part, shard, len(chunk), now - last, runtime=job.runtime)
        shard, last = shard + 1, now
        chunk.clear()

    for prompt, (text, n_new) in run_requests(job.gguf, job.runtime, job.rows, job.writer, max_prefixes=1):
        chunk.append((prompt.item_id, text, n_new))
        written += 1
        if written % 25 == 0:
            log.info("%d/%d products, %.2f s/product", written, len(job.rows), (time.time() - started) / written)
        if len(chunk) == int(job.shard_size):
            flush()
    if chunk:
        flush()
    return {"worker": job.worker, "written": written, "seconds": time.time() - started}


def read_generations(out_dir: str | os.PathLike) -> pd.DataFrame:
    """Every generation of ``out_dir`` (item_id, completion, new_tokens), parts and shards in order."""
    frames = [pd.read_parquet(s) for part in sorted(Path(out_dir).glob(PART_PREFIX + "*")) for s in _shards(part)]
    if not frames:
        return pd.DataFrame({"item_id": pd.Series(dtype=object), "completion": pd.Series(dtype=object),
                             "new_tokens": pd.Series(dtype=np.int32)})
    return pd.concat(frames, ignore_index=True).astype({"item_id": str, "completion": str})


def check_settings(out_dir: str | os.PathLike, settings: Mapping) -> None:
    """``out_dir`` holds generations made with ``settings`` (their ``execution`` entry aside), or
    none yet (the record is written then); otherwise a ValueError naming the differences (nothing
    is removed)."""
    path = Path(out_dir) / SETTINGS_FILE
    if path.is_file():
        diff = settings_difference(json.loads(path.read_text()), settings)
        if diff:
            raise ValueError(f"the generations in {out_dir} were made with other settings (they differ in {diff}); "
                             f"generate into another folder (stage.generations_dir) or move it away")
        return
    if any(Path(out_dir).glob(PART_PREFIX + "*/shard-*.parquet")):
        raise ValueError(f"{out_dir} holds generations without a {SETTINGS_FILE}; move them away")
    write_json_atomic(path, json.loads(json.dumps(dict(settings), default=str)), sort_keys=True)


def generate_queries(prompts: Sequence[ProductPrompt], *, gguf: str, runtime: Mapping, out_dir: str | os.PathLike,
                     settings: Mapping, writer: QueryWriter, workers: int = 1, shard_size: int = 32) -> dict:
    """Generate a query for every product of ``prompts`` not yet in ``out_dir``, with ``workers``
    processes (products dealt round-robin in the given order), each running ``writer`` with
    ``runtime`` (``teacher.llama_cpp``: n_ctx, n_threads, n_batch, engine, n_seq). Returns
    {pending, written, seconds, workers}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_settings(out_dir, settings)
    done = set(read_generations(out_dir)["item_id"])
    pending = [p for p in prompts if p.item_id not in done]
    if not pending:
        return {"pending": 0, "written": 0, "seconds": 0.0}
    workers = max(1, min(int(workers), len(pending)))
    slots = part_slots(out_dir, workers)
    jobs = [GenerationJob(w, str(gguf), dict(runtime), str(out_dir / slots[w]), writer, list(pending[w::workers]),
                          int(shard_size)) for w in range(workers)]
    log.info("generating queries for %d products (%d done) with %d worker(s) into %s", len(pending), len(done),
             workers, out_dir)
    started = time.time()
    results = run_workers(_run_job, jobs)
    return {"pending": len(pending), "written": sum(r["written"] for r in results),
            "seconds": time.time() - started, "workers": results}


__all__ = ["QueryExample", "ProductPrompt", "QueryWriter", "choose_query_examples", "query_message",
           "product_prompts", "newline_token_ids", "parse_query", "product_seed", "generate_queries",
           "read_generations", "check_settings", "QUERY_INSTRUCTION", "QUERY_PREFIX", "PRODUCT_MARK", "SETTINGS_FILE"]
