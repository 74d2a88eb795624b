"""Tokenize (query, item) pairs once, and cache the result on disk.

Two views of a pair:

- standard:  ``[CLS] query [SEP] item_text [SEP]``, at most ``max_length`` tokens; the item is
  truncated first (the query too, only when it alone leaves no room for the item).
- augmented: the standard view at ``item_max_length`` tokens, then ``rationale [SEP]`` filling the
  budget up to ``max_length``: ``[CLS] query [SEP] item [SEP] rationale [SEP]``. Its prefix is
  token for token the standard view at ``max_length=item_max_length``, so the two views of CRSD
  differ only by the rationale. An empty rationale gives exactly that standard view (nothing is
  appended, no third ``[SEP]``).

A tokenized view is stored ragged (:class:`TokenizedView`) under
``<cache_dir>/tokens/<key>.npz``; the key hashes everything the tokens depend on (see
:func:`cache_key`), so a second call with the same inputs reads the file and any change misses.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from itertools import chain
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from lrkd.data.encode import check_max_length, item_texts, pair_token_ids, uses_token_types
from lrkd.schema import dataset_fingerprint
from lrkd.utils import atomic_path

log = logging.getLogger(__name__)

# Bump when the token layout produced here changes: old cache entries then miss.
TOKENIZE_VERSION = 1
CHUNK_ROWS = 1024
PROGRESS_MIN_ROWS = 2000


# ------------------------------------------------------------------------------------ ragged store
class TokenizedView:
    """Token ids of N sequences of varying length, stored flat.

    input_ids:      [T] int32, all sequences concatenated
    token_type_ids: [T] int8
    offsets:        [N + 1] int64, sequence i is ``input_ids[offsets[i]:offsets[i + 1]]``
    """

    def __init__(self, input_ids: np.ndarray, token_type_ids: np.ndarray, offsets: np.ndarray):
        self.input_ids = np.asarray(input_ids, dtype=np.int32)
        self.token_type_ids = np.asarray(token_type_ids, dtype=np.int8)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        if (self.offsets.ndim != 1 or len(self.offsets) == 0 or self.offsets[0] != 0
                or self.offsets[-1] != len(self.input_ids) or len(self.token_type_ids) != len(self.input_ids)
                or (np.diff(self.offsets) < 0).any()):
            raise ValueError("inconsistent TokenizedView: offsets must rise from 0 to len(input_ids), "
                             "and token_type_ids must match input_ids")

    @classmethod
    def from_lists(cls, input_ids: Sequence[Sequence[int]],
                   token_type_ids: Sequence[Sequence[int]]) -> "TokenizedView":
        lengths = np.fromiter((len(x) for x in input_ids), dtype=np.int64, count=len(input_ids))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        total = int(offsets[-1])
        return cls(np.fromiter(chain.from_iterable(input_ids), dtype=np.int32, count=total),
                   np.fromiter(chain.from_iterable(token_type_ids), dtype=np.int8, count=total), offsets)

    @classmethod
    def concat(cls, views: Sequence["TokenizedView"]) -> "TokenizedView":
        if not views:
            return cls(np.empty(0, np.int32), np.empty(0, np.int8), np.zeros(1, np.int64))
        starts = np.cumsum([0] + [len(v.input_ids) for v in views[:-1]])
        offsets = np.concatenate([[0]] + [v.offsets[1:] + s for v, s in zip(views, starts)])
        return cls(np.concatenate([v.input_ids for v in views]),
                   np.concatenate([v.token_type_ids for v in views]), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids [L_i] int32, token_type_ids [L_i] int8) of sequence i."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"sequence {i} out of range for {len(self)} sequences")
        i = i % len(self)
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.input_ids[a:b], self.token_type_ids[a:b]

    @property
    def lengths(self) -> np.ndarray:
        """[N] int64 token count of each sequence."""
        return np.diff(self.offsets)

    def save(self, path: str | os.PathLike, key: str = "") -> None:
        """Write to ``path`` (.npz) atomically (:func:`lrkd.utils.atomic_path`)."""
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, input_ids=self.input_ids, token_type_ids=self.token_type_ids,
                     offsets=self.offsets, key=np.array(key), version=np.array(TOKENIZE_VERSION))

    @classmethod
    def load(cls, path: str | os.PathLike, key: str | None = None) -> "TokenizedView":
        """Read a file written by :meth:`save`; with ``key``, check it is the entry for that key."""
        with np.load(path, allow_pickle=False) as z:
            if key is not None and str(z["key"]) != key:
                raise ValueError(f"{path}: cache entry is for key {str(z['key'])[:12]}..., not {key[:12]}...")
            return cls(z["input_ids"], z["token_type_ids"], z["offsets"])


# --------------------------------------------------------------------------------------- cache key
def _sha256_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def tokenizer_identity(tokenizer) -> dict:
    """What the tokens of ``tokenizer`` depend on: its class, name, size, a hash of the vocabulary
    (token and id), the special token ids, and for fast tokenizers a hash of the rest of the
    pipeline (normaliser, pre-tokeniser, post-processor, model settings, merges) without the
    per-call truncation and padding state."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: (kv[1], kv[0]))
    ident = {
        "class": type(tokenizer).__name__,
        "name_or_path": str(getattr(tokenizer, "name_or_path", "")),
        "vocab_size": len(tokenizer),
        "vocab_sha256": hashlib.sha256("\n".join(f"{i}\t{t}" for t, i in vocab).encode("utf-8")).hexdigest(),
        "special_ids": [getattr(tokenizer, f"{t}_token_id", None) for t in ("cls", "sep", "bos", "eos", "pad", "unk")],
        "model_input_names": list(getattr(tokenizer, "model_input_names", [])),
    }
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
        if isinstance(spec.get("model"), dict):
            spec["model"].pop("vocab", None)  # covered by vocab_sha256
        ident["backend_sha256"] = _sha256_json(spec)
    return ident


