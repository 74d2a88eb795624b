"""Reading many pairs with a llama.cpp teacher, in several worker processes, resumable.

:func:`score_pairs` deals the pairs not read yet to ``workers`` processes; each reads its share with
a reader of :mod:`lrkd.teacher.label.readers` (or :class:`lrkd.teacher.label.panel.PanelReader`), one
pair at a time or, with ``teacher.llama_cpp.n_seq`` > 1, ``n_seq`` pairs at once in one context
(:class:`lrkd.teacher.runtime.batched.BatchedDecoder`). About 3 s per pair on one core for the 1.5B Q4
teacher on one sequence (product text cut to 25 words), against about 20 s for a generated
multi-perspective rationale (``benchmarks/teacher_throughput.py`` for the batched figures).

Readings are written as ordinary artefact shards (:class:`lrkd.artefact.ArtefactWriter`, raw soft
labels, optional per-pair scores) into one part per worker, ``<reads>/worker-<r>/``. A killed run
resumes: pairs in any part are not read again, the rest are dealt round-robin to the workers (any
number). A part written with other settings (another ``extra`` record) stops the run with an error
and is never removed; the engine and the batching (``extra["execution"]``) are provenance, not
settings (:mod:`lrkd.teacher.label.workers` runs the workers). :func:`iter_reads` reads them back.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from lrkd.artefact import ArtefactWriter, iter_shards, read_manifest
from lrkd.artefact.ranks import artefact_keys
from lrkd.teacher.label.readers import PairPrompt
from lrkd.teacher.label.workers import (PART_PREFIX, append_progress, part_slots, run_requests, run_workers,
                                        settings_difference)

log = logging.getLogger(__name__)


@dataclass
class ScoreJob:
    """What one worker process needs (picklable). rows: (query_id, item_id, pair ids) of its share."""

    worker: int
    gguf: str
    runtime: dict
    part_dir: str
    manifest: dict
    reader: Any
    rows: list[PairPrompt]
    shard_size: int = 64
    progress_every: int = 25


def _with_scores(reading: tuple) -> tuple:
    return tuple(reading) if len(reading) == 4 else (*reading, {})


def _run_job(job: ScoreJob) -> dict:
    """Score ``job.rows`` into the worker's part (resuming its shard numbering); returns stats."""
    logging.basicConfig(level=logging.INFO, format=f"[worker {job.worker}] %(asctime)s %(message)s")
    os.environ.setdefault("OMP_NUM_THREADS", str(job.runtime.get("n_threads", 1)))
    writer = ArtefactWriter(job.part_dir, **job.manifest)
    done = writer.completed_keys()
    rows = [r for r in job.rows if (r.query_id, r.item_id) not in done]
    next_shard = max(writer.completed_shards(), default=-1) + 1
    started, written = time.time(), 0
    perspectives = list(job.manifest["perspectives"])
    chunk: list = []

    last = started

    def flush():
        nonlocal next_shard, last
        texts = {p: [c[3].get(p, "") for c in chunk] for p in perspectives}
        scores = {name: [c[4][name] for c in chunk] for name in chunk[0][4]}
        writer.write_shard(next_shard, [c[0].query_id for c in chunk], [c[0].item_id for c in chunk], texts,
                           np.stack([c[1] for c in chunk]), np.stack([c[2] for c in chunk]), scores=scores)
        now = time.time()
        append_progress(job.part_dir, next_shard, len(chunk), now - last, runtime=job.runtime)
        next_shard, last = next_shard + 1, now
        chunk.clear()

    for prompt, reading in run_requests(job.gguf, job.runtime, rows, job.reader, max_prefixes=2):
        chunk.append((prompt, *_with_scores(reading)))
        written += 1
        if written % int(job.progress_every) == 0:
            log.info("%d/%d pairs, %.2f s/pair", written, len(rows), (time.time() - started) / written)
        if len(chunk) == int(job.shard_size):
            flush()
    if chunk:
        flush()
    return {"worker": job.worker, "written": written, "seconds": time.time() - started}


def part_dirs(reads_dir: str | os.PathLike) -> list[Path]:
    return sorted(Path(reads_dir).glob(PART_PREFIX + "*"))


