"""Domain-adaptive pre-training (DAPT, CRSD's first teacher step): the corpus, its packing into
fixed-length blocks, and held-out perplexity.

Corpus (:func:`build_corpus`), one document per text:
    items    ``item_text`` of every item of the dataset (the text the student sees), and of every
             item of the listed catalogue files (tables with ``item_id``, ``item_title`` and text
             fields, e.g. ``datasets/chorus_icecat/catalogue.parquet``, the 19k-product Icecat set)
    queries  the queries of the TRAIN split only: no val/test query ever reaches the corpus
    files    further text files: ``.txt`` (one document per non-empty line), ``.jsonl`` / tables
             with a ``text`` column
Item texts are deduplicated (items of different ids with one text are one document); a seeded share
of the distinct texts (``heldout_fraction``) is kept out of training: the perplexity set (before and
after DAPT), never seen in training even under another item id.

Packing (:func:`pack_blocks`): each document's tokens then eos, all concatenated, cut into blocks of
exactly ``block_size`` tokens (the tail shorter than a block is dropped): no padding, every token
is a target (the loss of :func:`lrkd.losses.lm.completion_nll` with an all-ones mask).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from lrkd.data.encode import item_text
from lrkd.schema import DataError, text_fields
from lrkd.data.tokenize import TokenizedView
from lrkd.losses.lm import completion_nll

FORMATS = ("plain", "chat")


@dataclass
class Corpus:
    """The DAPT documents by kind, and the held-out item texts (never trained on)."""

    items: list[str] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    heldout: list[str] = field(default_factory=list)

    @property
    def documents(self) -> list[str]:
        return [*self.items, *self.queries, *self.files]

    def counts(self) -> dict[str, int]:
        return {"items": len(self.items), "queries": len(self.queries), "file_documents": len(self.files),
                "heldout_items": len(self.heldout)}


def _is_heldout(text: str, fraction: float, seed: int) -> bool:
    """A stable, seeded draw per item text (the same item is held out whichever file holds it)."""
    h = int(hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()[:12], 16)
    return h / float(16 ** 12) < float(fraction)


def _item_documents(table: pd.DataFrame, fields: Sequence[str]) -> dict[str, str]:
    """item_id -> item_text, first occurrence wins."""
    missing = [c for c in ("item_id", "item_title") if c not in table.columns]
    if missing:
        raise DataError(f"an item table needs the column(s) {missing}", column=missing[0])
    present = [f for f in fields if f in table.columns]
    out: dict[str, str] = {}
    for row in table.drop_duplicates("item_id").to_dict("records"):
        out.setdefault(str(row["item_id"]), item_text(row, present))
    return out


def _file_documents(path: Path, fields: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """(item_id -> text for item tables, plain documents) of one corpus file."""
    if not path.is_file():
        raise DataError("stage.corpus.files: no such file", path=str(path))
    if path.suffix == ".txt":
        return {}, [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        table = pd.DataFrame.from_records(rows)
    elif path.suffix == ".parquet":
        table = pd.read_parquet(path)
    elif path.suffix in (".csv", ".tsv"):
        table = pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",", dtype=str, keep_default_na=False)
    else:
        raise DataError("stage.corpus.files: expected .txt, .jsonl, .parquet, .csv or .tsv", path=str(path))
    if "item_title" in table.columns:
        return _item_documents(table, fields), []
    if "text" in table.columns:
        return {}, [str(t).strip() for t in table["text"].dropna() if str(t).strip()]
    raise DataError(f"a corpus table needs item_id + item_title (an item catalogue) or a text column; it has "
                    f"{list(table.columns)}", path=str(path))


def build_corpus(frame: pd.DataFrame, train_rows: Sequence[int], *, files: Sequence[str | Path] = (),
                 items: bool = True, queries: bool = True, heldout_fraction: float = 0.02,
                 seed: int = 0) -> Corpus:
    """The DAPT corpus of a schema dataset (see the module docstring). ``train_rows``: the train
    split's row positions (its queries are the only ones taken)."""
    fields = text_fields(frame)
    texts: dict[str, str] = _item_documents(frame, fields) if items else {}
    extra: list[str] = []
    for f in files:
        file_items, docs = _file_documents(Path(f), fields)
        for k, v in file_items.items():
            texts.setdefault(k, v)
        extra += docs
    corpus = Corpus(files=extra)
    for text in sorted(set(texts.values())):  # one document per distinct text: a duplicate never leaks
        (corpus.heldout if _is_heldout(text, heldout_fraction, seed) else corpus.items).append(text)
    if queries:
        train = frame.iloc[np.asarray(train_rows, dtype=np.int64)]
        corpus.queries = sorted({str(q).strip() for q in train["query"] if str(q).strip()})
    return corpus


