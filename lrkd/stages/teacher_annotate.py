"""The teacher_annotate stage: the trained teacher labels the transfer pool and writes the artefact.

The teacher is ``stage.source``: ``dpo`` (``<work_dir>/dpo/model``), ``sft``, or ``base`` (the
configured teacher untouched). The pool: the pairs of ``stage.splits`` (``all`` = every pair,
labelled or not), at most ``stage.max_pairs`` (a seeded subset). The artefact
(:mod:`lrkd.artefact`) is ``<work_dir>/annotations/`` itself, written shard by shard by
:func:`lrkd.teacher.label.annotate.annotate_pool`: a killed run, started again with the same config,
resumes after the last finished shard. An unfinished artefact of another fingerprint is removed.
The student reads it with ``data.annotations=<work_dir>/annotations``.

Several ranks (``trainer=ddp_cpu``, ``trainer=ddp``, or under torchrun/SLURM; docs/SCALE_OUT.md):
rank r annotates every W-th pair of the pool into its own part, and rank 0 merges the parts into the
artefact (:mod:`lrkd.artefact.ranks`); the artefact holds the same rows as one process's.
"""
from __future__ import annotations

import logging
import shutil

from omegaconf import DictConfig

from lrkd.artefact import MANIFEST_NAME, read_manifest
from lrkd.artefact.ranks import artefact_writer
from lrkd.lightning.distributed import Ranks, run_on_ranks
from lrkd.stages.base import StageRun, fingerprint_config, require_finished, select_rows
from lrkd.stages.teacher_common import MODEL_FOLDER, decoding_options, evaluate_on_test, inference_device, load_pairs
from lrkd.teacher.label.annotate import SentenceEmbedder, annotate_pool
from lrkd.teacher.model import inference_model
from lrkd.teacher.train.module import load_trained_teacher
from lrkd.teacher.prompts import perspectives_from_config
from lrkd.utils import plain

log = logging.getLogger(__name__)

STAGE = "teacher_annotate"
SOURCES = {"dpo": "teacher_dpo", "sft": "teacher_sft", "base": None}


def _teacher(cfg: DictConfig):
    """(model_dir or None, the source stage's fingerprint or "base")."""
    source = str(cfg.stage.source)
    if source not in SOURCES:
        raise ValueError(f"stage.source must be one of {sorted(SOURCES)}, got {source!r}")
    if SOURCES[source] is None:
        return None, "base"
    folder, record = require_finished(cfg, SOURCES[source])
    return folder / MODEL_FOLDER, record["fingerprint"]


def _clear_other_artefact(out, fingerprint: str) -> None:
    """Remove an artefact in ``out`` that was started under another fingerprint (not resumable)."""
    if (out / MANIFEST_NAME).is_file():
        if read_manifest(out).extra.get("stage_fingerprint") == fingerprint:
            return
        log.warning("teacher_annotate: %s holds an artefact of other inputs or settings: starting over", out)
    if out.exists():
        shutil.rmtree(out)


def run_teacher_annotate(cfg: DictConfig) -> dict:
    """Annotate (or reuse, or resume); returns the stage metrics and ``reused``."""
    model_dir, source_fingerprint = _teacher(cfg)
    dm = load_pairs(cfg)
    run = StageRun(cfg, STAGE, STAGE, fingerprint_config(cfg), [source_fingerprint, dm.fingerprint])
    out, fingerprint = run.out, run.fingerprint
    if (done := run.reused(artefact=str(out))) is not None:
        return done

    ranks = Ranks.current()  # one process, or the ranks that run_on_ranks started
    run.start()
    if ranks.is_zero:
        _clear_other_artefact(out, fingerprint)
    perspectives = perspectives_from_config(cfg.perspective)
    grade_names = list(dm.label_set.names)
    model, tokenizer = load_trained_teacher(cfg.teacher, model_dir)
    model = inference_model(model.to(inference_device(cfg)), cfg.teacher)
    latent = str(cfg.stage.latent)
    embedder = None
    if latent == "sentence_encoder":
        embedder = SentenceEmbedder(str(cfg.stage.encoder), max_length=int(cfg.stage.get("encoder_max_length", 256)))
        embedder.model.to(inference_device(cfg))
        vector_dim = embedder.dim
    else:
        text_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        vector_dim = int(text_config.hidden_size)
    decoding = decoding_options(cfg)
    rows = select_rows(dm.frame, dm.splits, plain(cfg.stage.splits), cfg.stage.get("max_pairs"), int(cfg.seed))
    teacher_id = f"{cfg.teacher.name}:{cfg.stage.source}" + (f" ({model_dir})" if model_dir else "")
    writer = artefact_writer(out, ranks, teacher_id=teacher_id, perspectives=[p.name for p in perspectives],
                            label_names=grade_names, vector_dim=vector_dim, dataset_fingerprint=dm.fingerprint,
                            extra={"stage_fingerprint": fingerprint, "source": str(cfg.stage.source),
                                   "latent": latent, "encoder": embedder.name if embedder else None,
                                   "soft_labels": "calibrated" if decoding["calibrate"] else "raw",
                                   "no_repeat_ngram_size": decoding["no_repeat_ngram_size"],
                                   "pool_size": int(len(rows)), "teacher": plain(cfg.teacher)})
    stats = annotate_pool(model, tokenizer, dm.frame, ranks.shard(rows), perspectives, grade_names, writer,
                          batch_size=int(cfg.stage.batch_size), max_new_tokens=int(cfg.stage.max_new_tokens),
                          latent=latent, embedder=embedder, shard_size=int(cfg.stage.shard_size),
                          max_item_words=cfg.teacher.get("max_item_words"), **decoding)
    manifest = writer.finalize()
    stats = ranks.sum(stats)
    metrics = {"pairs": int(manifest.num_rows), "shards": len(manifest.shards), "written_now": stats.written,
               "resumed_pairs": stats.resumed, "vector_dim": vector_dim,
               **{f"parse_errors/{k}": v for k, v in sorted(stats.parse_errors.items())},
               "parse_rate": 1.0 - sum(stats.parse_errors.values()) / max(stats.written, 1),
               **(evaluate_on_test(cfg, model, tokenizer, dm, perspectives, f"annotate_{cfg.stage.source}")
                  if ranks.is_zero else {})}
    if ranks.is_zero:
        run.record(metrics)
        log.info("teacher_annotate: %d pairs annotated into %s: %s", manifest.num_rows, out, metrics)
    return run.finish(ranks.from_zero(metrics), record=False, artefact=str(out))


def run(cfg: DictConfig) -> dict:
    """The stage on every rank that ``cfg.trainer`` asks for (:func:`lrkd.lightning.distributed.run_on_ranks`)."""
    return run_on_ranks(cfg, run_teacher_annotate)
