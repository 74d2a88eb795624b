"""Teacher work dealt to worker processes, one resumable part folder each.

The readings (:mod:`lrkd.teacher.label.score_pool`) and the query generations
(:mod:`lrkd.teacher.label.queries`) run the same way, and this module is that way:

- :func:`part_slots`: a resumed run continues the existing parts ``<out>/worker-<r>/``; new parts
  get fresh names, so no worker ever writes into another's folder.
- :func:`run_workers`: the jobs run in this process (one worker) or in a spawned pool.
- :func:`run_requests`: one worker's rows through the teacher, one sequence at a time
  (:class:`lrkd.teacher.runtime.llama_cpp.LlamaCppRuntime`) or ``n_seq`` sequences at once
  (:class:`lrkd.teacher.runtime.batched.BatchedDecoder`); each task object is both a one-sequence
  callable and a request program.
- :func:`settings_record` / :func:`settings_difference`: the record that decides whether an existing
  part is resumed; its ``execution`` entry (engine, sequences in flight) is provenance, not settings.
- :func:`append_progress` / :func:`progress_totals`: each part's ``progress.jsonl``, one line per
  shard written (its rows and the worker's wall seconds for them), appended as the shard lands, so the
  wall time of work that was killed and resumed adds up.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from lrkd.teacher.label.readers import SequenceLimits
from lrkd.teacher.runtime.batched import BatchedDecoder, context_cells
from lrkd.teacher.runtime.engines import open_engine
from lrkd.teacher.runtime.llama_cpp import LlamaCppRuntime

PART_PREFIX = "worker-"
PROGRESS_FILE = "progress.jsonl"
EXECUTION_KEY = "execution"  # how a part was made (engine, sequences in flight): provenance, not settings


def settings_record(record: Mapping) -> dict:
    """``record`` as plain JSON values, without its ``execution`` entry."""
    out = json.loads(json.dumps(dict(record), default=str))
    out.pop(EXECUTION_KEY, None)
    return out


def settings_difference(found: Mapping, wanted: Mapping) -> list[str]:
    """The keys whose settings differ between two records (``execution`` aside); [] when equal."""
    found, wanted = settings_record(found), settings_record(wanted)
    return sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))


def part_slots(out_dir: str | Path, workers: int) -> list[str]:
    """Folder names for ``workers`` parts under ``out_dir``: the existing parts first (a resumed
    worker continues its own part and shard numbering), then fresh ``worker-<r>`` names."""
    existing = sorted(p.name for p in Path(out_dir).glob(PART_PREFIX + "*") if p.is_dir())
    fresh = (n for n in (f"{PART_PREFIX}{i:03d}" for i in range(10_000)) if n not in existing)
    return existing[:workers] + [next(fresh) for _ in range(max(0, workers - len(existing)))]


def append_progress(part_dir: str | Path, shard: int, rows: int, seconds: float, **extra) -> None:
    """One line of ``<part_dir>/progress.jsonl``: a shard of ``rows`` rows took ``seconds`` of this
    worker's wall time (appended after the shard is written)."""
    record = {"shard": int(shard), "rows": int(rows), "seconds": round(float(seconds), 3),
              "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra}
    with open(Path(part_dir) / PROGRESS_FILE, "a") as f:
        f.write(json.dumps(record, default=str) + "\n")


def progress_totals(out_dir: str | Path) -> dict:
    """{"timed_rows", "worker_seconds", "seconds_per_row"} over every part's progress lines (rows
    written before progress was recorded are not timed)."""
    rows = seconds = 0.0
    for path in sorted(Path(out_dir).glob(f"{PART_PREFIX}*/{PROGRESS_FILE}")):
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                rows, seconds = rows + record["rows"], seconds + record["seconds"]
    return {"timed_rows": int(rows), "worker_seconds": round(seconds, 1),
            "seconds_per_row": round(seconds / rows, 3) if rows else None}


def run_workers(run_job: Callable[[Any], dict], jobs: Sequence) -> list[dict]:
    """``run_job(job)`` for every job: in this process for one job, else one spawned process each
    (``run_job`` must be a module-level function and the jobs picklable)."""
    if len(jobs) == 1:
        return [run_job(jobs[0])]
    with mp.get_context("spawn").Pool(len(jobs)) as pool:
        return pool.map(run_job, jobs)


def runtime_settings(runtime: Mapping) -> tuple[dict, int, str]:
    """(LlamaCppRuntime keyword arguments, sequences in flight, engine name) of a runtime record
    (``teacher.llama_cpp``: n_ctx, n_threads, n_batch, and optionally engine, n_seq)."""
    runtime = dict(runtime)
    n_seq = int(runtime.pop("n_seq", 1) or 1)
    engine = str(runtime.pop("engine", "cyllama") or "cyllama")
    return {k: int(v) for k, v in runtime.items()}, n_seq, engine


def run_requests(gguf: str, runtime: Mapping, rows: Sequence, task, max_prefixes: int = 1) -> Iterator[tuple]:
    """(row, task's result) for every row of ``rows`` (each with a ``shared`` prefix of token ids).

    ``task(runtime, row)`` runs one sequence; ``task.program(row, limits)`` is the same work as a
    :class:`BatchedDecoder` request (:class:`SequenceLimits`). With
    ``n_seq`` > 1 the rows come back in the order they finish, and the context holds ``n_seq`` slots
    and up to ``max_prefixes`` shared prefixes, each in a KV stream of its own."""
    kwargs, n_seq, engine = runtime_settings(runtime)
    if n_seq <= 1:
        single = LlamaCppRuntime(gguf, engine=engine, **kwargs)
        try:
            for row in rows:
                yield row, task(single, row)
        finally:
            single.close()
        return
    prefix_cells = max((len(r.shared) for r in rows), default=0)
    eng = open_engine(gguf, engine, n_ctx=context_cells(n_seq, kwargs["n_ctx"], max_prefixes, prefix_cells),
                      n_threads=kwargs.get("n_threads", 1), n_batch=kwargs.get("n_batch", 512),
                      n_seq=n_seq + max_prefixes)
    try:
        limits = SequenceLimits(kwargs["n_ctx"], eng.is_eog)
        requests = ((row, (lambda r=row: task.program(r, limits))) for row in rows)
        yield from BatchedDecoder(eng, n_seq, max_prefixes=max_prefixes).run(requests)
    finally:
        eng.close()


__all__ = ["PART_PREFIX", "PROGRESS_FILE", "EXECUTION_KEY", "append_progress", "progress_totals", "settings_record",
           "settings_difference", "part_slots", "run_workers",
           "runtime_settings", "run_requests"]
