"""The teacher_generate stage: MPCoT generation (``lrkd.teacher.train.generate``) on the labelled pairs of
``stage.splits`` into ``<stage.work_dir>/generations/``, reused when up to date.

The fingerprint covers the stage settings that change samples (not work_dir, nor the HTTP client's
concurrency, timeouts, retries or key variable), the teacher config (not its cache_dir), the
perspectives, the seed, the dataset's name, labels and split, and the dataset's content.
"""
from __future__ import annotations

import logging

from omegaconf import DictConfig

from lrkd.stages import base
from lrkd.stages.base import StageRun, select_rows
from lrkd.stages.teacher_common import inference_device, init_teacher, load_pairs
from lrkd.teacher.label.annotate import GradeScorer
from lrkd.teacher.runtime import OpenAIHTTPBackend, backend_from_config
from lrkd.teacher.train.generate import format_stats_table, generate_mpcot
from lrkd.teacher.model import inference_model, load_teacher, load_teacher_tokenizer
from lrkd.teacher.train.module import load_trained_teacher
from lrkd.teacher.prompts import perspectives_from_config
from lrkd.utils import plain

log = logging.getLogger(__name__)

STAGE = "teacher_generate"
OUTPUT = "generations"
# stage.http keys that change how requests are made, not what comes back
HTTP_OPERATIONAL_KEYS = ("api_key_env", "concurrency", "timeout_s", "max_retries", "backoff_s", "rate_limit_per_s",
                         "max_backoff_s")


def fingerprint_config(cfg: DictConfig) -> dict:
    """The part of the config that decides the generations (:func:`lrkd.stages.base.fingerprint_config`
    without trainer settings; of ``stage.http`` only what changes the samples)."""
    stage = {k: v for k, v in plain(cfg.stage).items() if k not in base.OPERATIONAL_KEYS}
    if stage.get("init_from", "base") == "base":
        stage.pop("init_from", None)
    if stage.get("backend") == "http":
        stage["http"] = {k: v for k, v in (stage.get("http") or {}).items() if k not in HTTP_OPERATIONAL_KEYS}
    else:
        stage.pop("http", None)
        stage.setdefault("two_step_labels", True)
    return base.fingerprint_config(cfg, stage=stage, trainer=False)


def flat_metrics(stats: dict) -> dict:
    """``{"<perspective>/<stat>": value, "overall/<stat>": value}`` for the scalar statistics."""
    out = {}
    groups = {**stats["per_perspective"], "overall": stats["overall"]}
    for name, values in groups.items():
        for key, value in values.items():
            if not isinstance(value, dict):
                out[f"{name}/{key}"] = value
    return out


def _backend(cfg: DictConfig, grade_names, init_dir=None):
    """(backend, tokenizer that renders the prompts or None, label scorer or None). The local
    backend scores missing labels with the same model (two-step extraction, ``stage.two_step_labels``);
    an HTTP backend returns text only, so its samples keep the labels they state."""
    if cfg.stage.backend == "local":
        model, tokenizer = (load_teacher(cfg.teacher) if init_dir is None
                            else load_trained_teacher(cfg.teacher, init_dir))
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
    perspectives = perspectives_from_config(cfg.perspective)
    dm = load_pairs(cfg)  # the labelled pairs, without any annotation artefact
    init_dir, init_fingerprint = init_teacher(cfg)  # the base teacher, or (init_from=dapt) the DAPT model
    if init_dir is not None and cfg.stage.backend != "local":
        raise ValueError("stage.init_from=dapt needs stage.backend=local (an HTTP server serves its own model)")
    run = StageRun(cfg, STAGE, OUTPUT, fingerprint_config(cfg),
                   [dm.fingerprint] + ([init_fingerprint] if init_dir is not None else []))
    if (done := run.reused()) is not None:
        return done
    run.start()
    out = run.out
    rows = select_rows(dm.frame, dm.splits, list(cfg.stage.splits), cfg.stage.max_pairs, int(cfg.seed),
                       labelled_only=True)
    backend, prompt_tokenizer, scorer = _backend(cfg, list(dm.label_set.names), init_dir)
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
    run.record(metrics)
    table = format_stats_table(stats)
    log.info("MPCoT generation statistics (%s):\n%s", out, table)
    print(f"MPCoT generation ({len(rows)} pairs, n={cfg.stage.n}, {this_run['seconds_per_sample']} s/sample; "
          f"{this_run['shards_reused']} shard(s) reused) -> {out}\n{table}", flush=True)
    return {**metrics, "reused": False}


run = run_teacher_generate