def rationales_hash(rationales: Sequence[str]) -> str:
    """sha256 of a list of rationale strings (order matters)."""
    return _sha256_json([str(r) for r in rationales])


def cache_key(fingerprint: str, tokenizer, view: str, max_length: int, **extra) -> str:
    """sha256 hex over the dataset fingerprint, the tokenizer identity, the view, the lengths, any
    ``extra`` (item_max_length, rationale hash) and :data:`TOKENIZE_VERSION`."""
    return _sha256_json({"dataset": fingerprint, "tokenizer": tokenizer_identity(tokenizer), "view": view,
                         "max_length": int(max_length), "extra": extra, "version": TOKENIZE_VERSION})


def cache_path(cache_dir: str | os.PathLike, key: str) -> Path:
    return Path(cache_dir) / "tokens" / f"{key}.npz"


def _cached(cache_dir, key: str, build) -> tuple[TokenizedView, bool]:
    path = cache_path(cache_dir, key)
    if path.exists():
        try:
            view = TokenizedView.load(path, key)
            log.info("token cache hit: %s", path)
            return view, True
        except Exception as err:  # a truncated or foreign file: rebuild it
            log.warning("unreadable token cache entry %s (%s); re-tokenizing", path, err)
    view = build()
    view.save(path, key)
    log.info("token cache written: %s (%d sequences)", path, len(view))
    return view, False


# ------------------------------------------------------------------------------------ tokenization
def _separator_id(tokenizer) -> int:
    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if sep is None:
        raise ValueError(f"{type(tokenizer).__name__} has neither a sep nor an eos token to separate segments")
    return int(sep)