def check_parts(reads_dir: str | os.PathLike, extra: Mapping) -> None:
    """Every part of ``reads_dir`` must hold readings made with the settings ``extra`` (its
    ``execution`` entry aside: readings by another engine or batch size are resumed, not redone).
    A part made with other settings stops the run with an error naming the difference: finished
    readings are never removed."""
    for part in part_dirs(reads_dir):
        try:
            found = read_manifest(part).extra
        except Exception as e:  # noqa: BLE001 - an unreadable part is reported, not removed
            raise ValueError(f"the reading part {part} cannot be read ({e}); move it away to read again") from e
        diff = settings_difference(found, extra)
        if diff:
            raise ValueError(f"the reading part {part} was made with other settings (they differ in {diff}); "
                             f"read into another folder (stage.reads_dir) or move the part away")


def completed_keys(reads_dir: str | os.PathLike) -> set[tuple[str, str]]:
    keys: set[tuple[str, str]] = set()
    for part in part_dirs(reads_dir):
        keys |= artefact_keys(part)
    return keys


def score_pairs(prompts: Sequence[PairPrompt], *, gguf: str, runtime: Mapping, reads_dir: str | os.PathLike,
                manifest: Mapping, reader, workers: int = 1, shard_size: int = 64) -> dict:
    """Read every pair of ``prompts`` not yet in ``reads_dir`` with ``workers`` processes (pairs
    dealt round-robin, in the given order: put the pairs needed first first), each read by ``reader``
    (:class:`JudgementReader` or :class:`RationaleReader`). ``manifest``: the
    :class:`lrkd.artefact.ArtefactWriter` arguments of each part (its ``extra`` is the settings
    record that decides whether an existing part is resumed). Returns {pending, written, seconds}."""
    reads_dir = Path(reads_dir)
    reads_dir.mkdir(parents=True, exist_ok=True)
    check_parts(reads_dir, manifest.get("extra") or {})
    done = completed_keys(reads_dir)
    pending = [p for p in prompts if (p.query_id, p.item_id) not in done]
    started = time.time()
    if not pending:
        return {"pending": 0, "written": 0, "seconds": 0.0}
    workers = max(1, min(int(workers), len(pending)))
    slots = part_slots(reads_dir, workers)
    jobs = [ScoreJob(worker=w, gguf=str(gguf), runtime=dict(runtime), part_dir=str(reads_dir / slots[w]),
                     manifest=dict(manifest), reader=reader, rows=list(pending[w::workers]),
                     shard_size=int(shard_size)) for w in range(workers)]
    log.info("scoring %d pairs (%d already read) with %d worker(s) into %s", len(pending), len(done), workers,
             reads_dir)
    results = run_workers(_run_job, jobs)
    return {"pending": len(pending), "written": sum(r["written"] for r in results),
            "seconds": time.time() - started, "workers": results}


@dataclass
class Reads:
    """Every reading in a reads folder: keys [n] (query_id, item_id), raw soft labels [n, C],
    latents [n, K, D], rationales perspective -> [n] texts, scores name -> [n] (NaN where a shard
    lacks the score)."""

    keys: list[tuple[str, str]]
    soft_labels: np.ndarray
    latents: np.ndarray
    rationales: dict[str, list[str]] = field(default_factory=dict)
    scores: dict[str, np.ndarray] = field(default_factory=dict)

    def index(self) -> dict[tuple[str, str], int]:
        return {k: i for i, k in enumerate(self.keys)}


def iter_reads(reads_dir: str | os.PathLike) -> Reads | None:
    """All parts' shards of ``reads_dir`` in one :class:`Reads` (None when there is none)."""
    keys, soft, latents, rationales, shards = [], [], [], {}, []
    for part in part_dirs(reads_dir):
        for shard in iter_shards(part):
            keys += list(zip(shard.query_ids.tolist(), shard.item_ids.tolist()))
            soft.append(shard.soft_labels)
            latents.append(shard.latents)
            shards.append(shard)
            for p, texts in shard.rationales.items():
                rationales.setdefault(p, []).extend(texts)
    if not keys:
        return None
    names = sorted({name for shard in shards for name in shard.scores})
    scores = {name: np.concatenate([shard.scores.get(name, np.full(len(shard), np.nan, np.float32))
                                    for shard in shards]) for name in names}
    return Reads(keys, np.concatenate(soft), np.concatenate(latents), rationales, scores)


__all__ = ["ScoreJob", "score_pairs", "Reads", "iter_reads", "completed_keys", "part_dirs", "check_parts"]
