"""MPCoT generation: for each labelled pair and perspective, sample n completions, parse each into
(rationale, label) and mark it ``correct`` when the label is the gold grade (rejection sampling;
the incorrect ones are kept too, for preference pairs).

Two-step answer extraction: a sample whose text has no parsable label (a small teacher often never
writes the ``Label:`` line, or runs out of tokens) is given a grade drawn from the teacher's own
probabilities after ``"<rationale>\nLabel:"`` (at the sampling temperature; the argmax when
greedy) when a ``label_scorer`` is passed
(:class:`lrkd.teacher.label.annotate.GradeScorer`, the local backend); its ``label_source`` is then
``"scored"`` (``"parsed"`` for a label the text states) and its ``parse_error`` still records the
format failure.

Output directory::

    plan.json            what the shards hold (a fingerprint of pairs, prompts and sampling settings)
    shard-00000.jsonl    one JSON object per (pair, perspective, sample), see ROW_COLUMNS
    stats.json           per-perspective statistics (:func:`generation_stats`)

Work is cut into shards of ``shard_size`` consecutive pairs (all their perspectives and samples);
each shard is written atomically (temp file, then rename) once its generation is done, and a restart
with the same inputs skips the shards already on disk: finished work is never redone nor dropped.
Shard s is sampled with ``derive_seed(seed, "shard", s)``, so a resumed run equals an uninterrupted
one. A different plan (other pairs, prompts or settings) in the same directory starts over.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from lrkd.schema import DataError, text_fields
from lrkd.data.encode import item_text
from lrkd.teacher.runtime.base import GenerationBackend, derive_seed
from lrkd.teacher.parse import parse_single
from lrkd.teacher.prompts import Perspective, clip_words, render_perspective_prompt
from lrkd.utils import write_text_atomic

log = logging.getLogger(__name__)

# query_id, item_id (str): the pair; perspective (name); sample (0..n-1); text: the raw completion;
# rationale: parsed (the whole text when no label was found); label: the parsed grade name or None;
# parse_error: None or a code of lrkd.teacher.parse.PARSE_ERRORS; correct: label == gold;
# gold: the gold grade name; label_source: "parsed" | "scored" (two-step extraction) | None (no label).
ROW_COLUMNS = ("query_id", "item_id", "perspective", "sample", "text", "rationale", "label", "parse_error",
               "correct", "gold", "label_source")
PLAN_FILE = "plan.json"
STATS_FILE = "stats.json"


def shard_file(shard: int) -> str:
    return f"shard-{shard:05d}.jsonl"


@dataclass(frozen=True)
class Pair:
    """One labelled pair to reason about: its ids, gold grade name, and item text."""

    query_id: str
    item_id: str
    query: str
    item: str
    gold: str


def labelled_pairs(frame: pd.DataFrame, rows: Sequence[int], grade_names: Sequence[str],
                   max_item_words: int | None = None) -> list[Pair]:
    """The pairs at ``rows`` (positions in ``frame``), item text cut to ``max_item_words`` words.
    Raises DataError on an unlabelled row."""
    fields = text_fields(frame)
    out = []
    for r in np.asarray(rows, dtype=np.int64).tolist():
        row = frame.iloc[r]
        label = int(row["label"])
        if not 0 <= label < len(grade_names):
            raise DataError(f"MPCoT generation needs labelled pairs; label {label} is not a grade index of "
                            f"{list(grade_names)}", row=r, column="label")
        out.append(Pair(str(row["query_id"]), str(row["item_id"]), str(row["query"]),
                        clip_words(item_text(row, fields), max_item_words), str(grade_names[label])))
    return out


def _sha256(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _start_or_resume(out: Path, plan: dict) -> None:
    """Keep the shards of the same plan; clear those of another one; drop stray temp files."""
    out.mkdir(parents=True, exist_ok=True)
    for tmp in out.glob(".*.tmp"):
        tmp.unlink()
    plan_path = out / PLAN_FILE
    old = None
    if plan_path.is_file():
        try:
            old = json.loads(plan_path.read_text())
        except ValueError:
            old = None
    shards = sorted(out.glob("shard-*.jsonl"))
    if old is not None and old.get("fingerprint") == plan["fingerprint"]:
        if shards:
            log.info("resuming generation in %s: %d of %d shards done", out, len(shards), plan["num_shards"])
        return
    if shards:
        log.warning("%s holds %d shard(s) of other inputs or settings: starting over", out, len(shards))
        for path in shards:
            path.unlink()
    (out / STATS_FILE).unlink(missing_ok=True)
    write_text_atomic(plan_path, json.dumps(plan, indent=2), fsync=True)


def generate_mpcot(frame: pd.DataFrame, rows: Sequence[int], perspectives: Sequence[Perspective],
                   grade_names: Sequence[str], backend: GenerationBackend, *, n: int, temperature: float,
                   max_new_tokens: int, seed: int, out_dir, shard_size: int = 256,
                   tokenizer_for_prompts=None, label_scorer=None, max_item_words: int | None = None) -> dict:
    """Sample, parse and filter MPCoT rationales for the pairs at ``rows`` into ``out_dir``.

    frame: a schema DataFrame; rows: positions of labelled pairs in it; grade_names: the label set's
    names (class index i = grade_names[i]); tokenizer_for_prompts: renders prompts with its chat
    template (None: plain text, e.g. for a chat endpoint); label_scorer: ``(prompts, rationales) ->
    [B, C] probabilities`` for two-step extraction of missing labels (None: a sample without a
    parsable label stays unlabelled); max_item_words: cut item texts in prompts. Returns the statistics written to
    ``stats.json`` plus ``this_run`` (shards generated/reused, samples generated, seconds, seconds
    per sample) for this call. A backend error propagates after the finished shards are saved.
    """
    if int(n) < 1 or int(shard_size) < 1:
        raise ValueError(f"n and shard_size must be >= 1, got n={n}, shard_size={shard_size}")
    perspectives = list(perspectives)
    out = Path(out_dir)
    pairs = labelled_pairs(frame, rows, grade_names, max_item_words)
    prompts = [[render_perspective_prompt(tokenizer_for_prompts, p, pair.query, pair.item, grade_names)
                for p in perspectives] for pair in pairs]
    num_shards = (len(pairs) + shard_size - 1) // shard_size
    plan = {"num_pairs": len(pairs), "num_shards": num_shards, "shard_size": int(shard_size),
            "perspectives": [p.name for p in perspectives], "n": int(n), "temperature": float(temperature),
            "max_new_tokens": int(max_new_tokens), "seed": int(seed), "grade_names": list(grade_names),
            "two_step_labels": label_scorer is not None}
    plan["fingerprint"] = _sha256({**plan, "pairs": [(p.query_id, p.item_id, p.gold) for p in pairs],
                                   "prompts": _sha256(prompts)})
    _start_or_resume(out, plan)

    started, generated, reused, samples = time.time(), 0, 0, 0
    for s in range(num_shards):
        path = out / shard_file(s)
        if path.is_file():
            reused += 1
            continue
        lo, hi = s * shard_size, min((s + 1) * shard_size, len(pairs))
        flat = [prompt for j in range(lo, hi) for prompt in prompts[j]]
        results = backend.generate(flat, int(n), float(temperature), int(max_new_tokens),
                                   derive_seed(seed, "shard", s))
        if len(results) != len(flat) or any(len(r) != int(n) for r in results):
            raise RuntimeError(f"backend {type(backend).__name__} returned {len(results)} prompt results with "
                               f"{sorted({len(r) for r in results})} completions; expected {len(flat)} x {n}")
        records, score_prompts = [], []
        for j in range(lo, hi):
            for k, p in enumerate(perspectives):
                for sample, text in enumerate(results[(j - lo) * len(perspectives) + k]):
                    records.append(generation_row(pairs[j], p.name, sample, text, grade_names))
                    score_prompts.append(prompts[j][k])
        if label_scorer is not None:
            add_scored_labels(records, score_prompts, label_scorer, grade_names, float(temperature),
                              np.random.default_rng(derive_seed(seed, "labels", s)))
        write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), fsync=True)
        generated += 1
        samples += len(records)
        log.info("generation shard %d/%d written (%d rows)", s + 1, num_shards, len(records))
    seconds = time.time() - started

    stats = generation_stats(read_generations(out), [p.name for p in perspectives])
    write_text_atomic(out / STATS_FILE, json.dumps(stats, indent=2), fsync=True)
    return {**stats, "this_run": {"shards_generated": generated, "shards_reused": reused,
                                  "samples_generated": samples, "seconds": round(seconds, 3),
                                  "seconds_per_sample": round(seconds / samples, 4) if samples else None}}


def generation_row(pair: Pair, perspective: str, sample: int, text: str, grade_names: Sequence[str]) -> dict:
    """One output row: parse ``text`` and compare its label with the pair's gold grade."""
    parsed = parse_single(text, grade_names)
    return {"query_id": pair.query_id, "item_id": pair.item_id, "perspective": perspective, "sample": int(sample),
            "text": str(text), "rationale": parsed.rationale, "label": parsed.label, "parse_error": parsed.error,
            "correct": parsed.label is not None and parsed.label == pair.gold, "gold": pair.gold,
            "label_source": "parsed" if parsed.label is not None else None}


