"""Score a file of (query, item) pairs with a trained student: streamed, batched, row-exact errors.

    python -m lrkd.predict --checkpoint best.ckpt --input pairs.csv --output scored.csv

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
                         one (``ServingConfig.decision``, lrkd.decision), else argmax over the classes
    prob_<grade>         class probability p_c, one column per grade, label-set order
    expected_gain        sum_c p_c * gain_c   (the ranking score of lrkd.metrics' nDCG)
    expected_relevance   sum_c p_c * value_c  (the label set's numeric relevance values)
    error                "" for a scored row; for a malformed row the reason (its scores are empty)

A malformed row (a CSV record with the wrong number of fields, a JSONL line that is not a JSON
object, a missing or empty query or title) is never dropped: it is written with its line number
and error, counted in :class:`PredictSummary`, or with ``strict=True`` stops the run with a
:class:`~lrkd.data.schema.DataError` naming the file, line and column.

The model input is built exactly as in training: ``item_text(row, text_fields)`` of
:mod:`lrkd.data.tokenize` and its pair tokenization ``[CLS] query [SEP] item [SEP]`` truncated to
``max_length`` (the item first).
"""
from __future__ import annotations

import bz2
import csv
import gzip
import json
import logging
import lzma
import math
import os
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Protocol, Sequence

import numpy as np
from tqdm.auto import tqdm

from lrkd.data.datamodule import pad_sequences
from lrkd.data.schema import DataError, LabelSet
from lrkd.data.sources import _to_text, detect_format
from lrkd.data.tokenize import _check_lengths, _pair_chunk, item_text
from lrkd.models import resolve_model_path

log = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 128
DEFAULT_BATCH_SIZE = 64
SCHEMA_TEXT_ROLES = ("query", "item_title")
TEXT_DECIMALS = 6  # probabilities and expectations in CSV/JSONL output
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


# ------------------------------------------------------------------------------ serving config
@dataclass(frozen=True)
class ServingConfig:
    """What serving needs besides the weights, so that it reads pairs exactly as training did.

    label_set:    the grades (class i of the model = ``label_set.names[i]``).
    tokenizer:    hub id or local path of the tokenizer (resolved with ``resolve_model_path``).
    max_length:   tokens per pair, specials included (the training data's ``max_length``).
    text_fields:  the further item-text columns training showed after the title, in order;
                  None when the checkpoint does not record them.
    perspectives: the extractor's perspective names (informative).
    decision:     the fitted decision rule (:mod:`lrkd.decision` dict: kind, score, metric,
                  score_values, thresholds), None for argmax; it decides ``grade``.
    """

    label_set: LabelSet
    tokenizer: str
    max_length: int = DEFAULT_MAX_LENGTH
    text_fields: tuple[str, ...] | None = None
    perspectives: tuple[str, ...] = ()
    decision: Mapping | None = None

    def to_dict(self) -> dict:
        ls = self.label_set
        out = {"label_set": {"names": list(ls.names), "gains": list(ls.gains), "values": list(ls.values),
                             "relevant_up_to": ls.relevant_up_to},
               "tokenizer": self.tokenizer, "max_length": int(self.max_length),
               "text_fields": None if self.text_fields is None else list(self.text_fields),
               "perspectives": list(self.perspectives)}
        if self.decision is not None and self.decision.get("kind", "argmax") != "argmax":
            out["decision"] = dict(self.decision)
        return out

    def decision_rule(self):
        """The :mod:`lrkd.decision` rule that maps probabilities to ``grade`` (ArgmaxRule by default)."""
        from lrkd.decision import rule_from_dict

        return rule_from_dict(self.decision, self.label_set)

    @classmethod
    def from_dict(cls, d: Mapping) -> "ServingConfig":
        fields = d.get("text_fields")
        return cls(label_set=LabelSet.from_config(d["label_set"]), tokenizer=str(d["tokenizer"]),
                   max_length=int(d.get("max_length") or DEFAULT_MAX_LENGTH),
                   text_fields=None if fields is None else tuple(fields),
                   perspectives=tuple(d.get("perspectives") or ()), decision=d.get("decision"))

    @classmethod
    def from_hparams(cls, hparams: Mapping, max_length: int | None = None) -> "ServingConfig":
        """From a :class:`~lrkd.student.module.StudentModule`'s hyper-parameters. ``max_length``
        overrides the stored one; without either, :data:`DEFAULT_MAX_LENGTH`."""
        spec = dict(hparams["data_spec"])
        encoder = dict(hparams["encoder"])
        stored = spec.get("max_length") or encoder.get("max_length")
        if max_length is None and stored is None:
            log.warning("the checkpoint does not record the training max_length; using %d "
                        "(pass --max-length to change it)", DEFAULT_MAX_LENGTH)
        tokenizer = encoder.get("tokenizer") or encoder.get("name_or_path")
        if not tokenizer:
            raise ValueError("the checkpoint's encoder hyper-parameters name no tokenizer")
        fields = spec.get("text_fields")
        return cls(label_set=LabelSet.from_config(spec["label_set"]), tokenizer=str(tokenizer),
                   max_length=int(max_length or stored or DEFAULT_MAX_LENGTH),
                   text_fields=None if fields is None else tuple(fields),
                   perspectives=tuple(spec.get("perspectives") or ()))

    def with_decision_of(self, module) -> "ServingConfig":
        """This config with ``module``'s decision rule (a fitted tuned rule; argmax records none)."""
        rule = module.decision_rule() if hasattr(module, "decision_rule") else None
        if rule is None or rule.kind == "argmax":
            return self
        return self.replace(decision=rule.to_dict())

    def replace(self, **changes) -> "ServingConfig":
        from dataclasses import replace
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


