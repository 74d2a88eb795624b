"""The one pair encoding, shared by training (:mod:`lrkd.data.tokenize`, the data sources) and
serving (:mod:`lrkd.serve.predict`), so that a pair reaches the model the same way in both.

- cells: :func:`to_text` (a cell as text), :func:`query_text` (a query as the model reads it:
  whitespace runs collapsed, case kept), :func:`normalise_query` (a query's identity: NFKC,
  case-folded, whitespace collapsed; the query id hashes it).
- item text: :func:`item_text` = the title, then each non-empty text field as
  ``"<Field name>: <value>"``, joined by ``". "``.
- tokens: :func:`pair_token_ids` = ``[CLS] query [SEP] item [SEP]`` truncated to ``max_length``
  (the item first); :func:`pad_sequences`; :class:`PairEncoder` (texts -> padded model inputs).
"""
from __future__ import annotations

import math
import unicodedata
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from lrkd.schema import text_fields


# ------------------------------------------------------------------------------------------ cells
def is_missing(value) -> bool:
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)


def to_text(value) -> str:
    """A cell as text: missing -> "", integral floats without ".0", surrounding whitespace stripped."""
    if is_missing(value):
        return ""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def query_text(value) -> str:
    """A query as the model reads it: :func:`to_text`, whitespace runs collapsed (case kept)."""
    return " ".join(to_text(value).split())


def normalise_query(text: str) -> str:
    """The form of a query that decides its identity: NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", str(text)).casefold().split())


# -------------------------------------------------------------------------------------- item text
def field_title(column: str) -> str:
    """``"category_path"`` -> ``"Category path"`` (underscores to spaces, first letter upper)."""
    name = column.replace("_", " ").strip()
    return name[:1].upper() + name[1:]


def _clean(value) -> str:
    if value is None or (isinstance(value, float) and value != value):  # None / NaN
        return ""
    return str(value).strip()


def item_text(row: Mapping, text_fields: Sequence[str]) -> str:
    """The item as shown to models: the title, then each non-empty text field as
    ``"<Field name>: <value>"``, joined by ``". "``.

    row: a mapping (dict, pandas Series) with ``item_title`` and the ``text_fields`` columns.
    """
    parts = [_clean(row["item_title"])]
    for column in text_fields:
        value = _clean(row.get(column) if hasattr(row, "get") else row[column])
        if value:
            parts.append(f"{field_title(column)}: {value}")
    return ". ".join(parts)


def item_texts(df) -> list[str]:
    """:func:`item_text` of every row of a schema DataFrame, in row order."""
    fields = text_fields(df)
    columns = ["item_title"] + fields
    return [item_text(dict(zip(columns, values)), fields)
            for values in df[columns].itertuples(index=False, name=None)]


# ----------------------------------------------------------------------------------------- tokens
def uses_token_types(tokenizer) -> bool:
    return "token_type_ids" in getattr(tokenizer, "model_input_names", ["token_type_ids"])


def pair_token_ids(tokenizer, queries: list[str], items: list[str], max_length: int) -> tuple[list, list]:
    """Token ids and type ids of ``[CLS] q [SEP] item [SEP]`` for a list of pairs. Rows whose query alone
    leaves no room for an item token are truncated ``longest_first`` (the query too) instead."""
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=True)
    query_lengths = [len(ids) for ids in tokenizer(queries, add_special_tokens=False)["input_ids"]]
    long_rows = {i for i, n in enumerate(query_lengths) if n >= budget}
    ids: list = [None] * len(queries)
    types: list = [None] * len(queries)
    with_types = uses_token_types(tokenizer)
    for strategy, rows in (("only_second", [i for i in range(len(queries)) if i not in long_rows]),
                           ("longest_first", sorted(long_rows))):
        if not rows:
            continue
        enc = tokenizer([queries[i] for i in rows], [items[i] for i in rows], truncation=strategy,
                        max_length=max_length, return_attention_mask=False, return_token_type_ids=with_types)
        for j, i in enumerate(rows):
            ids[i] = enc["input_ids"][j]
            types[i] = enc["token_type_ids"][j] if with_types else [0] * len(ids[i])
    return ids, types


def check_max_length(tokenizer, max_length: int) -> None:
    """ValueError when ``max_length`` leaves no room for a query and an item token."""
    minimum = tokenizer.num_special_tokens_to_add(pair=True) + 2
    if max_length < minimum:
        raise ValueError(f"max_length={max_length} leaves no room for a query and an item token "
                         f"(needs >= {minimum} for {type(tokenizer).__name__})")


def pad_sequences(seqs: Sequence[np.ndarray], pad_value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-d int sequences to the longest: (values [B, L] long, mask [B, L] long)."""
    width = max((len(s) for s in seqs), default=0)
    values = np.full((len(seqs), width), pad_value, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        values[i, :len(s)] = s
        mask[i, :len(s)] = 1
    return torch.from_numpy(values), torch.from_numpy(mask)


class PairEncoder:
    """(queries, item texts) -> padded model inputs, tokenized exactly as training's standard view.

    Returns ``{input_ids, attention_mask, token_type_ids}``: [B, L] int64 numpy arrays, right-padded
    to the longest pair of the batch (L <= max_length).
    """

    def __init__(self, tokenizer, max_length: int):
        check_max_length(tokenizer, max_length)
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.pad_id = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)

    def __call__(self, queries: Sequence[str], items: Sequence[str]) -> dict[str, np.ndarray]:
        ids, types = pair_token_ids(self.tokenizer, list(queries), list(items), self.max_length)
        input_ids, mask = pad_sequences([np.asarray(x) for x in ids], self.pad_id)
        token_types, _ = pad_sequences([np.asarray(x) for x in types], 0)
        return {"input_ids": input_ids.numpy(), "attention_mask": mask.numpy(),
                "token_type_ids": token_types.numpy()}


__all__ = ["to_text", "is_missing", "query_text", "normalise_query", "field_title", "item_text", "item_texts",
           "uses_token_types", "pair_token_ids", "check_max_length", "pad_sequences", "PairEncoder"]
