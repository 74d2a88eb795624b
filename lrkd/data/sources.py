"""Data sources: read a file of judged (query, item) pairs into a schema DataFrame.

Every source is a small class built from config (``__init__``) with one method

    load(label_set: LabelSet, duplicates: str = "error") -> pandas.DataFrame

returning the schema of :mod:`lrkd.schema`: ``query_id, query, item_id, item_title,
<text fields>, label[, relevance]`` with ``df.attrs["text_fields"]`` set, rows in file order.

- :class:`ChorusIcecatSource`: the embedded Chorus/Icecat set (``datasets/chorus_icecat``).
- :class:`HomeDepotSource`:    the Kaggle Home Depot ``train.csv[.zip]`` from a path the user gives.
- :class:`TableSource`:        any CSV, JSONL or Parquet file with a column mapping.

Bad input raises :class:`~lrkd.schema.DataError` naming the file, the row and the column.
Rows are numbered as a person finds them in the file: CSV data row i (0-based) is line i + 2
(after the header; assumes no quoted multi-line fields), JSONL row i is line i + 1, Parquet row i
is "row i + 1".

Duplicate (query_id, item_id) pairs: rows with the same label collapse to the first one (its
relevance becomes the group's mean); conflicting labels raise with ``duplicates="error"``, or
with ``duplicates="mean"`` keep the first row with the mean relevance and the grade nearest the
mean class index (ties go to the more relevant grade).
"""
from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from lrkd.data.encode import is_missing, normalise_query, query_text, to_text
from lrkd.data.io import RawTable, read_table
from lrkd.schema import DataError, LabelSet
from lrkd.data.splits import sample_queries

DUPLICATE_POLICIES = ("error", "mean")
SCHEMA_ID_TEXT_COLUMNS = ("query_id", "query", "item_id", "item_title")


# ---------------------------------------------------------------------------------------------
# ids


def query_id_for(text: str) -> str:
    """Stable query id: ``"q-"`` + the first 12 hex digits of sha1(normalised query)."""
    return "q-" + hashlib.sha1(normalise_query(text).encode("utf-8")).hexdigest()[:12]


def item_id_for(title: str) -> str:
    """Item id for files without one: ``"i-"`` + 12 hex digits of sha1(normalised title)."""
    return "i-" + hashlib.sha1(normalise_query(title).encode("utf-8")).hexdigest()[:12]


def bin_relevance(values, thresholds: Sequence[float]) -> np.ndarray:
    """Grade numeric relevance by descending thresholds t_0 > t_1 > ...: value >= t_0 -> class 0,
    t_1 <= value < t_0 -> class 1, ..., value < t_last -> class len(thresholds). [N] -> [N] int64."""
    t = np.asarray([float(x) for x in thresholds], dtype=np.float64)
    if t.size == 0 or np.any(np.diff(t) >= 0):
        raise ValueError(f"thresholds must be non-empty and strictly decreasing, got {list(thresholds)}")
    v = np.asarray(values, dtype=np.float64)
    return (v[:, None] < t[None, :]).sum(axis=1).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# cells -> schema values


def _label_key(value) -> str | None:
    """A raw label as a lookup key: numbers (and numeric text) in one form (3, 3.0, "3" -> "3")."""
    if is_missing(value):
        return None
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)).lower()
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    if not math.isfinite(number):
        return text
    return str(int(number)) if number.is_integer() else repr(number)


def text_column(table: RawTable, column: str, role: str, required: bool) -> list[str]:
    """The cells of ``column`` as text (:func:`lrkd.data.encode.to_text`); DataError naming the row when
    ``required`` and a cell is empty."""
    values = [to_text(v) for v in table.require(column, role).tolist()]
    if required:
        for i, v in enumerate(values):
            if not v:
                raise DataError(f"empty {role}", path=table.path, row=int(table.rows[i]), column=column)
    return values


def _query_column(table: RawTable, column: str) -> list[str]:
    """Query text with whitespace runs collapsed (case kept)."""
    return [query_text(q) for q in text_column(table, column, "query", required=True)]


def _numeric_column(table: RawTable, column: str, role: str, allow_missing: bool) -> np.ndarray:
    out = np.empty(len(table.frame), dtype=np.float64)
    for i, value in enumerate(table.require(column, role).tolist()):
        if is_missing(value) or (isinstance(value, str) and not value.strip()):
            if not allow_missing:
                raise DataError(f"missing {role} value", path=table.path, row=int(table.rows[i]),
                                column=column)
            out[i] = np.nan
            continue
        try:
            out[i] = float(value)
        except (TypeError, ValueError):
            raise DataError(f"{role} {value!r} is not a number", path=table.path,
                            row=int(table.rows[i]), column=column) from None
        if math.isinf(out[i]) or (math.isnan(out[i]) and not allow_missing):
            raise DataError(f"{role} {value!r} is not a finite number", path=table.path,
                            row=int(table.rows[i]), column=column)
    return out