# ------------------------------------------------------------------------------------- scorers
class Scorer(Protocol):
    """(input_ids, attention_mask, token_type_ids) [B, L] int64 arrays -> class probabilities [B, C]
    float32 (rows sum to 1)."""

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                 token_type_ids: np.ndarray) -> np.ndarray: ...


class TorchScorer:
    """Eager PyTorch scoring with a module that has ``predict_logits`` (a StudentModule)."""

    def __init__(self, module):
        self.module = module.eval()

    def __call__(self, input_ids, attention_mask, token_type_ids) -> np.ndarray:
        import torch

        with torch.inference_mode():
            logits = self.module.predict_logits(torch.as_tensor(input_ids), torch.as_tensor(attention_mask),
                                                torch.as_tensor(token_type_ids))
            return logits.float().softmax(-1).numpy()


def load_student(checkpoint: str | os.PathLike, max_length: int | None = None):
    """A trained student and its serving config from a Lightning ``.ckpt`` (loaded with
    ``weights_only=True``) or a :mod:`lrkd.serve.hf` ``save_pretrained`` directory.
    Returns (module in eval mode, ServingConfig)."""
    path = Path(checkpoint)
    if not path.exists():
        raise DataError("checkpoint not found", path=str(path))
    from lrkd.serve import hf

    if path.is_dir():
        if not hf.is_student_pretrained(path):
            raise DataError(f"a directory, but not a saved student (no {hf.HEAD_CONFIG})", path=str(path))
        module = hf.load_student_pretrained(path)
        config = hf.load_serving_config(path)
        return module, config.replace(max_length=max_length)
    from lrkd.student.module import StudentModule

    module = StudentModule.load_from_checkpoint(str(path), weights_only=True, map_location="cpu").eval()
    return module, ServingConfig.from_hparams(module.hparams, max_length=max_length).with_decision_of(module)


def load_scorer(checkpoint: str | os.PathLike | None = None, onnx: str | os.PathLike | None = None,
                max_length: int | None = None, threads: int | None = None) -> tuple[Scorer, ServingConfig]:
    """The scorer predict uses: ONNX Runtime when ``onnx`` is given (its JSON sidecar, or else the
    checkpoint, gives the serving config), eager PyTorch on ``checkpoint`` otherwise."""
    if onnx is None and checkpoint is None:
        raise ValueError("give a checkpoint, an ONNX model, or both")
    if onnx is not None:
        from lrkd.serve.export import OnnxScorer, sidecar_path

        scorer = OnnxScorer(onnx, threads=threads)
        if sidecar_path(onnx).exists():
            config = scorer.config
        elif checkpoint is not None:
            config = load_student(checkpoint)[1]
        else:
            raise DataError(f"no serving config next to the ONNX model ({sidecar_path(onnx).name}); "
                            "pass the checkpoint too", path=str(onnx))
        return scorer, config.replace(max_length=max_length)
    module, config = load_student(checkpoint, max_length=max_length)
    return TorchScorer(module), config


# ------------------------------------------------------------------------------- pair encoding
def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_path(name_or_path))


class PairEncoder:
    """(queries, item texts) -> padded model inputs, tokenized exactly as training's standard view.

    Returns ``{input_ids, attention_mask, token_type_ids}``: [B, L] int64 numpy arrays, right-padded
    to the longest pair of the batch (L <= max_length).
    """

    def __init__(self, tokenizer, max_length: int):
        _check_lengths(tokenizer, max_length)
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.pad_id = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)

    def __call__(self, queries: Sequence[str], items: Sequence[str]) -> dict[str, np.ndarray]:
        ids, types = _pair_chunk(self.tokenizer, list(queries), list(items), self.max_length)
        input_ids, mask = pad_sequences([np.asarray(x) for x in ids], self.pad_id)
        token_types, _ = pad_sequences([np.asarray(x) for x in types], 0)
        return {"input_ids": input_ids.numpy(), "attention_mask": mask.numpy(),
                "token_type_ids": token_types.numpy()}


# ------------------------------------------------------------------------------------- reading
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
        import pyarrow.parquet as pq

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


# ------------------------------------------------------------------------------ rows -> texts
class RowError(ValueError):
    """A row that cannot be scored; ``column`` is the offending column (or None)."""

    def __init__(self, message: str, column: str | None = None):
        super().__init__(message)
        self.column = column


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


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
            text = _to_text(value)
            if not text:
                raise RowError(f"empty {name} (column {col!r})", col)
            row[name] = text
        for name in self.text_fields:
            row[name] = _to_text(values.get(self.column(name)))
        return " ".join(row["query"].split()), item_text(row, self.text_fields)


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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        if self.format == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

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
            import pyarrow as pa

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
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def _round(value):
    return round(float(value), TEXT_DECIMALS) if isinstance(value, (float, np.floating)) else value


def _json_value(value):
    if isinstance(value, (float, np.floating)) and math.isnan(value):
        return None
    return _round(value)


def _cell(value) -> str:
    if _is_missing(value):
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(_round(value))


def _as_text(value) -> str | None:
    if _is_missing(value):
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


__all__ = ["ServingConfig", "Scorer", "TorchScorer", "load_student", "load_scorer", "load_tokenizer",
           "PairEncoder", "InputRow", "PairFile", "PairColumns", "RowError", "parse_columns", "score_columns",
           "ScoreWriter", "PredictSummary", "resolve_text_fields", "predict_file", "DEFAULT_MAX_LENGTH"]