def sample_grades(probs: np.ndarray, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """Grade indices [B] from probabilities [B, C]: drawn from ``p^(1/T)`` renormalised (the label
    token the model would sample at temperature T), the argmax when ``temperature <= 0``."""
    probs = np.asarray(probs, dtype=np.float64)
    if float(temperature) <= 0:
        return probs.argmax(axis=1)
    logits = np.log(np.clip(probs, 1e-30, None)) / float(temperature)
    weights = np.exp(logits - logits.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    return np.array([rng.choice(len(w), p=w) for w in weights], dtype=np.int64)


def add_scored_labels(records: list[dict], prompts: Sequence[str], label_scorer, grade_names: Sequence[str],
                      temperature: float = 0.0, rng: np.random.Generator | None = None) -> int:
    """Two-step extraction in place: each record without a label but with a non-empty rationale
    gets a grade read from ``label_scorer``'s probabilities after its rationale (sampled at
    ``temperature`` with ``rng``, as the label token would have been; the argmax at 0), with
    ``label_source="scored"`` and ``correct`` recomputed. ``prompts[i]`` is record i's prompt.
    Returns how many were scored."""
    todo = [i for i, r in enumerate(records) if r["label"] is None and str(r["rationale"]).strip()]
    if not todo:
        return 0
    probs = np.asarray(label_scorer([prompts[i] for i in todo], [records[i]["rationale"] for i in todo]))
    picks = sample_grades(probs, temperature, rng if rng is not None else np.random.default_rng(0))
    for i, best in zip(todo, picks.tolist()):
        label = str(grade_names[best])
        records[i].update(label=label, label_source="scored", correct=label == records[i]["gold"])
    return len(todo)


def read_generations(out_dir) -> pd.DataFrame:
    """All rows of the finished shards of ``out_dir``, in shard order (columns ROW_COLUMNS)."""
    records: list[dict] = []
    for path in sorted(Path(out_dir).glob("shard-*.jsonl")):
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except ValueError as e:
                        raise DataError(f"not a JSON object: {e}", path=str(path), row=line_no) from None
    df = pd.DataFrame.from_records(records, columns=list(ROW_COLUMNS))
    df["sample"] = df["sample"].astype(np.int64)
    df["correct"] = df["correct"].astype(bool)
    for column in ("label", "parse_error", "label_source"):  # None (not NaN) where absent, as in the files
        df[column] = df[column].astype(object).where(df[column].notna(), None)
    return df


def _rate(num: float, den: float) -> float | None:
    return float(num) / float(den) if den else None


def _group_stats(df: pd.DataFrame) -> dict:
    parsed = df["parse_error"].isna()
    labelled = df["label"].notna()
    correct = df["correct"].astype(bool)
    lengths = df.loc[labelled, "rationale"].str.len()
    pairs = df.groupby(["query_id", "item_id"], sort=False)["correct"].any() if len(df) else pd.Series(dtype=bool)
    scored = df["label_source"].eq("scored") if "label_source" in df else pd.Series(False, index=df.index)
    return {"samples": int(len(df)), "parse_failures": int((~parsed).sum()), "labels_scored": int(scored.sum()),
            "label_accuracy": _rate(correct.sum(), labelled.sum()), "kept_rate": _rate(correct.sum(), len(df)),
            "mean_rationale_chars": float(lengths.mean()) if len(lengths) else None,
            "pairs": int(len(pairs)), "pairs_with_kept": int(pairs.sum()),
            "parse_errors": {str(k): int(v) for k, v in df["parse_error"].value_counts().sort_index().items()}}


def generation_stats(df: pd.DataFrame, perspectives: Iterable[str]) -> dict:
    """Statistics of generation rows: ``{"per_perspective": {name: s}, "overall": s}`` with s =
    samples, parse_failures (rows with a parse error), labels_scored (labels from two-step
    extraction), label_accuracy (correct / rows with a label, parsed or scored; None when none has
    one), kept_rate (correct / samples), mean_rationale_chars (over rows with a label),
    pairs, pairs_with_kept (pairs with >= 1 correct sample), parse_errors ({code: count})."""
    return {"per_perspective": {p: _group_stats(df[df["perspective"] == p]) for p in perspectives},
            "overall": _group_stats(df)}


def format_stats_table(stats: dict) -> str:
    """An aligned text table of per-perspective statistics, one line per perspective plus 'all'."""
    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    lines = [f"{'perspective':<22} {'samples':>7} {'failed':>6} {'scored':>6} {'acc':>6} {'kept':>6} {'chars':>7} "
             f"{'pairs_kept':>10}"]
    rows = list(stats["per_perspective"].items()) + [("all", stats["overall"])]
    for name, s in rows:
        lines.append(f"{name:<22} {s['samples']:>7d} {s['parse_failures']:>6d} {s.get('labels_scored', 0):>6d} "
                     f"{fmt(s['label_accuracy'], '.3f'):>6} "
                     f"{fmt(s['kept_rate'], '.3f'):>6} {fmt(s['mean_rationale_chars'], '.1f'):>7} "
                     f"{s['pairs_with_kept']:>4d}/{s['pairs']:<5d}")
    return "\n".join(lines)