def _labels_from_names(table: RawTable, column: str, label_set: LabelSet,
                       label_map: Mapping | None) -> np.ndarray:
    """Grade names in the file, or raw values mapped to grade names by ``label_map``."""
    key_map = None
    if label_map is not None:
        key_map = {_label_key(k): str(v) for k, v in label_map.items()}
        unknown = sorted({v for v in key_map.values() if v not in label_set.names})
        if unknown:
            raise ValueError(f"label_map maps to {unknown}, which are not grades of {label_set.names}")
    out = np.empty(len(table.frame), dtype=np.int64)
    for i, value in enumerate(table.require(column, "label").tolist()):
        row = int(table.rows[i])
        if key_map is not None:
            key = _label_key(value)
            if key is None or key not in key_map:
                raise DataError(f"label {to_text(value)!r} is not a key of label_map "
                                f"{sorted(key_map)}", path=table.path, row=row, column=column)
            name = key_map[key]
        else:
            name = to_text(value)
        if not name:
            raise DataError("missing label", path=table.path, row=row, column=column)
        if name not in label_set.names:
            raise DataError(f"label {name!r} is not a grade of {list(label_set.names)}",
                            path=table.path, row=row, column=column)
        out[i] = label_set.names.index(name)
    return out


def _labels_from_indices(table: RawTable, column: str, label_set: LabelSet) -> np.ndarray:
    """Integer class indices in [0, C) (the embedded dataset stores labels this way)."""
    values = _numeric_column(table, column, "label", allow_missing=False)
    for i, v in enumerate(values):
        if not (v.is_integer() and 0 <= v < label_set.num_classes):
            raise DataError(f"label {to_text(v)!r} is not a class index of {list(label_set.names)} "
                            f"(0..{label_set.num_classes - 1})", path=table.path,
                            row=int(table.rows[i]), column=column)
    return values.astype(np.int64)


def _labels_from_thresholds(table: RawTable, relevance: np.ndarray, column: str,
                            thresholds: Sequence[float], label_set: LabelSet) -> np.ndarray:
    if len(thresholds) + 1 != label_set.num_classes:
        raise ValueError(f"{len(thresholds)} thresholds make {len(thresholds) + 1} grades, but the "
                         f"label set has {label_set.num_classes}: {list(label_set.names)}")
    missing = np.flatnonzero(np.isnan(relevance))
    if missing.size:
        raise DataError("missing relevance value (needed to grade the pair)", path=table.path,
                        row=int(table.rows[missing[0]]), column=column)
    return bin_relevance(relevance, thresholds)


# ---------------------------------------------------------------------------------------------
# assembling the schema frame and resolving duplicates


def _assemble(table: RawTable, *, query_id: list[str], query: list[str], item_id: list[str],
              item_title: list[str], text: dict[str, list[str]], label: np.ndarray,
              relevance: np.ndarray | None, label_column: str, label_set: LabelSet,
              duplicates: str) -> pd.DataFrame:
    if duplicates not in DUPLICATE_POLICIES:
        raise ValueError(f"duplicates must be one of {DUPLICATE_POLICIES}, got {duplicates!r}")
    data = {"query_id": query_id, "query": query, "item_id": item_id, "item_title": item_title,
            **text, "label": np.asarray(label, dtype=np.int64)}
    if relevance is not None:
        data["relevance"] = np.asarray(relevance, dtype=np.float64)
    df = pd.DataFrame(data)
    df = _resolve_duplicates(df, table, label_column, label_set, duplicates)
    df.attrs["text_fields"] = list(text)
    return df


