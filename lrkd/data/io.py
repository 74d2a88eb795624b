"""Reading files of pairs: the one place that knows file formats (CSV, TSV, JSONL, Parquet;
text files may be compressed), for the data sources and for serving alike.

- :func:`detect_format`: the format from the file name.
- :func:`read_table`: a whole file into a :class:`RawTable` (a DataFrame of its cells plus each
  row's line number), for the data sources (:mod:`lrkd.data.sources`).
- :class:`PairFile`: a file streamed row by row (:class:`InputRow`), malformed rows reported with
  their line instead of stopping, for batch scoring (:mod:`lrkd.serve.predict`).

Errors are :class:`~lrkd.schema.DataError` naming the file, the line and the column.
"""
from __future__ import annotations

import bz2
import csv
import gzip
import json
import lzma
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from lrkd.schema import DataError

COMPRESSION_SUFFIXES = (".zip", ".gz", ".bz2", ".xz", ".zst")
FORMAT_BY_SUFFIX = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
                    ".parquet": "parquet", ".pq": "parquet"}
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


@dataclass(frozen=True)
class RawTable:
    """A file as read: its columns (as stored), and each row's 1-based line/row number in it."""

    frame: pd.DataFrame
    path: str
    rows: np.ndarray  # [N] int, the number a DataError reports for each row

    def require(self, column: str, role: str) -> pd.Series:
        if column not in self.frame.columns:
            raise DataError(f"missing column {column!r} (needed for {role}); columns found: "
                            f"{[str(c) for c in self.frame.columns]}", path=self.path, column=column)
        return self.frame[column]


def detect_format(path: str | os.PathLike) -> str:
    """csv, tsv, jsonl or parquet from the file name (a compression suffix such as .zip is skipped)."""
    name = Path(path).name.lower()
    for suffix in COMPRESSION_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    fmt = FORMAT_BY_SUFFIX.get(Path(name).suffix)
    if fmt is None:
        raise DataError("cannot tell the format from the file name; give format= csv, tsv, jsonl "
                        "or parquet", path=str(path))
    return fmt


def read_table(path: str | os.PathLike, format: str = "auto", encoding: str = "utf-8") -> RawTable:
    """Read a CSV/TSV (all cells as text), JSONL or Parquet file. Raises DataError when the file is
    missing, unreadable, or has no data rows."""
    path_str = str(path)
    if not os.path.exists(path_str):
        raise DataError("file not found", path=path_str)
    if os.path.isdir(path_str):
        raise DataError("is a directory, not a file", path=path_str)
    fmt = detect_format(path_str) if format == "auto" else format
    if fmt in ("csv", "tsv"):
        frame = _read_csv(path_str, sep="," if fmt == "csv" else "\t", encoding=encoding)
        rows = np.arange(len(frame)) + 2
    elif fmt == "jsonl":
        frame, rows = _read_jsonl(path_str, encoding)
    elif fmt == "parquet":
        try:
            frame = pd.read_parquet(path_str)
        except Exception as e:  # pyarrow raises ArrowInvalid / OSError for non-Parquet bytes
            raise DataError(f"cannot read as Parquet: {e}", path=path_str) from e
        rows = np.arange(len(frame)) + 1
    else:
        raise ValueError(f"unknown format {format!r}; use auto, csv, tsv, jsonl or parquet")
    if len(frame) == 0:
        raise DataError("empty file: no data rows", path=path_str)
    return RawTable(frame=frame.reset_index(drop=True), path=path_str, rows=np.asarray(rows))


def _read_csv(path: str, sep: str, encoding: str) -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding=encoding)
    except pd.errors.EmptyDataError as e:
        raise DataError("empty file: no header and no rows", path=path) from e
    except UnicodeDecodeError as e:
        line = _first_undecodable_line(path, encoding)
        raise DataError(f"not readable as {encoding} text ({e.reason}); pass encoding=",
                        path=path, row=line) from e
    except (pd.errors.ParserError, OSError, ValueError) as e:
        raise DataError(f"cannot read as CSV: {e}", path=path) from e


def _first_undecodable_line(path: str, encoding: str) -> int | None:
    """1-based number of the first line that does not decode (plain files only), else None."""
    if path.lower().endswith(COMPRESSION_SUFFIXES):
        return None
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                raw.decode(encoding)
            except UnicodeDecodeError:
                return number
    return None


def _read_jsonl(path: str, encoding: str) -> tuple[pd.DataFrame, list[int]]:
    opener = gzip.open if path.lower().endswith(".gz") else open
    records, rows = [], []
    try:
        with opener(path, "rt", encoding=encoding) as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue  # blank lines (e.g. a trailing newline) carry no record
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"malformed JSON line: {e.msg} (at character {e.pos + 1})",
                                    path=path, row=number) from e
                if not isinstance(record, dict):
                    raise DataError(f"a JSONL line must hold an object, got {type(record).__name__}",
                                    path=path, row=number)
                records.append(record)
                rows.append(number)
    except UnicodeDecodeError as e:
        raise DataError(f"not readable as {encoding} text ({e.reason}); pass encoding=",
                        path=path, row=len(rows) + 1 if rows else None) from e
    except OSError as e:
        raise DataError(f"cannot read: {e}", path=path) from e
    return pd.DataFrame.from_records(records), rows


# --------------------------------------------------------------------------------- streaming
@dataclass
class InputRow:
    """One row of the input as read. line: 1-based line (CSV/JSONL) or row (Parquet) number;
    values: the cells by column name (empty when the row could not be read); error: why it is
    malformed ("" if not known to be)."""

    line: int
    values: dict[str, Any]
    error: str = ""
    column: str | None = None


