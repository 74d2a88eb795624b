"""The latency table: each student architecture timed once (no training: weights do not change the
time), on the serving runtime the user names, as a ratio to the unpruned student timed in the same
rounds (lrkd.serve.latency.time_interleaved), in a CSV that later searches reuse.

An :class:`Architecture` is (num_layers, intermediate_size, max_length, extractor); ``None`` layers or
FFN size = the encoder's own (unpruned). Inputs are exactly ``max_length`` tokens (no padding: the
worst case a request of that length costs). Architectures are timed in groups of ``group_size``, each
group with the reference (the unpruned student at the reference max_length and extractor), so a
group's ratios come from one stretch of machine load.

Table columns (one row per architecture x runtime x threads x batch):

    num_layers, intermediate_size, max_length, extractor   the architecture ("" = unpruned)
    runtime, threads, batch                                eager | onnx | onnx-int8; torch/ORT threads
    median_ms, p99_ms                                      this architecture, as timed
    reference_ms                                           the reference's median in the same rounds
    ratio                                                  median_ms / reference_ms
    latency_ms                                             ratio x reference_ms_pooled: the table's
                                                           comparable ms (the budget is checked on it)
    reference_ms_pooled                                    the reference's median over all its groups
    params                                                 inference parameters
    measured_at                                            UTC time of the measurement
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lrkd.serve.latency import make_runner, synthetic_inputs, time_interleaved
from lrkd.utils import write_text_atomic

log = logging.getLogger(__name__)

ARCH_FIELDS = ("num_layers", "intermediate_size", "max_length", "extractor")
SETTING_FIELDS = ("runtime", "threads", "batch")
COLUMNS = (*ARCH_FIELDS, *SETTING_FIELDS, "median_ms", "p99_ms", "reference_ms", "ratio", "latency_ms",
           "reference_ms_pooled", "params", "measured_at")


@dataclass(frozen=True)
class Architecture:
    """A student architecture: layers and FFN neurons kept (None: the encoder's own), the tokens per
    pair, and the extractor's name (conf/extractor/<name>.yaml)."""

    num_layers: int | None
    intermediate_size: int | None
    max_length: int
    extractor: str

    def __post_init__(self):
        for name in ("num_layers", "intermediate_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or int(value) < 1):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        if int(self.max_length) < 4:
            raise ValueError(f"max_length must be >= 4, got {self.max_length}")

    @property
    def name(self) -> str:
        return (f"L{self.num_layers or 'full'}-F{self.intermediate_size or 'full'}-S{self.max_length}-"
                f"{self.extractor}")

    def row(self) -> dict:
        return {k: ("" if v is None else v) for k, v in asdict(self).items()}

    @classmethod
    def from_row(cls, row) -> "Architecture":
        def num(v):
            return None if v is None or v == "" or (isinstance(v, float) and np.isnan(v)) else int(v)

        return cls(num(row["num_layers"]), num(row["intermediate_size"]), int(row["max_length"]), str(row["extractor"]))


def _key(arch: Architecture, runtime: str, threads: int, batch: int) -> tuple:
    return (arch.num_layers, arch.intermediate_size, int(arch.max_length), arch.extractor, runtime, int(threads),
            int(batch))


class LatencyTable:
    """The rows of a latency table CSV (see the module docstring), looked up by architecture and
    setting; :meth:`measure` times the missing ones and appends them."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path else None
        self.rows: dict[tuple, dict] = {}
        if self.path is not None and self.path.is_file():
            frame = pd.read_csv(self.path, keep_default_na=False)
            missing = sorted(set(COLUMNS) - set(frame.columns))
            if missing:
                raise ValueError(f"{self.path}: not a latency table (no columns {missing})")
            for row in frame.to_dict("records"):
                self.rows[_key(Architecture.from_row(row), str(row["runtime"]), int(row["threads"]),
                               int(row["batch"]))] = row

    def get(self, arch: Architecture, runtime: str, threads: int, batch: int) -> dict | None:
        return self.rows.get(_key(arch, runtime, threads, batch))

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(list(self.rows.values()), columns=list(COLUMNS))

    def save(self, path: str | os.PathLike | None = None) -> Path | None:
        path = Path(path) if path else self.path
        if path is None:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, self.frame().to_csv(index=False))
        return path

    def measure(self, archs: Iterable[Architecture], reference: Architecture,
                build: Callable[[Architecture], torch.nn.Module], runtime: str = "eager", threads: int = 1,
                batch_sizes: Sequence[int] = (1,), iterations: int = 30, rounds: int = 5, warmup: int = 3,
                group_size: int = 4) -> int:
        """Time the architectures of ``archs`` that the table lacks (at every batch size), with the
        reference in every group; append and save. ``build(arch)`` -> a RelevanceStudent in eval mode.
        Returns the number of rows added."""
        archs = list(dict.fromkeys(archs))
        added = 0
        previous = torch.get_num_threads()
        torch.set_num_threads(int(threads))
        try:
            for batch in batch_sizes:
                todo = [a for a in archs if self.get(a, runtime, threads, batch) is None]
                if not todo:
                    continue
                log.info("latency table: timing %d architectures (%s, %d threads, batch %d)", len(todo), runtime,
                         threads, batch)
                rows = []
                with tempfile.TemporaryDirectory(prefix="lrkd-latency-") as workdir:
                    ref_model = build(reference)
                    vocab = int(ref_model.encoder.config.vocab_size)
                    for start in range(0, len(todo), max(1, group_size)):
                        group = todo[start:start + group_size]
                        rows += self._time_group(group, reference, ref_model, build, runtime, threads, batch, vocab,
                                                 workdir, iterations, rounds, warmup)
                pooled = float(np.median([r["reference_ms"] for r in rows]))
                stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
                for r in rows:
                    r.update(latency_ms=r["ratio"] * pooled, reference_ms_pooled=pooled, measured_at=stamp)
                    self.rows[_key(Architecture.from_row(r), runtime, threads, batch)] = r
                added += len(rows)
                self.save()
        finally:
            torch.set_num_threads(previous)
        return added

    @staticmethod
    def _time_group(group, reference, ref_model, build, runtime, threads, batch, vocab, workdir, iterations,
                    rounds, warmup) -> list[dict]:
        """One interleaved timing of the group's architectures and the reference, each on inputs of
        its own max_length."""
        runners = {reference: make_runner("reference", ref_model, runtime, workdir, threads, reference.max_length)}
        for a in group:
            if a != reference:
                runners[a] = make_runner(a.name, build(a), runtime, workdir, threads, a.max_length)
        feeds = {r.name: synthetic_inputs(batch, a.max_length, vocab) for a, r in runners.items()}
        seconds = time_interleaved(list(runners.values()), feeds, iterations, rounds, warmup)
        ref_ms = float(np.median(seconds["reference"]) * 1e3)
        rows = []
        for a in group:
            runner = runners[a]
            s = seconds[runner.name]
            median = float(np.median(s) * 1e3)
            rows.append({**a.row(), "runtime": runtime, "threads": int(threads), "batch": int(batch),
                         "median_ms": median, "p99_ms": float(np.percentile(s, 99) * 1e3),
                         "reference_ms": ref_ms, "ratio": median / ref_ms, "params": int(runner.params)})
        return rows


__all__ = ["Architecture", "LatencyTable", "ARCH_FIELDS", "COLUMNS"]