def _resolve_duplicates(df: pd.DataFrame, table: RawTable, label_column: str, label_set: LabelSet,
                        duplicates: str) -> pd.DataFrame:
    keys = ["query_id", "item_id"]
    repeated = df.duplicated(keys, keep=False).to_numpy()
    if not repeated.any():
        return df.reset_index(drop=True)
    keep = np.ones(len(df), dtype=bool)
    label = df["label"].to_numpy().copy()
    relevance = df["relevance"].to_numpy().copy() if "relevance" in df.columns else None
    for _, group in df[repeated].groupby(keys, sort=False):
        positions = group.index.to_numpy()
        first = positions[0]
        labels = group["label"].to_numpy()
        conflict = np.flatnonzero(labels != labels[0])
        if conflict.size and duplicates == "error":
            other = positions[conflict[0]]
            raise DataError(
                f"duplicate pair (query_id={df.at[first, 'query_id']!r}, item_id="
                f"{df.at[first, 'item_id']!r}) with conflicting labels: row {int(table.rows[first])} "
                f"says {label_set.names[labels[0]]!r}, row {int(table.rows[other])} says "
                f"{label_set.names[labels[conflict[0]]]!r} (duplicates='mean' merges them)",
                path=table.path, row=int(table.rows[other]), column=label_column)
        # the nearest class index to the mean; a tie (x.5) goes to the more relevant grade
        label[first] = int(math.ceil(labels.mean() - 0.5))
        if relevance is not None:
            group_relevance = relevance[positions]
            finite = group_relevance[~np.isnan(group_relevance)]
            relevance[first] = finite.mean() if finite.size else np.nan
        keep[positions[1:]] = False
    df = df.assign(label=label)
    if relevance is not None:
        df = df.assign(relevance=relevance)
    return df[keep].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# sources


class TableSource:
    """Any CSV/TSV, JSONL or Parquet file of judged pairs.

    columns:     schema name -> file column, for ``query`` and ``item_title`` (required) and
                 ``query_id`` / ``item_id`` (optional: derived from the normalised query text /
                 the title when absent).
    text_fields: further item-text columns, a list of file columns (kept under the same name) or
                 a mapping schema name -> file column; may hold empty cells.
    Labels come from ``label_column`` as grade names; or as raw values mapped to grade names by
    ``label_map``; or, with ``thresholds`` (descending, one fewer than the grades), as numeric
    relevance binned into grades (the relevance is then kept). ``relevance_column`` keeps a raw
    numeric relevance next to named labels, or supplies the values to bin.
    format: auto (by extension), csv, tsv, jsonl or parquet. encoding: for text formats.
    """

    def __init__(self, path: str, columns: Mapping[str, str], text_fields: Sequence[str] | Mapping[str, str] = (),
                 label_column: str = "label", label_map: Mapping | None = None,
                 relevance_column: str | None = None, thresholds: Sequence[float] | None = None,
                 format: str = "auto", encoding: str = "utf-8"):
        columns = dict(columns or {})
        unknown = sorted(set(columns) - set(SCHEMA_ID_TEXT_COLUMNS))
        if unknown:
            raise ValueError(f"columns maps schema names {list(SCHEMA_ID_TEXT_COLUMNS)}; unknown: {unknown}")
        for name in ("query", "item_title"):
            if not columns.get(name):
                raise ValueError(f"columns must name the file column for {name!r}")
        if label_map is not None and thresholds is not None:
            raise ValueError("give either label_map or thresholds, not both")
        fields = dict(text_fields) if isinstance(text_fields, Mapping) else {f: f for f in text_fields}
        clash = sorted(set(fields) & {*SCHEMA_ID_TEXT_COLUMNS, "label", "relevance"})
        if clash:
            raise ValueError(f"text field names {clash} clash with schema columns")
        self.path = str(path)
        self.columns = columns
        self.text_fields = fields
        self.label_column = label_column
        self.label_map = dict(label_map) if label_map is not None else None
        self.relevance_column = relevance_column
        self.thresholds = tuple(float(t) for t in thresholds) if thresholds is not None else None
        if self.thresholds is not None:
            bin_relevance([], self.thresholds)  # validates the order early
        self.format = format
        self.encoding = encoding

    def read(self) -> RawTable:
        return read_table(self.path, self.format, self.encoding)

    def load(self, label_set: LabelSet, duplicates: str = "error") -> pd.DataFrame:
        return self.frame_from(self.read(), label_set, duplicates)

    def frame_from(self, table: RawTable, label_set: LabelSet, duplicates: str = "error") -> pd.DataFrame:
        """The schema frame of an already read table (validates every row)."""
        cols = self.columns
        query = _query_column(table, cols["query"])
        title = text_column(table, cols["item_title"], "item title", required=True)
        if cols.get("query_id"):
            query_id = text_column(table, cols["query_id"], "query id", required=True)
        else:
            query_id = [query_id_for(q) for q in query]
        if cols.get("item_id"):
            item_id = text_column(table, cols["item_id"], "item id", required=True)
        else:
            item_id = [item_id_for(t) for t in title]
        text = {name: text_column(table, col, name, required=False)
                for name, col in self.text_fields.items()}
        relevance = None
        relevance_column = self.relevance_column
        if self.thresholds is not None:
            relevance_column = relevance_column or self.label_column
            relevance = _numeric_column(table, relevance_column, "relevance", allow_missing=True)
            label = _labels_from_thresholds(table, relevance, relevance_column, self.thresholds, label_set)
        else:
            label = _labels_from_names(table, self.label_column, label_set, self.label_map)
            if relevance_column:
                relevance = _numeric_column(table, relevance_column, "relevance", allow_missing=True)
        return _assemble(table, query_id=query_id, query=query, item_id=item_id, item_title=title,
                         text=text, label=label, relevance=relevance,
                         label_column=relevance_column if self.thresholds is not None else self.label_column,
                         label_set=label_set, duplicates=duplicates)