def render_documents(tokenizer, documents: Sequence[str], fmt: str = "plain", chat_prompt: str = "") -> list[str]:
    """``plain``: the texts as they are; ``chat``: each text as the assistant's reply to
    ``chat_prompt`` in the tokenizer's chat template (keeps an instruct model on its format)."""
    if fmt not in FORMATS:
        raise ValueError(f"stage.format must be one of {FORMATS}, got {fmt!r}")
    if fmt == "plain":
        return list(documents)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("stage.format=chat needs a tokenizer with a chat template; use format=plain")
    return [tokenizer.apply_chat_template([{"role": "user", "content": chat_prompt},
                                           {"role": "assistant", "content": d}], tokenize=False) for d in documents]


def pack_blocks(token_lists: Sequence[Sequence[int]], block_size: int, eos_id: int | None) -> np.ndarray:
    """[N, block_size] int64: the documents' tokens, each followed by ``eos_id`` (when not None),
    concatenated and cut into full blocks; the incomplete tail is dropped."""
    if int(block_size) < 2:
        raise ValueError(f"block_size must be >= 2, got {block_size}")
    sep = [] if eos_id is None else [int(eos_id)]
    flat = np.fromiter((t for ids in token_lists for t in (*ids, *sep)), dtype=np.int64)
    n = len(flat) // int(block_size)
    return flat[:n * int(block_size)].reshape(n, int(block_size))


def tokenize_and_pack(tokenizer, texts: Sequence[str], block_size: int) -> np.ndarray:
    """Texts -> packed blocks (no special tokens but the eos between documents)."""
    if not texts:
        return np.zeros((0, int(block_size)), np.int64)
    ids = tokenizer(list(texts), add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return pack_blocks(ids, block_size, tokenizer.eos_token_id)


def blocks_view(blocks: np.ndarray) -> TokenizedView:
    """Packed blocks as a view whose every token is a target (segment 1 everywhere)."""
    return TokenizedView.from_lists([b.tolist() for b in blocks], [[1] * blocks.shape[1] for _ in range(len(blocks))])


@torch.no_grad()
def perplexity(model, blocks: np.ndarray, batch_size: int = 8) -> float:
    """exp(mean next-token NLL) of ``model`` over the blocks (every token after each block's first);
    NaN without blocks. The model's training mode is restored."""
    if len(blocks) == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    try:
        for start in range(0, len(blocks), int(batch_size)):
            ids = torch.as_tensor(blocks[start:start + int(batch_size)], device=device)
            logits = model(input_ids=ids, use_cache=False).logits
            nll = completion_nll(logits, ids, torch.ones_like(ids))
            n = ids.shape[0] * (ids.shape[1] - 1)
            total, count = total + float(nll) * n, count + n
    finally:
        model.train(was_training)
    return float(math.exp(total / count))


def files_fingerprint(files: Sequence[str | Path]) -> list[str]:
    """sha256 of each corpus file's bytes (the stage's inputs)."""
    out = []
    for f in files:
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        out.append(h.hexdigest())
    return out


__all__ = ["Corpus", "build_corpus", "render_documents", "pack_blocks", "tokenize_and_pack", "blocks_view",
           "perplexity", "files_fingerprint", "FORMATS"]
