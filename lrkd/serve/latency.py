"""Interleaved latency timing of served students (eager PyTorch or ONNX Runtime), in one process.

On a shared machine absolute times drift with the load of other jobs; timing every model in
round-robin rounds (:func:`time_interleaved`) lets the drift hit all of them alike, so the *ratio*
of two models measured in the same call is meaningful even when their milliseconds are not. The
benchmark (benchmarks/latency.py) and the architecture search's latency table
(lrkd.search.latency_table) both time this way.

    runners = [EagerRunner("full", student), EagerRunner("pruned", pruned)]
    seconds = time_interleaved(runners, synthetic_inputs(1, 128, vocab), iterations=50, rounds=5, warmup=3)
    summarise(seconds["pruned"], batch=1)   # {"median_ms", "p99_ms", "mean_ms", "n", "pairs_per_s"}
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from lrkd.serve.config import ServingConfig
from lrkd.serve.export import ServingStudent, export_onnx, quantize_int8

SWITCH_PAUSE_S = 0.02  # between runners, so one runtime's spinning worker threads do not bill the next
RUNTIMES = ("eager", "onnx", "onnx-int8")


def synthetic_inputs(batch: int, length: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """[batch, length] int64 arrays: [CLS] random ids [SEP] random ids [SEP], no padding, the query
    segment a quarter of the tokens (token type 0), the item the rest (type 1)."""
    if batch < 1 or length < 4:
        raise ValueError(f"batch must be >= 1 and length >= 4, got {batch}, {length}")
    rng = np.random.default_rng(seed)
    ids = rng.integers(min(1000, vocab - 1), vocab, size=(batch, length), dtype=np.int64)
    ids[:, 0], ids[:, length // 4], ids[:, -1] = 101 % vocab, 102 % vocab, 102 % vocab
    types = np.zeros_like(ids)
    types[:, length // 4 + 1:] = 1
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": types}


class EagerRunner:
    """Times ``module`` (anything with ``predict_logits``: a RelevanceStudent or its StudentModule)
    in eager PyTorch, under ``torch.inference_mode``."""

    kind = "eager"

    def __init__(self, name: str, module):
        self.name = name
        self.model = ServingStudent(module).eval()
        counts = module.parameter_counts() if hasattr(module, "parameter_counts") else {}
        self.params = int(counts.get("inference", sum(p.numel() for p in module.parameters())))
        self._feeds: dict = {}

    def prepare(self, feed: dict[str, np.ndarray]) -> None:
        self._feeds = {k: torch.from_numpy(v) for k, v in feed.items()}

    def __call__(self) -> None:
        with torch.inference_mode():
            self.model(self._feeds["input_ids"], self._feeds["attention_mask"], self._feeds["token_type_ids"])


class OnnxRunner:
    """Times an exported student (``.onnx``, fp32 or int8) with ONNX Runtime on ``threads`` threads."""

    kind = "onnx"

    def __init__(self, name: str, path: str | os.PathLike, threads: int | None, params: int):
        # lazy: the scorers module loads the student model stack (transformers), which the sweeper's
        # process (lrkd.search.latency_table imports this module) does not need to start
        from lrkd.serve.scorers import OnnxScorer

        self.name = name
        self.scorer = OnnxScorer(path, threads=threads)
        self.params = int(params)
        self.size_mb = Path(path).stat().st_size / 2**20
        self._feed: dict = {}

    def prepare(self, feed: dict[str, np.ndarray]) -> None:
        self._feed = feed

    def __call__(self) -> None:
        self.scorer.run(**self._feed)


def make_runner(name: str, student, runtime: str, workdir: str | os.PathLike, threads: int | None = None,
                max_length: int = 128):
    """A runner of ``student`` (a RelevanceStudent) on ``runtime``: ``eager``, ``onnx`` (fp32) or
    ``onnx-int8`` (dynamic int8 quantization; the ONNX files go into ``workdir``)."""
    if runtime == "eager":
        return EagerRunner(name, student)
    if runtime not in RUNTIMES:
        raise ValueError(f"latency runtime {runtime!r} is not one of {RUNTIMES}")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    config = ServingConfig(label_set=student.label_set, tokenizer=student.tokenizer_name, max_length=max_length)
    path = export_onnx(student, Path(workdir) / f"{safe}.onnx", config)
    if runtime == "onnx-int8":
        path = quantize_int8(path)
    return OnnxRunner(name, path, threads, student.parameter_counts()["inference"])


def time_interleaved(runners: list, feed: dict, iterations: int, rounds: int, warmup: int) -> dict[str, np.ndarray]:
    """Seconds per call of each runner: ``warmup`` untimed calls each, then ``rounds`` rounds in which
    every runner makes iterations / rounds timed calls in turn (round-robin: drift hits all alike).
    ``feed``: the inputs of every runner (a dict with ``input_ids``...), or {runner name: its inputs}."""
    if not runners:
        raise ValueError("time_interleaved needs at least one runner")
    if len({r.name for r in runners}) != len(runners):
        raise ValueError(f"runner names must be distinct, got {[r.name for r in runners]}")
    per_round = max(1, iterations // max(1, rounds))
    times = {r.name: [] for r in runners}
    shared = "input_ids" in feed
    for r in runners:
        r.prepare(feed if shared else feed[r.name])
        for _ in range(warmup):
            r()
    for _ in range(max(1, rounds)):
        for r in runners:
            time.sleep(SWITCH_PAUSE_S)
            for _ in range(per_round):
                t0 = time.perf_counter()
                r()
                times[r.name].append(time.perf_counter() - t0)
    return {k: np.asarray(v) for k, v in times.items()}


def summarise(seconds: np.ndarray, batch: int) -> dict:
    """Median, p99 and mean in ms, the number of calls and pairs per second of per-call ``seconds``."""
    seconds = np.asarray(seconds, dtype=float)
    return {"median_ms": float(np.median(seconds) * 1e3), "p99_ms": float(np.percentile(seconds, 99) * 1e3),
            "mean_ms": float(seconds.mean() * 1e3), "n": int(len(seconds)),
            "pairs_per_s": float(batch * len(seconds) / seconds.sum())}


__all__ = ["synthetic_inputs", "EagerRunner", "OnnxRunner", "make_runner", "time_interleaved", "summarise",
           "RUNTIMES", "SWITCH_PAUSE_S"]
