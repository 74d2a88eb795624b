"""The teacher_generate stage: MPCoT generation (``lrkd.teacher.generate``) on the labelled pairs of
``stage.splits`` into ``<stage.work_dir>/generations/``, reused when up to date.

The fingerprint covers the stage settings that change samples (not work_dir, nor the HTTP client's
concurrency, timeouts, retries or key variable), the teacher config (not its cache_dir), the
perspectives, the seed, the dataset's name, labels and split, and the dataset's content.
"""
from __future__ import annotations

import logging
import time

import numpy as np
from omegaconf import DictConfig, OmegaConf

from lrkd.stages.teacher_common import load_pairs
from lrkd.stages.work_dir import (clear_stage_record, is_up_to_date, read_stage_record, stage_dir,
                                  stage_fingerprint, write_stage_record)

log = logging.getLogger(__name__)

STAGE = "teacher_generate"
OUTPUT = "generations"
# stage.http keys that change how requests are made, not what comes back
HTTP_OPERATIONAL_KEYS = ("api_key_env", "concurrency", "timeout_s", "max_retries", "backoff_s", "rate_limit_per_s",
                         "max_backoff_s")


def select_rows(frame, splits: dict, names, max_pairs: int | None, seed: int) -> np.ndarray:
    """Positions of the labelled pairs of the named splits, in row order; with ``max_pairs``, a seeded
    random subset (the subset for a larger cap contains the one for a smaller cap)."""
    names = list(names)
    unknown = [s for s in names if s not in splits]
    if unknown or not names:
        raise ValueError(f"stage.splits: unknown or no split(s) {unknown or names}; choose from {sorted(splits)}")
    rows = np.concatenate([np.asarray(splits[s], dtype=np.int64) for s in names])
    rows = rows[frame["label"].to_numpy()[rows] >= 0]
    if max_pairs is not None and len(rows) > int(max_pairs):
        rows = rows[np.random.default_rng(seed).permutation(len(rows))[:int(max_pairs)]]
    return np.sort(rows)


def fingerprint_config(cfg: DictConfig) -> dict:
    """The part of the config that decides the generations."""
    stage = OmegaConf.to_container(cfg.stage, resolve=True)
    stage.pop("work_dir", None)
    stage.pop("device", None)
    if stage.get("backend") == "http":
        stage["http"] = {k: v for k, v in (stage.get("http") or {}).items() if k not in HTTP_OPERATIONAL_KEYS}
    else:
        stage.pop("http", None)
        stage.setdefault("two_step_labels", True)
    teacher = OmegaConf.to_container(cfg.teacher, resolve=True)
    teacher.pop("cache_dir", None)
    data = {k: OmegaConf.to_container(cfg.data, resolve=True).get(k) for k in ("name", "labels", "split")}
    return {"stage": stage, "teacher": teacher, "perspective": OmegaConf.to_container(cfg.perspective, resolve=True),
            "seed": int(cfg.seed), "data": data}


def flat_metrics(stats: dict) -> dict:
    """``{"<perspective>/<stat>": value, "overall/<stat>": value}`` for the scalar statistics."""
    out = {}
    groups = {**stats["per_perspective"], "overall": stats["overall"]}
    for name, values in groups.items():
        for key, value in values.items():
            if not isinstance(value, dict):
                out[f"{name}/{key}"] = value
    return out


def _backend(cfg: DictConfig, grade_names):
    """(backend, tokenizer that renders the prompts or None, label scorer or None). The local
    backend scores missing labels with the same model (two-step extraction, ``stage.two_step_labels``);
    an HTTP backend returns text only, so its samples keep the labels they state."""
    from lrkd.stages.teacher_common import inference_device
    from lrkd.teacher.annotate import GradeScorer
    from lrkd.teacher.backends import OpenAIHTTPBackend, backend_from_config
    from lrkd.teacher.model import inference_model, load_teacher, load_teacher_tokenizer

    if cfg.stage.backend == "local":
        model, tokenizer = load_teacher(cfg.teacher)
        model = inference_model(model.to(inference_device(cfg)), cfg.teacher)
        scorer = (GradeScorer(model, tokenizer, grade_names, batch_size=int(cfg.stage.batch_size),
                              calibrate=bool(cfg.stage.get("calibrate_scored_labels", False)))
                  if cfg.stage.get("two_step_labels", True) else None)
        return backend_from_config(cfg.stage, model, tokenizer), tokenizer, scorer
    backend = backend_from_config(cfg.stage)
    if isinstance(backend, OpenAIHTTPBackend) and backend.use_chat:
        return backend, None, None  # the server applies its chat template to the plain message
    return backend, load_teacher_tokenizer(cfg.teacher), None


def run_teacher_generate(cfg: DictConfig) -> dict:
    """Generate (or reuse) the MPCoT samples; returns flat metrics (``<perspective>/<stat>``, ``reused``)."""
    from lrkd.teacher.generate import format_stats_table, generate_mpcot
    from lrkd.teacher.prompts import perspectives_from_config

    started = time.time()
    out = stage_dir(cfg, OUTPUT)
    perspectives = perspectives_from_config(cfg.perspective)
    dm = load_pairs(cfg)  # the labelled pairs, without any annotation artefact
    fingerprint = stage_fingerprint(fingerprint_config(cfg), [dm.fingerprint])
    if is_up_to_date(out, fingerprint):
        record = read_stage_record(out)
        log.info("teacher_generate: %s is up to date (fingerprint %s...): reusing it", out, fingerprint[:12])
        return {**record["metrics"], "reused": True}

    clear_stage_record(out)
    rows = select_rows(dm.frame, dm.splits, cfg.stage.splits, cfg.stage.max_pairs, int(cfg.seed))
    backend, prompt_tokenizer, scorer = _backend(cfg, list(dm.label_set.names))
    log.info("teacher_generate: %d pairs x %d perspectives x n=%d with %s into %s", len(rows), len(perspectives),
             cfg.stage.n, type(backend).__name__, out)
    try:
        stats = generate_mpcot(dm.frame, rows, perspectives, list(dm.label_set.names), backend, n=int(cfg.stage.n),
                               temperature=float(cfg.stage.temperature), max_new_tokens=int(cfg.stage.max_new_tokens),
                               seed=int(cfg.seed), out_dir=out, shard_size=int(cfg.stage.shard_size),
                               tokenizer_for_prompts=prompt_tokenizer, label_scorer=scorer,
                               max_item_words=cfg.teacher.get("max_item_words"))
    finally:
        if hasattr(backend, "close"):
            backend.close()
    this_run = stats.pop("this_run")
    metrics = {**flat_metrics(stats), "pairs": int(len(rows)),
               "seconds_per_sample": this_run["seconds_per_sample"]}
    write_stage_record(out, STAGE, fingerprint, time.time() - started, metrics)
    table = format_stats_table(stats)
    log.info("MPCoT generation statistics (%s):\n%s", out, table)
    print(f"MPCoT generation ({len(rows)} pairs, n={cfg.stage.n}, {this_run['seconds_per_sample']} s/sample; "
          f"{this_run['shards_reused']} shard(s) reused) -> {out}\n{table}", flush=True)
    return {**metrics, "reused": False}


run = run_teacher_generate