def _chunks(n: int, desc: str):
    return tqdm(range(0, n, CHUNK_ROWS), desc=desc, unit="chunk", disable=n < PROGRESS_MIN_ROWS,
                total=(n + CHUNK_ROWS - 1) // CHUNK_ROWS)


def _standard_view(df, tokenizer, max_length: int, desc: str) -> TokenizedView:
    queries = [str(q) for q in df["query"].tolist()]
    items = item_texts(df)
    views = []
    for start in _chunks(len(queries), desc):
        ids, types = pair_token_ids(tokenizer, queries[start:start + CHUNK_ROWS],
                                 items[start:start + CHUNK_ROWS], max_length)
        views.append(TokenizedView.from_lists(ids, types))
    return TokenizedView.concat(views)


def tokenize_standard(df, tokenizer, max_length: int, cache_dir: str | os.PathLike,
                      fingerprint: str | None = None) -> tuple[TokenizedView, bool]:
    """The standard view ``[CLS] query [SEP] item_text [SEP]`` of every row of a schema DataFrame.

    tokenizer: a fast Hugging Face tokenizer. max_length: tokens per pair, specials included.
    fingerprint: ``dataset_fingerprint(df)`` if the caller has it already (saves recomputing).
    Returns (view with len(df) sequences, hit) where hit tells whether it came from the cache.
    """
    check_max_length(tokenizer, max_length)
    key = cache_key(fingerprint or dataset_fingerprint(df), tokenizer, "standard", max_length)
    return _cached(cache_dir, key, lambda: _standard_view(df, tokenizer, max_length, "tokenize pairs"))


def tokenize_augmented(df, rationales: Sequence[str], tokenizer, max_length: int,
                       cache_dir: str | os.PathLike, item_max_length: int,
                       fingerprint: str | None = None) -> tuple[TokenizedView, bool]:
    """The reasoning-augmented view ``[CLS] query [SEP] item [SEP] rationale [SEP]`` of every row.

    rationales: [len(df)] the teacher's rationale text per row ("" = none: the row's view is then
        the standard view at ``item_max_length``).
    item_max_length: the length of the ``[CLS] query [SEP] item [SEP]`` prefix (the standard view
        truncated to it); the rationale and its closing separator fill the rest, up to max_length.
    Token types: 0 for ``[CLS] query [SEP]``, 1 after (all 0 for tokenizers without token types).
    Returns (view with len(df) sequences, hit).
    """
    rationales = [str(r) for r in rationales]
    if len(rationales) != len(df):
        raise ValueError(f"{len(rationales)} rationales for {len(df)} rows")
    check_max_length(tokenizer, item_max_length)
    if max_length < item_max_length + 2:
        raise ValueError(f"max_length={max_length} must exceed item_max_length={item_max_length} by >= 2 "
                         "(one rationale token and its separator)")
    key = cache_key(fingerprint or dataset_fingerprint(df), tokenizer, "augmented", max_length,
                    item_max_length=int(item_max_length), rationales=rationales_hash(rationales))

    def build() -> TokenizedView:
        prefix = _standard_view(df, tokenizer, item_max_length, "tokenize pairs (augmented view)")
        sep = _separator_id(tokenizer)
        rationale_type = 1 if uses_token_types(tokenizer) else 0
        views = []
        for start in _chunks(len(rationales), "tokenize rationales"):
            chunk = rationales[start:start + CHUNK_ROWS]
            r_ids = tokenizer(chunk, add_special_tokens=False, truncation=True, max_length=max_length,
                              return_attention_mask=False, return_token_type_ids=False)["input_ids"]
            ids, types = [], []
            for j, tokens in enumerate(r_ids):
                p_ids, p_types = prefix[start + j]
                budget = max_length - len(p_ids) - 1
                tokens = list(tokens[:budget]) if chunk[j].strip() else []
                tail = tokens + [sep] if tokens else []
                ids.append(p_ids.tolist() + tail)
                types.append(p_types.tolist() + [rationale_type] * len(tail))
            views.append(TokenizedView.from_lists(ids, types))
        return TokenizedView.concat(views)

    return _cached(cache_dir, key, build)
