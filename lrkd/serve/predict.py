"""Score a file of (query, item) pairs with a trained student: streamed, batched, row-exact errors.

    lrkd predict --checkpoint best.ckpt --input pairs.csv --output scored.csv

Input: CSV, TSV, JSONL or Parquet (the format comes from the file name; text files may be
``.gz``/``.bz2``/``.xz`` compressed). Rows are read one at a time (CSV/TSV with the standard
``csv`` module, JSONL line by line, Parquet by record batches), scored ``batch_size`` rows at a
time and written straight out, so memory stays flat however large the file is.

Output (CSV/TSV, JSONL or Parquet, from the output file name), one row per input row, in order:

    line                 where the row is in the input: the 1-based line of a CSV/JSONL record (a
                         CSV header is line 1; a quoted multi-line record counts from its first
                         line), the 1-based row number in a Parquet file
    <input columns>      the input row as given (all columns, or ``keep_columns``)
    grade                predicted grade name: by the model's decision rule when it has a tuned
                         one (``ServingConfig.decision``, lrkd.evaluation.decision), else argmax over the classes
    prob_<grade>         class probability p_c, one column per grade, label-set order
    expected_gain        sum_c p_c * gain_c   (the ranking score of lrkd.evaluation.metrics' nDCG)
    expected_relevance   sum_c p_c * value_c  (the label set's numeric relevance values)
    error                "" for a scored row; for a malformed row the reason (its scores are empty)

A malformed row (a CSV record with the wrong number of fields, a JSONL line that is not a JSON
object, a missing or empty query or title) is never dropped: it is written with its line number
and error, counted in :class:`PredictSummary`, or with ``strict=True`` stops the run with a
:class:`~lrkd.schema.DataError` naming the file, line and column.

The model input is built exactly as in training, by :mod:`lrkd.data.encode` (the one pair encoding):
the query's whitespace collapsed (``query_text``), ``item_text(row, text_fields)``, and the pair
tokenization ``[CLS] query [SEP] item [SEP]`` truncated to ``max_length`` (the item first).
Files are read by :class:`lrkd.data.io.PairFile`; scorers and model loading are in
:mod:`lrkd.serve.scorers`.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from lrkd.data.encode import PairEncoder, is_missing, item_text, query_text, to_text
from lrkd.data.io import InputRow, PairFile, detect_format
from lrkd.schema import DataError, LabelSet
from lrkd.serve.config import ServingConfig
from lrkd.serve.scorers import Scorer
from lrkd.student.encoder import load_tokenizer
from lrkd.utils import atomic_path

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 64
SCHEMA_TEXT_ROLES = ("query", "item_title")
TEXT_DECIMALS = 6  # probabilities and expectations in CSV/JSONL output


# ------------------------------------------------------------------------------ rows -> texts
class RowError(ValueError):
    """A row that cannot be scored; ``column`` is the offending column (or None)."""

    def __init__(self, message: str, column: str | None = None):
        super().__init__(message)
        self.column = column


@dataclass(frozen=True)
class PairColumns:
    """Where a pair's fields are in the input file.

    columns:     schema name -> input column, for ``query``, ``item_title`` and each text field
                 (default: the same name).
    text_fields: the further item-text fields, by schema name, in training order.
    """

    columns: Mapping[str, str] = field(default_factory=dict)
    text_fields: tuple[str, ...] = ()

    def column(self, name: str) -> str:
        return self.columns.get(name, name)

    @property
    def needed(self) -> list[str]:
        return [self.column(n) for n in (*SCHEMA_TEXT_ROLES, *self.text_fields)]

    def check_header(self, header: Sequence[str] | None, path: str) -> None:
        """A column the file lacks entirely is a file error, not a row error."""
        if header is None:
            return
        for name in (*SCHEMA_TEXT_ROLES, *self.text_fields):
            col = self.column(name)
            if col not in header:
                hint = f" (for {name!r}; map it with --columns {name}=<column>)" if col == name else f" (for {name!r})"
                raise DataError(f"missing column {col!r}{hint}; columns found: {list(header)}",
                                path=path, column=col)

    def texts(self, values: Mapping[str, Any]) -> tuple[str, str]:
        """(query, item text) of a row, cleaned as the data sources clean training rows (cells
        stripped, integral floats without ".0", the query's whitespace runs collapsed); RowError
        when the query or title is missing, empty or not text."""
        row = {}
        for name in SCHEMA_TEXT_ROLES:
            col = self.column(name)
            if col not in values:
                raise RowError(f"missing {name} (column {col!r})", col)
            value = values[col]
            if isinstance(value, (dict, list, bool)):
                raise RowError(f"{name} (column {col!r}) must be text, got {type(value).__name__}", col)
            text = to_text(value)
            if not text:
                raise RowError(f"empty {name} (column {col!r})", col)
            row[name] = text
        for name in self.text_fields:
            row[name] = to_text(values.get(self.column(name)))
        return query_text(row["query"]), item_text(row, self.text_fields)


def parse_columns(spec: str | None) -> dict[str, str]:
    """``"query=search_term,item_title=product_title"`` -> {"query": "search_term", ...}."""
    if not spec:
        return {}
    mapping = {}
    for part in spec.split(","):
        name, sep, column = part.partition("=")
        if not sep or not name.strip() or not column.strip():
            raise ValueError(f"--columns entries look like name=column, got {part!r}")
        mapping[name.strip()] = column.strip()
    return mapping


# ------------------------------------------------------------------------------------- writing
def score_columns(label_set: LabelSet) -> list[str]:
    return ["grade", *(f"prob_{n}" for n in label_set.names), "expected_gain", "expected_relevance"]


class ScoreWriter:
    """Writes scored rows to CSV/TSV, JSONL or Parquet (from the file name). The file appears
    atomically: rows go to a temp file beside it, renamed by ``close(commit=True)``."""

    def __init__(self, path: str | os.PathLike, passthrough: Sequence[str], label_set: LabelSet,
                 passthrough_schema=None):
        self.path = Path(path)
        self.format = detect_format(self.path)
        if self.format not in ("csv", "tsv", "jsonl", "parquet"):
            raise DataError(f"cannot write format {self.format}", path=str(path))
        self.passthrough = list(passthrough)
        self.label_set = label_set
        self.scores = score_columns(label_set)
        self.columns = ["line", *self.passthrough, *self.scores, "error"]
        clash = sorted(set(self.passthrough) & ({"line", "error"} | set(self.scores)))
        if clash:
            raise DataError(f"input column(s) {clash} would clash with output columns; "
                            "leave them out with --keep-columns", path=str(path), column=clash[0])
        self._atomic = atomic_path(self.path)  # the output appears whole, when closed
        self.tmp = self._atomic.open()
        if self.format == "parquet":
            fields = [pa.field("line", pa.int64())]
            for col in self.passthrough:
                typ = pa.string()
                if passthrough_schema is not None and col in passthrough_schema.names:
                    typ = passthrough_schema.field(col).type
                fields.append(pa.field(col, typ))
            fields.append(pa.field("grade", pa.string()))
            fields += [pa.field(c, pa.float32()) for c in self.scores[1:]]
            fields.append(pa.field("error", pa.string()))
            self.schema = pa.schema(fields)
            self._text_passthrough = [f.name for f in fields[1:1 + len(self.passthrough)]
                                      if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
            self._writer = pq.ParquetWriter(str(self.tmp), self.schema)
        else:
            self._file = open(self.tmp, "w", encoding="utf-8", newline="")
            if self.format in ("csv", "tsv"):
                self._csv = csv.writer(self._file, delimiter="," if self.format == "csv" else "\t")
                self._csv.writerow(self.columns)

    def write(self, records: list[dict]) -> None:
        if not records:
            return
        if self.format == "parquet":
            for r in records:
                for col in self._text_passthrough:
                    r[col] = _as_text(r.get(col))
            self._writer.write_table(pa.Table.from_pylist(records, schema=self.schema))
        elif self.format == "jsonl":
            for r in records:
                out = {c: _json_value(r.get(c)) for c in self.columns}
                self._file.write(json.dumps(out, ensure_ascii=False, default=str) + "\n")
        else:
            for r in records:
                self._csv.writerow([_cell(r.get(c)) for c in self.columns])

    def close(self, commit: bool = True) -> None:
        if self.format == "parquet":
            self._writer.close()
        else:
            self._file.close()
        if commit:
            self._atomic.commit()
        else:
            self._atomic.discard()


def _round(value):
    return round(float(value), TEXT_DECIMALS) if isinstance(value, (float, np.floating)) else value


def _json_value(value):
    if isinstance(value, (float, np.floating)) and math.isnan(value):
        return None
    return _round(value)


def _cell(value) -> str:
    if is_missing(value):
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(_round(value))


def _as_text(value) -> str | None:
    if is_missing(value):
        return None
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


# ------------------------------------------------------------------------------------ predict
@dataclass
class PredictSummary:
    """rows: input rows seen; scored: rows with scores; malformed_lines: line numbers of the rest."""

    input: str
    output: str
    rows: int = 0
    scored: int = 0
    malformed_lines: list[int] = field(default_factory=list)

    @property
    def malformed(self) -> int:
        return len(self.malformed_lines)

    def line(self) -> str:
        text = f"scored {self.scored} of {self.rows} rows of {self.input} -> {self.output}"
        if self.malformed:
            shown = ", ".join(map(str, self.malformed_lines[:10]))
            more = f", ... ({self.malformed - 10} more)" if self.malformed > 10 else ""
            text += f"; {self.malformed} malformed row(s) (lines {shown}{more}), kept with their error"
        else:
            text += "; no malformed rows"
        return text


def _batches(rows: Iterable[InputRow], size: int) -> Iterator[list[InputRow]]:
    it = iter(rows)
    while chunk := list(islice(it, size)):
        yield chunk


def resolve_text_fields(given: Sequence[str] | None, config: ServingConfig, source: PairFile) -> tuple[str, ...]:
    """The item-text fields: given > the model's recorded ones > a Parquet file's pandas attrs >
    none (with a warning that names the file's columns)."""
    if given is not None:
        return tuple(given)
    if config.text_fields is not None:
        return tuple(config.text_fields)
    if source.text_fields_hint is not None:
        log.info("text fields from the Parquet file's metadata: %s", list(source.text_fields_hint))
        return tuple(source.text_fields_hint)
    log.warning("the model does not record its item-text fields and none were given: the item text is the "
                "title only. Pass --text-fields (e.g. brand,description,attributes) to match training; the "
                "file's columns: %s", source.columns if source.columns is not None else "(JSONL: per line)")
    return ()


def predict_file(input_path: str | os.PathLike, output_path: str | os.PathLike, scorer: Scorer,
                 config: ServingConfig, *, batch_size: int = DEFAULT_BATCH_SIZE,
                 columns: Mapping[str, str] | None = None, text_fields: Sequence[str] | None = None,
                 keep_columns: Sequence[str] | None = None, strict: bool = False, progress: bool = True,
                 tokenizer=None, encoding: str = "utf-8-sig") -> PredictSummary:
    """Score every row of ``input_path`` and write ``output_path`` (see the module docstring).

    scorer: a :class:`Scorer` (eager or ONNX); config: its :class:`ServingConfig`.
    columns: schema name -> input column (``query``, ``item_title``, text fields).
    text_fields: item-text fields by schema name (default: :func:`resolve_text_fields`).
    keep_columns: input columns copied to the output (default all).
    strict: raise DataError on the first malformed row (no output file is left behind).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    source = PairFile(input_path, encoding=encoding)
    pairs = PairColumns(dict(columns or {}), resolve_text_fields(text_fields, config, source))
    pairs.check_header(source.columns, source.path)
    if keep_columns is not None and source.columns is not None:
        unknown = [c for c in keep_columns if c not in source.columns]
        if unknown:
            raise DataError(f"--keep-columns names column(s) {unknown} the file lacks", path=source.path,
                            column=unknown[0])
    if keep_columns is not None and source.format == "parquet":
        source.select(list(dict.fromkeys([*keep_columns, *pairs.needed])))
    encode = PairEncoder(tokenizer if tokenizer is not None else load_tokenizer(config.tokenizer),
                         config.max_length)
    label_set = config.label_set
    rule = config.decision_rule()
    names = np.asarray(label_set.names)
    gains, values = np.asarray(label_set.gains), np.asarray(label_set.values)
    summary = PredictSummary(input=str(input_path), output=str(output_path))
    writer: ScoreWriter | None = None
    bar = tqdm(total=source.num_rows, unit="row", desc="predict", disable=not progress)
    try:
        for chunk in _batches(source, batch_size):
            if writer is None:
                passthrough = list(keep_columns) if keep_columns is not None else (
                    source.columns if source.columns is not None
                    else list(dict.fromkeys(k for row in chunk for k in row.values)))
                writer = ScoreWriter(output_path, passthrough, label_set, passthrough_schema=source.arrow_schema)
            good, queries, items = [], [], []
            for row in chunk:
                if not row.error:
                    try:
                        q, item = pairs.texts(row.values)
                        good.append(row)
                        queries.append(q)
                        items.append(item)
                        continue
                    except RowError as e:
                        row.error, row.column = str(e), e.column
                if strict:
                    raise DataError(f"malformed row: {row.error}", path=source.path, row=row.line, column=row.column)
                summary.malformed_lines.append(row.line)
            scores, grades = {}, {}
            if good:
                probs = np.asarray(scorer(**encode(queries, items)), dtype=np.float32)
                for row, p, g in zip(good, probs, rule.decide(probs)):
                    scores[id(row)] = p
                    grades[id(row)] = int(g)
            records = []
            for row in chunk:
                record = {"line": row.line, **{c: row.values.get(c) for c in writer.passthrough}, "error": row.error}
                p = scores.get(id(row))
                if p is not None:
                    record["grade"] = str(names[grades[id(row)]])
                    record.update({f"prob_{n}": float(v) for n, v in zip(label_set.names, p)})
                    record["expected_gain"] = float(p @ gains)
                    record["expected_relevance"] = float(p @ values)
                records.append(record)
            writer.write(records)
            summary.rows += len(chunk)
            summary.scored += len(good)
            bar.update(len(chunk))
        if writer is None:
            raise DataError("no data rows", path=source.path)
        writer.close(commit=True)
        writer = None
    finally:
        bar.close()
        if writer is not None:
            writer.close(commit=False)
    return summary


__all__ = ["PairColumns", "RowError", "parse_columns", "score_columns", "ScoreWriter", "PredictSummary",
           "resolve_text_fields", "predict_file", "DEFAULT_BATCH_SIZE"]