class ChorusIcecatSource:
    """The embedded Chorus "Broad Query Set" with Open Icecat product content
    (``datasets/chorus_icecat/pairs.parquet``, built by ``scripts/build_chorus_icecat.py``).

    Text fields: brand, description, attributes. ``label`` is stored as the class index into
    the 4 grades (perfect, good, fair, poor); ``relevance`` is the raters' mean score 0-3 (NaN
    where the individual ratings are absent).
    """

    TEXT_FIELDS = ("brand", "description", "attributes")
    NUM_GRADES = 4

    def __init__(self, path: str):
        self.path = str(path)

    def load(self, label_set: LabelSet, duplicates: str = "error") -> pd.DataFrame:
        if label_set.num_classes != self.NUM_GRADES:
            raise ValueError(f"chorus_icecat has {self.NUM_GRADES} grades (3..0 ratings), the label "
                             f"set has {label_set.num_classes}: {list(label_set.names)}")
        table = read_table(self.path, format="parquet")
        return _assemble(
            table,
            query_id=text_column(table, "query_id", "query id", required=True),
            query=_query_column(table, "query"),
            item_id=text_column(table, "item_id", "item id", required=True),
            item_title=text_column(table, "item_title", "item title", required=True),
            text={f: text_column(table, f, f, required=False) for f in self.TEXT_FIELDS},
            label=_labels_from_indices(table, "label", label_set),
            relevance=_numeric_column(table, "relevance", "relevance", allow_missing=True),
            label_column="label", label_set=label_set, duplicates=duplicates)


class HomeDepotSource:
    """Kaggle's Home Depot Product Search Relevance ``train.csv`` or ``train.csv.zip`` (ISO-8859-1;
    columns id, product_uid, product_title, search_term, relevance), read from the user's copy.
    ``path`` may also be the folder holding it.

    query_id from the normalised search term, item_id = product_uid, no further text fields
    (titles only). Grades by ``thresholds`` on the mean relevance (1.0-3.0): >= thresholds[0] ->
    class 0, ..., below the last -> class len(thresholds); ``relevance`` is kept.
    max_pairs: keep whole queries, drawn in a seeded random order, until at least max_pairs pairs
    (rows stay in file order); None keeps all.
    """

    FILE_NAMES = ("train.csv", "train.csv.zip")
    ENCODING = "ISO-8859-1"

    def __init__(self, path: str, thresholds: Sequence[float] = (2.5, 2.17, 1.83),
                 max_pairs: int | None = None, sample_seed: int = 0):
        if max_pairs is not None and int(max_pairs) < 1:
            raise ValueError(f"max_pairs must be >= 1 or None, got {max_pairs}")
        self.path = str(path)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.max_pairs = None if max_pairs is None else int(max_pairs)
        self.sample_seed = int(sample_seed)
        self._table = TableSource(
            self.path, columns={"query": "search_term", "item_id": "product_uid",
                                "item_title": "product_title"},
            label_column="relevance", thresholds=self.thresholds, format="csv", encoding=self.ENCODING)

    def resolve_path(self) -> str:
        """The file to read: ``path`` itself, or train.csv / train.csv.zip inside a folder."""
        if os.path.isdir(self.path):
            for name in self.FILE_NAMES:
                candidate = os.path.join(self.path, name)
                if os.path.isfile(candidate):
                    return candidate
            raise DataError(f"no {' or '.join(self.FILE_NAMES)} in this folder", path=self.path)
        return self.path

    def read(self) -> RawTable:
        return read_table(self.resolve_path(), format="csv", encoding=self.ENCODING)

    def load(self, label_set: LabelSet, duplicates: str = "error") -> pd.DataFrame:
        return self.frame_from(self.read(), label_set, duplicates)

    def frame_from(self, table: RawTable, label_set: LabelSet, duplicates: str = "error") -> pd.DataFrame:
        """The schema frame of an already read file (validated, graded, sampled to max_pairs)."""
        df = self._table.frame_from(table, label_set, duplicates)
        if self.max_pairs is not None:
            df = sample_queries(df, self.max_pairs, self.sample_seed)
        return df