class PairFile:
    """A streamed input file of pairs. ``columns``: the header (CSV), schema (Parquet), or None
    (JSONL: each line has its own keys); ``num_rows``: known for Parquet only; iterating yields
    :class:`InputRow` in file order."""

    def __init__(self, path: str | os.PathLike, format: str = "auto", encoding: str = "utf-8-sig",
                 read_columns: Sequence[str] | None = None):
        self.path = str(path)
        if not os.path.exists(self.path):
            raise DataError("file not found", path=self.path)
        if os.path.isdir(self.path):
            raise DataError("is a directory, not a file", path=self.path)
        self.format = detect_format(self.path) if format == "auto" else format
        if self.format not in ("csv", "tsv", "jsonl", "parquet"):
            raise ValueError(f"unknown format {format!r}; use auto, csv, tsv, jsonl or parquet")
        self.encoding = encoding
        self.columns: list[str] | None = None
        self.num_rows: int | None = None
        self.arrow_schema = None
        self.text_fields_hint: tuple[str, ...] | None = None  # from a Parquet file's pandas attrs
        self._read_columns = list(read_columns) if read_columns is not None else None
        if self.format in ("csv", "tsv"):
            self.columns = self._csv_header()
        elif self.format == "parquet":
            self._open_parquet()

    # -- text files
    def _open_text(self):
        opener = _OPENERS.get(Path(self.path).suffix.lower())
        if opener is not None:
            return opener(self.path, "rt", encoding=self.encoding, newline="")
        if self.path.lower().endswith(".zip"):
            raise DataError("zip archives cannot be streamed; unzip it or use .gz", path=self.path)
        return open(self.path, "rt", encoding=self.encoding, newline="")

    def _csv_reader(self, f):
        return csv.reader(f, delimiter="," if self.format == "csv" else "\t")

    def _csv_header(self) -> list[str]:
        try:
            with self._open_text() as f:
                header = next(self._csv_reader(f), None)
        except (UnicodeDecodeError, csv.Error, OSError) as e:
            raise DataError(f"cannot read the header: {e}", path=self.path, row=1) from e
        if not header:
            raise DataError("empty file: no header", path=self.path, row=1)
        if len(set(header)) != len(header):
            dupes = sorted({c for c in header if header.count(c) > 1})
            raise DataError(f"duplicate column name(s) {dupes} in the header", path=self.path, row=1)
        return header

    def _iter_csv(self) -> Iterator[InputRow]:
        header = self.columns
        with self._open_text() as f:
            reader = self._csv_reader(f)
            next(reader)
            last_line = reader.line_num
            while True:
                try:
                    record = next(reader)
                except StopIteration:
                    return
                except csv.Error as e:  # e.g. a NUL byte: report the record, go on with the next
                    first, last_line = last_line + 1, reader.line_num
                    yield InputRow(first, {}, f"unreadable CSV record: {e}")
                    continue
                except UnicodeDecodeError as e:
                    raise DataError(f"not readable as {self.encoding} text ({e.reason})", path=self.path,
                                    row=reader.line_num + 1) from e
                first, last_line = last_line + 1, reader.line_num
                if not record:
                    continue  # a blank line carries no record
                if len(record) != len(header):
                    yield InputRow(first, {}, f"expected {len(header)} fields (as in the header), "
                                              f"got {len(record)}")
                else:
                    yield InputRow(first, dict(zip(header, record)))

    def _iter_jsonl(self) -> Iterator[InputRow]:
        with self._open_text() as f:
            number = 0
            while True:
                try:
                    line = f.readline()
                except UnicodeDecodeError as e:
                    raise DataError(f"not readable as {self.encoding} text ({e.reason})", path=self.path,
                                    row=number + 1) from e
                if not line:
                    return
                number += 1
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    yield InputRow(number, {}, f"malformed JSON: {e.msg} (at character {e.pos + 1})")
                    continue
                if not isinstance(record, dict):
                    yield InputRow(number, {}, f"a JSONL line must hold an object, got {type(record).__name__}")
                    continue
                yield InputRow(number, record)

    # -- parquet
    def _open_parquet(self) -> None:
        try:
            self._parquet = pq.ParquetFile(self.path)
        except Exception as e:  # pyarrow raises ArrowInvalid / OSError for non-Parquet bytes
            raise DataError(f"cannot read as Parquet: {e}", path=self.path) from e
        schema = self._parquet.schema_arrow
        self.columns = list(schema.names)
        self.num_rows = self._parquet.metadata.num_rows
        self.arrow_schema = schema
        attrs = (schema.metadata or {}).get(b"PANDAS_ATTRS")
        if attrs:
            try:
                fields = json.loads(attrs).get("text_fields")
                self.text_fields_hint = tuple(fields) if fields else None
            except (ValueError, AttributeError):
                pass

    def _iter_parquet(self) -> Iterator[InputRow]:
        wanted = self._read_columns
        columns = None if wanted is None else [c for c in self.columns if c in set(wanted)]
        number = 0
        for batch in self._parquet.iter_batches(batch_size=1024, columns=columns):
            for record in batch.to_pylist():
                number += 1
                yield InputRow(number, record)

    def select(self, columns: Sequence[str]) -> None:
        """Read only these columns where the format allows it (Parquet)."""
        self._read_columns = list(columns)

    def __iter__(self) -> Iterator[InputRow]:
        if self.format in ("csv", "tsv"):
            return self._iter_csv()
        if self.format == "jsonl":
            return self._iter_jsonl()
        return self._iter_parquet()


__all__ = ["detect_format", "read_table", "RawTable", "PairFile", "InputRow", "COMPRESSION_SUFFIXES"]
