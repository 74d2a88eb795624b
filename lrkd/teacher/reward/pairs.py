"""DPO preference pairs from rewards: candidate completions from the MPCoT generations, their
combined reward, best-of-n vs worst-of-n per prompt.

Candidates (:func:`candidates_from_generations`): for each labelled pair and each sample index s,
the multi-perspective completion made of every perspective's sample s (its rationale; a missing or
empty one leaves its section empty) and the final label = the median grade of the perspectives'
labels (the lower one of an even count; no ``Label:`` line when none has a label).

Combination (:func:`combine`): each dimension is normalised within its prompt's candidates
(``zscore``: (s - mean) / max(std, min_std); ``center``: s - mean; ``none``), then weighted and
summed. Pairs (:func:`best_worst_pairs`): per prompt, the best candidate against the worst (the
lowest sample index among equals), kept when their combined margin exceeds ``min_margin`` (ties,
margin 0, are always dropped), ordered by margin, largest first.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from lrkd.schema import UNLABELLED, DataError, text_fields
from lrkd.data.encode import item_text
from lrkd.teacher.prompts import Perspective, clip_words, format_multi_completion, one_line, render_multi_prompt
from lrkd.utils import write_text_atomic

NORMALISATIONS = ("zscore", "center", "none")


@dataclass(frozen=True)
class Candidate:
    """One completion of a prompt (pair): sample index, text, per-perspective labels."""

    query_id: str
    item_id: str
    sample: int
    completion: str
    label: str | None
    perspective_labels: dict
    gold: str
    query: str
    item_text: str


@dataclass(frozen=True)
class RewardPair:
    """A DPO pair (prompt, chosen, rejected: DPO's schema) with the candidates' scores and margin."""

    query_id: str
    item_id: str
    prompt: str
    chosen: str
    rejected: str
    chosen_sample: int
    rejected_sample: int
    margin: float
    chosen_scores: dict = field(default_factory=dict)
    rejected_scores: dict = field(default_factory=dict)


def _median_grade(labels: Sequence[str | None], grade_names: Sequence[str]) -> str | None:
    idx = sorted(list(grade_names).index(x) for x in labels if x in grade_names)
    return None if not idx else str(grade_names[idx[(len(idx) - 1) // 2]])


def multi_completion(rationales: Mapping[str, str], perspectives: Sequence[Perspective], label: str | None) -> str:
    """The multi-perspective completion; without a label, no ``Label:`` line."""
    text = format_multi_completion({p.name: rationales.get(p.name, "") for p in perspectives}, perspectives,
                                   label if label is not None else "")
    return text if label is not None else text.rsplit("\n", 1)[0]


def candidates_from_generations(generations: pd.DataFrame, frame: pd.DataFrame, perspectives: Sequence[Perspective],
                                grade_names: Sequence[str], max_item_words: int | None = None) -> list[Candidate]:
    """The candidates of every labelled pair of the generations (module docstring), sorted by pair
    then sample."""
    names = [p.name for p in perspectives]
    fields = text_fields(frame)
    texts = {(str(r["query_id"]), str(r["item_id"])): r for r in frame.to_dict("records")}
    gen = generations[generations["perspective"].isin(names)]
    out = []
    for (qid, iid, s), group in gen.groupby(["query_id", "item_id", "sample"], sort=True):
        key = (str(qid), str(iid))
        if key not in texts:
            raise DataError(f"the generations hold the pair (query_id={qid!r}, item_id={iid!r}), which is not in "
                            f"the dataset: re-run teacher_generate", column="query_id")
        row = texts[key]
        if int(row["label"]) == UNLABELLED:
            continue
        by = {r["perspective"]: r for r in group.to_dict("records")}
        rationales = {n: one_line(str(by[n]["rationale"] or "")) for n in names if n in by}
        labels = {n: (by[n]["label"] if n in by and by[n]["label"] in grade_names else None) for n in names}
        label = _median_grade(list(labels.values()), grade_names)
        out.append(Candidate(key[0], key[1], int(s), multi_completion(rationales, perspectives, label), label, labels,
                             str(grade_names[int(row["label"])]), str(row["query"]),
                             clip_words(item_text(row, fields), max_item_words)))
    return out


def combine(scores: Mapping[str, Sequence[float]], weights: Mapping[str, float], groups: Sequence,
            normalise: str = "zscore", min_std: float = 0.05) -> np.ndarray:
    """[N] combined reward: per group (prompt) normalised dimensions, weighted sum (module docstring)."""
    if normalise not in NORMALISATIONS:
        raise ValueError(f"normalise must be one of {NORMALISATIONS}, got {normalise!r}")
    missing = [d for d in weights if d not in scores]
    if missing:
        raise ValueError(f"weights for dimension(s) {missing} that were not scored")
    codes = pd.factorize(pd.Series([str(g) for g in groups]))[0]
    total = np.zeros(len(codes), np.float64)
    for dim, w in weights.items():
        s = np.asarray(scores[dim], np.float64)
        if normalise != "none":
            frame = pd.DataFrame({"g": codes, "s": s})
            mean = frame.groupby("g")["s"].transform("mean").to_numpy()
            s = s - mean
            if normalise == "zscore":
                std = frame.groupby("g")["s"].transform(lambda x: x.std(ddof=0)).to_numpy()
                s = s / np.maximum(std, float(min_std))
        total += float(w) * s
    return total


def best_worst_pairs(candidates: Sequence[Candidate], combined: Sequence[float], prompts: Mapping[tuple, str],
                     min_margin: float = 0.0, scores: Mapping[str, Sequence[float]] | None = None
                     ) -> tuple[list[RewardPair], dict[str, int]]:
    """(pairs, {"prompts", "ties", "below_margin"}): best vs worst per prompt (module docstring)."""
    combined = np.asarray(combined, np.float64)
    by_prompt: dict[tuple, list[int]] = {}
    for i, c in enumerate(candidates):
        by_prompt.setdefault((c.query_id, c.item_id), []).append(i)
    pairs, ties, low = [], 0, 0
    for key, idx in sorted(by_prompt.items()):
        idx = sorted(idx, key=lambda i: candidates[i].sample)
        best = max(idx, key=lambda i: (combined[i], -candidates[i].sample))
        worst = min(idx, key=lambda i: (combined[i], candidates[i].sample))
        margin = float(combined[best] - combined[worst])
        if margin <= 1e-12 or candidates[best].completion == candidates[worst].completion:
            ties += 1
            continue
        if margin <= float(min_margin):
            low += 1
            continue

        def of(i):
            return {**({d: float(v[i]) for d, v in scores.items()} if scores else {}), "combined": float(combined[i])}

        pairs.append(RewardPair(key[0], key[1], prompts[key], candidates[best].completion,
                                candidates[worst].completion, candidates[best].sample, candidates[worst].sample,
                                round(margin, 6), of(best), of(worst)))
    pairs.sort(key=lambda p: (-p.margin, p.query_id, p.item_id))
    return pairs, {"prompts": len(by_prompt), "ties": ties, "below_margin": low}


def prompts_of(candidates: Sequence[Candidate], tokenizer, perspectives: Sequence[Perspective],
               grade_names: Sequence[str]) -> dict[tuple, str]:
    """(query_id, item_id) -> the rendered multi-perspective prompt (as SFT and DPO render it)."""
    out = {}
    for c in candidates:
        key = (c.query_id, c.item_id)
        if key not in out:
            out[key] = render_multi_prompt(tokenizer, perspectives, c.query, c.item_text, grade_names)
    return out


PAIRS_FILE = "pairs.jsonl"


def write_reward_pairs(folder: str | os.PathLike, pairs: Sequence[RewardPair]) -> Path:
    """``<folder>/pairs.jsonl``, one :class:`RewardPair` per line (the teacher_reward stage's output), atomically."""
    return write_text_atomic(Path(folder) / PAIRS_FILE,
                             "".join(json.dumps(asdict(p), ensure_ascii=False) + "\n" for p in pairs))


def read_reward_pairs(folder: str | os.PathLike) -> list[dict]:
    """The pairs of a finished teacher_reward stage (``pairs.jsonl``), largest margin first."""
    path = Path(folder) / PAIRS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: re-run `python train.py stage=teacher_reward`")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


__all__ = ["Candidate", "RewardPair", "candidates_from_generations", "combine", "best_worst_pairs", "prompts_of",
           "multi_completion", "NORMALISATIONS", "PAIRS_FILE", "write_reward_pairs", "read_reward_pairs"]
