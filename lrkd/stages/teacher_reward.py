"""The teacher_reward stage: CRSD's multi-dimensional reward over the MPCoT generations, and DPO's
preference pairs from it (``teacher_dpo stage.pairs=reward``).

Reads ``<work_dir>/generations/``; builds one candidate completion per (pair, sample)
(:func:`lrkd.teacher.reward.pairs.candidates_from_generations`), scores it on the configured
dimensions (:mod:`lrkd.teacher.reward.dimensions`), combines them (per-prompt normalised, weighted sum) and
keeps best-of-n vs worst-of-n per prompt when the margin exceeds ``stage.min_margin``. With
``stage.learned.enabled``, a ridge head per dimension on frozen sentence embeddings (and a linear
Bradley-Terry reward) is fitted and its held-out pair accuracy recorded; ``stage.source=learned``
then builds the pairs from its out-of-fold predictions instead of the rules (a pool without gold
labels). Writes ``<work_dir>/reward/``: ``scores.parquet`` (one row per candidate, a column per
dimension, ``combined``), ``pairs.jsonl`` (prompt, chosen, rejected, their scores and the margin),
``stage.json``.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from lrkd.schema import DataError
from lrkd.stages.base import StageRun, fingerprint_config, require_finished
from lrkd.stages.teacher_common import inference_device, load_pairs
from lrkd.teacher.label.annotate import SentenceEmbedder
from lrkd.teacher.train.generate import read_generations
from lrkd.teacher.model import load_teacher_tokenizer
from lrkd.teacher.prompts import perspectives_from_config
from lrkd.teacher.reward.model import bradley_terry, cross_fitted, evaluate_ridge
from lrkd.teacher.reward.pairs import (best_worst_pairs, candidates_from_generations, combine, prompts_of,
                                      write_reward_pairs)
from lrkd.teacher.reward.dimensions import score_dimensions
from lrkd.utils import plain

log = logging.getLogger(__name__)

STAGE = "teacher_reward"
SCORES_FILE = "scores.parquet"
SOURCES = ("rules", "learned")


def _learned(cfg: DictConfig, candidates, scores: dict, groups, dims, weights, seed: int):
    """(metrics, out-of-fold predicted scores or None) of the learned reward model."""
    learned = plain(cfg.stage.learned)
    embedder = SentenceEmbedder(str(learned["encoder"]), max_length=int(learned.get("max_length", 256)))
    embedder.model.to(inference_device(cfg))
    x = embedder([f"{c.query} | {c.item_text} | {c.completion}" for c in candidates]).astype(np.float64)
    y = np.stack([np.asarray(scores[d], np.float64) for d in dims], axis=1)
    alpha, held = float(learned.get("alpha", 1.0)), float(learned.get("heldout_fraction", 0.25))
    _, report = evaluate_ridge(x, y, groups, dims, alpha=alpha, heldout_fraction=held, seed=seed)
    metrics = {f"learned/{k}": v for k, v in report.items()}
    if learned.get("bradley_terry", False):
        combined = combine(scores, weights, groups, str(cfg.stage.normalise), float(cfg.stage.min_std))
        metrics.update({f"learned/{k}": v for k, v in bradley_terry(x, combined, groups, heldout_fraction=held,
                                                                    seed=seed).items()})
    log.info("teacher_reward: learned reward model, held-out pair accuracy: %s", metrics)
    if str(cfg.stage.source) != "learned":
        return metrics, None
    pred = cross_fitted(x, y, groups, dims, alpha=alpha, folds=int(learned.get("folds", 5)), seed=seed)
    return metrics, {d: pred[:, k].tolist() for k, d in enumerate(dims)}


def run_teacher_reward(cfg: DictConfig) -> dict:
    """Score and pair (or reuse); returns the stage metrics and ``reused``."""
    gen_dir, gen_record = require_finished(cfg, "teacher_generate")
    dm = load_pairs(cfg)
    run = StageRun(cfg, STAGE, STAGE, fingerprint_config(cfg, trainer=False), [gen_record["fingerprint"],
                                                                               dm.fingerprint])
    if (done := run.reused()) is not None:
        return done
    run.start()
    seed = int(cfg.seed)
    weights = {str(k): float(v) for k, v in plain(cfg.stage.weights).items() if float(v) != 0.0}
    dims = list(weights)
    source = str(cfg.stage.source)
    if source not in SOURCES:
        raise ValueError(f"stage.source must be one of {SOURCES}, got {source!r}")
    if not dims:
        raise ValueError("stage.weights: no dimension has a non-zero weight")
    if source == "learned" and not cfg.stage.learned.enabled:
        raise ValueError("stage.source=learned needs stage.learned.enabled=true")
    perspectives = perspectives_from_config(cfg.perspective)
    grade_names = list(dm.label_set.names)
    candidates = candidates_from_generations(read_generations(gen_dir), dm.frame, perspectives, grade_names,
                                             cfg.teacher.get("max_item_words"))
    if not candidates:
        raise DataError("the generations hold no labelled pair to score", path=str(gen_dir))
    context = {"gold": [c.gold for c in candidates], "item_text": [c.item_text for c in candidates],
               "query": [c.query for c in candidates], "perspective_labels": [c.perspective_labels for c in candidates],
               "grade_names": grade_names, "perspectives": perspectives,
               "copy_free": float(cfg.stage.get("copy_free", 0.5))}
    scores = score_dimensions([c.completion for c in candidates], dims, **context)
    groups = [f"{c.query_id}\x1f{c.item_id}" for c in candidates]
    metrics: dict = {"candidates": len(candidates), **{f"mean/{d}": round(float(np.mean(v)), 4)
                                                       for d, v in scores.items()}}
    used = scores
    if cfg.stage.learned.enabled:
        learned_metrics, predicted = _learned(cfg, candidates, scores, groups, dims, weights, seed)
        metrics.update(learned_metrics)
        used = predicted if predicted is not None else scores
    combined = combine(used, weights, groups, str(cfg.stage.normalise), float(cfg.stage.min_std))
    prompts = prompts_of(candidates, load_teacher_tokenizer(cfg.teacher), perspectives, grade_names)
    pairs, counts = best_worst_pairs(candidates, combined, prompts, float(cfg.stage.min_margin), scores=used)
    table = pd.DataFrame({"query_id": [c.query_id for c in candidates], "item_id": [c.item_id for c in candidates],
                          "sample": [c.sample for c in candidates], "label": [c.label for c in candidates],
                          "gold": [c.gold for c in candidates], "completion": [c.completion for c in candidates],
                          **{d: scores[d] for d in dims}, "combined": combined})
    if used is not scores:
        for d in dims:
            table[f"learned_{d}"] = used[d]
    out = run.out
    out.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out / SCORES_FILE, index=False)
    write_reward_pairs(out, pairs)
    margins = [p.margin for p in pairs]
    metrics.update({"prompts": counts["prompts"], "pairs": len(pairs), "dropped_ties": counts["ties"],
                    "dropped_below_margin": counts["below_margin"],
                    "mean_margin": round(float(np.mean(margins)), 4) if margins else 0.0,
                    "chosen_correct": round(float(np.mean([p.chosen_scores.get("correctness", np.nan)
                                                           for p in pairs])), 4) if pairs and "correctness" in dims
                    else None})
    log.info("teacher_reward: %s", metrics)
    return run.finish(metrics)


run = run_teacher_reward
