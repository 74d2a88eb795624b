"""The teacher_score stage: a llama.cpp teacher reads the pool, val and test pairs, then calibrates
on val, scores itself on test and writes the student's artefact.

1. **Read** (expensive, resumable): every pair of ``stage.splits`` not yet read, with
   :func:`lrkd.teacher.label.score_pool.score_pairs` (``stage.workers`` processes), into
   ``<work_dir>/reads/``. Readings depend only on the teacher, the prompt settings and the pair, so
   adding pairs (a bigger pool) reads only the new ones. Optionally (same way, same resume): the
   multi-perspective rationales of a seeded subset (``stage.rationales.max_pairs``) and each
   perspective's own verdict on them (``stage.perspective_verdicts``).
2. **Finalize** (seconds, every run): fit the calibration on the val readings, measure the teacher
   on the test readings before and after it (macro-F1, QWK, AUC, nDCG@10, ECE), and write
   ``<work_dir>/score_annotations/`` (the artefact of the ``stage.pool_splits`` pairs: calibrated
   soft labels and latent targets, ``stage.latent``: the decision state as every perspective's, or
   each perspective's states over its rationale) with ``stage.json``.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from lrkd.artefact import ArtefactWriter
from lrkd.data.encode import item_text
from lrkd.evaluation.perspectives import perspective_diagnostics
from lrkd.report.perspectives import write_perspective_report
from lrkd.schema import text_fields
from lrkd.stages.base import StageRun, select_rows, stage_folder
from lrkd.stages.teacher_common import load_pairs
from lrkd.teacher.label.calibration import OrdinalCalibration, judgement_score, raw_grade_probs
from lrkd.teacher.label.head import reading_metrics
from lrkd.teacher.label.latents import LATENT_KINDS, project_latents, rationale_states
from lrkd.teacher.label.panel import (ANSWER_PREFIX, PanelReader, choose_bank, choose_examples, panel_prompt,
                                      questions_from_config, score_names)
from lrkd.teacher.label.readers import JudgementReader, PerspectiveVerdictReader, RationaleReader, prompts_for_rows
from lrkd.teacher.label.score_pool import completed_keys, iter_reads, score_pairs
from lrkd.teacher.label.workers import EXECUTION_KEY, progress_totals
from lrkd.teacher.model import llama_cpp_source
from lrkd.teacher.prompts import JUDGE_ANSWERS, JUDGE_INSTRUCTION, JUDGE_PREFIX, perspectives_from_config
from lrkd.teacher.runtime.engines import resolve_engine
from lrkd.teacher.runtime.llama_cpp import gguf_embedding_dim
from lrkd.teacher.tokens import answer_token_ids
from lrkd.utils import atomic_path, plain, write_json_atomic

log = logging.getLogger(__name__)

STAGE = "teacher_score"
READS_FOLDER = "reads"
ARTEFACT_FOLDER = "score_annotations"
VERDICTS_FOLDER = "perspective_verdicts"
DIAGNOSTICS_FOLDER = "perspective_diagnostics"


def reads_folder(cfg: DictConfig):
    """``stage.reads_dir``, or ``<work_dir>/reads``."""
    if cfg.stage.get("reads_dir"):
        return Path(str(cfg.stage.reads_dir)).expanduser()
    return stage_folder(cfg, READS_FOLDER)


def reading_settings(cfg: DictConfig, gguf: str) -> dict:
    """What a reading depends on (a part written under other settings is not resumed)."""
    return {"gguf": os.path.basename(gguf), "gguf_bytes": os.path.getsize(gguf), "teacher": str(cfg.teacher.name),
            "max_item_words": cfg.stage.get("max_item_words"), "instruction": JUDGE_INSTRUCTION,
            "prefix": JUDGE_PREFIX, "answers": list(JUDGE_ANSWERS), "n_batch": int(cfg.teacher.llama_cpp.n_batch),
            EXECUTION_KEY: {"engine": resolve_engine(str(cfg.teacher.llama_cpp.get("engine", "cyllama")), gguf),
                            "n_seq": int(cfg.teacher.llama_cpp.get("n_seq", 1))}}


def read_splits(cfg: DictConfig, dm, tokenizer, gguf: str) -> dict:
    """Step 1: read every pair of ``stage.splits`` (in that order) not read yet."""
    rows = np.concatenate([select_rows(dm.frame, dm.splits, [s], cfg.stage.get("max_pairs"), int(cfg.seed))
                           for s in plain(cfg.stage.splits)])
    prompts = prompts_for_rows(tokenizer, dm.frame, rows, cfg.stage.get("max_item_words"))
    prefix_ids, answer_ids = answer_token_ids(tokenizer, JUDGE_PREFIX, JUDGE_ANSWERS)
    settings = reading_settings(cfg, gguf)
    manifest = {"teacher_id": f"{cfg.teacher.name} (llama.cpp, {settings['gguf']})", "perspectives": ["decision"],
                "label_names": list(JUDGE_ANSWERS), "vector_dim": 0, "dataset_fingerprint": "readings",
                "extra": settings}
    manifest["vector_dim"] = gguf_embedding_dim(gguf)
    return score_pairs(prompts, gguf=gguf, runtime=plain(cfg.teacher.llama_cpp), reads_dir=reads_folder(cfg),
                       manifest=manifest, reader=JudgementReader(prefix_ids, answer_ids),
                       workers=int(cfg.stage.workers), shard_size=int(cfg.stage.shard_size))


def rationale_rows(cfg: DictConfig, dm) -> np.ndarray:
    """The seeded subset of the pool (``stage.pool_splits``) that gets rationales: the labelled pairs
    first, at most ``stage.rationales.max_pairs``."""
    spec = cfg.stage.get("rationales") or {}
    n = int(spec.get("max_pairs") or 0)
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    rows = np.concatenate([np.asarray(dm.splits[s], dtype=np.int64) for s in plain(cfg.stage.pool_splits)])
    rng = np.random.default_rng(int(cfg.seed))
    labelled = dm.frame["label"].to_numpy()[rows] >= 0
    order = np.concatenate([rng.permutation(rows[labelled]), rng.permutation(rows[~labelled])])
    return order[:n]


def rationale_settings(cfg: DictConfig, gguf: str) -> dict:
    """What a rationale depends on (the judgement reading's settings, the prompt and the decoding)."""
    spec = cfg.stage.rationales
    return {**reading_settings(cfg, gguf), "prompt": "multi_perspective",
            "max_item_words": cfg.teacher.get("max_item_words"), "max_new_tokens": int(spec.max_new_tokens),
            "no_repeat_ngram_size": int(spec.no_repeat_ngram_size),
            "perspectives": plain(cfg.perspective)}


def write_rationales(cfg: DictConfig, dm, tokenizer, gguf: str) -> dict:
    """Step 1b: multi-perspective rationales (:class:`lrkd.teacher.label.score_pool.RationaleReader`) for
    :func:`rationale_rows`, into ``<reads>/rationales/`` (resumable like the readings)."""
    rows = rationale_rows(cfg, dm)
    if not len(rows):
        return {"written": 0, "seconds": 0.0}
    spec = cfg.stage.rationales
    perspectives = perspectives_from_config(cfg.perspective)
    grades = list(dm.label_set.names)
    prompts = prompts_for_rows(tokenizer, dm.frame, rows, cfg.teacher.get("max_item_words"),
                               perspectives=perspectives, grade_names=grades)
    settings = rationale_settings(cfg, gguf)
    manifest = {"teacher_id": f"{cfg.teacher.name} (llama.cpp, MPCoT)", "perspectives": [p.name for p in perspectives],
                "label_names": grades, "vector_dim": gguf_embedding_dim(gguf), "dataset_fingerprint": "readings",
                "extra": settings}
    reader = RationaleReader(tokenizer.name_or_path, perspectives, grades, int(spec.max_new_tokens),
                             int(spec.no_repeat_ngram_size))
    folder = reads_folder(cfg) / "rationales"
    result = score_pairs(prompts, gguf=gguf, runtime=plain(cfg.teacher.llama_cpp), reads_dir=folder,
                         manifest=manifest, reader=reader, workers=int(cfg.stage.workers),
                         shard_size=int(spec.get("shard_size", 8)))
    pool = np.concatenate([np.asarray(dm.splits[s], dtype=np.int64) for s in plain(cfg.stage.pool_splits)])
    record_coverage(folder, dm, pool, len(rows))
    return result


def record_coverage(folder: Path, dm, pool: np.ndarray, requested: int) -> dict:
    """``<folder>/provenance.json``: how many of the pool's pairs the folder covers, and the workers'
    wall time over the shards they timed (:func:`progress_totals`)."""
    frame = dm.frame.iloc[pool]
    keys = set(zip(frame["query_id"].astype(str), frame["item_id"].astype(str)))
    covered = len(keys & completed_keys(folder))
    record = {"pool_pairs": len(keys), "requested": int(requested), "covered": covered,
              "coverage": round(covered / len(keys), 4) if keys else None, **progress_totals(folder)}
    write_json_atomic(folder / "provenance.json", record)
    log.info("teacher_score: %s covers %d of %d pool pairs", folder.name, covered, len(keys))
    return record


def read_perspective_verdicts(cfg: DictConfig, dm, tokenizer, gguf: str) -> dict:
    """Step 1d: each perspective's own verdict (:class:`PerspectiveVerdictReader`: the judgement prompt,
    the perspective's rationale, then the answer) for every pair with a rationale in
    ``<reads>/rationales/``, into ``<reads>/perspective_verdicts/`` (resumable like the readings): the
    parts' latents are the verdicts [K, 2], their soft labels the verdict after all K rationales."""
    written = iter_reads(reads_folder(cfg) / "rationales")
    if written is None:
        return {"written": 0, "seconds": 0.0}
    perspectives = perspectives_from_config(cfg.perspective)
    missing = [p.name for p in perspectives if p.name not in written.rationales]
    if missing:
        raise ValueError(f"the rationales in {reads_folder(cfg) / 'rationales'} hold no perspective {missing}; "
                         f"perspective verdicts read the perspectives the rationales were written with")
    index = written.index()
    keys = list(zip(dm.frame["query_id"].astype(str), dm.frame["item_id"].astype(str)))
    rows = np.asarray([r for r, key in enumerate(keys) if key in index], dtype=np.int64)
    given = {keys[r]: {p.name: written.rationales[p.name][index[keys[r]]] for p in perspectives} for r in rows}
    prompts = prompts_for_rows(tokenizer, dm.frame, rows, cfg.stage.get("max_item_words"))
    prefix_ids, answer_ids = answer_token_ids(tokenizer, JUDGE_PREFIX, JUDGE_ANSWERS)
    settings = {**reading_settings(cfg, gguf), "reading": "perspective_verdicts",
                "rationales": rationale_settings(cfg, gguf)}
    manifest = {"teacher_id": f"{cfg.teacher.name} (llama.cpp, judgement after each perspective's rationale)",
                "perspectives": [p.name for p in perspectives], "label_names": list(JUDGE_ANSWERS),
                "vector_dim": len(JUDGE_ANSWERS), "dataset_fingerprint": "readings", "extra": settings}
    reader = PerspectiveVerdictReader(tokenizer.name_or_path, perspectives, JUDGE_PREFIX, answer_ids, given)
    return score_pairs(prompts, gguf=gguf, runtime=plain(cfg.teacher.llama_cpp),
                       reads_dir=reads_folder(cfg) / VERDICTS_FOLDER, manifest=manifest, reader=reader,
                       workers=int(cfg.stage.workers), shard_size=int(cfg.stage.shard_size))


def write_perspective_diagnostics(cfg: DictConfig, dm) -> dict:
    """The per-perspective diagnostics (:func:`perspective_diagnostics`) of every gold-labelled pair
    with verdicts, beside the judgement read with no rationale (``no_rationale``), written into
    ``<work_dir>/perspective_diagnostics/`` (perspectives.{json,md,png}); returns the figures ({}
    without verdicts)."""
    verdicts = iter_reads(reads_folder(cfg) / VERDICTS_FOLDER)
    plain_reads = iter_reads(reads_folder(cfg))
    if verdicts is None:
        return {}
    frame = dm.frame
    at = {key: r for r, key in enumerate(zip(frame["query_id"].astype(str), frame["item_id"].astype(str)))}
    plain_at = plain_reads.index() if plain_reads is not None else {}
    keep = np.asarray([k in at and k in plain_at for k in verdicts.keys])  # pairs of this data, read plainly too
    keys = [k for k, kept in zip(verdicts.keys, keep) if kept]
    names = list(verdicts.rationales)
    has = np.stack([np.asarray([t.strip() != "" for t in verdicts.rationales[n]]) for n in names], axis=1)[keep]
    no_rationale = plain_reads.soft_labels[[plain_at[k] for k in keys]][:, None, :] if keys else np.zeros((0, 1, 2))
    diagnostics = perspective_diagnostics(np.concatenate([verdicts.latents[keep], no_rationale], axis=1),
                                          verdicts.soft_labels[keep], frame["label"].to_numpy()[[at[k] for k in keys]],
                                          [*names, "no_rationale"], dm.label_set.num_classes,
                                          int(dm.label_set.relevant_up_to),
                                          np.concatenate([has, np.ones((len(keys), 1), bool)], axis=1))
    out = stage_folder(cfg, DIAGNOSTICS_FOLDER)
    write_perspective_report(diagnostics, list(dm.label_set.names), out, answers=list(JUDGE_ANSWERS),
                             title=f"Per-perspective diagnostics: {cfg.teacher.name} on {cfg.data.name}")
    log.info("teacher_score: perspective diagnostics of %d pairs in %s", diagnostics["pairs"], out)
    return diagnostics


def panel_bank(cfg: DictConfig, dm) -> list[str]:
    """The few-shot bank: ``data.split.train_only`` when set, else chosen from the train split."""
    given = cfg.data.get("split", {}).get("train_only")
    if given:
        return [str(q) for q in given]
    spec = cfg.stage.panel
    return choose_bank(dm.frame, dm.splits["train"], int(dm.label_set.relevant_up_to), int(spec.get("bank_size", 8)),
                       int(cfg.seed))


def read_panel(cfg: DictConfig, dm, tokenizer, gguf: str) -> dict:
    """Step 1c: the judgement panel (:mod:`lrkd.teacher.label.panel`) of every pair of ``stage.splits``
    (and the pool), into ``<reads>/<stage.panel.name>/`` (resumable like the readings)."""
    spec = cfg.stage.panel
    questions = questions_from_config(plain(spec.get("questions")))
    k = int(spec.get("k", 0))
    words = spec.get("max_item_words", cfg.stage.get("max_item_words"))
    bank = panel_bank(cfg, dm) if k else []
    examples = choose_examples(dm.frame, dm.splits["train"], bank, k, int(dm.label_set.relevant_up_to), int(cfg.seed))
    first_half = set(bank[:len(bank) // 2])
    rows = np.concatenate([select_rows(dm.frame, dm.splits, [s], cfg.stage.get("max_pairs"), int(cfg.seed))
                           for s in plain(cfg.stage.splits)])
    fields = text_fields(dm.frame)
    records = dm.frame.iloc[rows].to_dict("records")
    prompts = [panel_prompt(tokenizer, r["query_id"], r["item_id"], r["query"], item_text(r, fields), questions,
                            examples[1] if str(r["query_id"]) in first_half else examples[0], words)
               for r in records]
    answer_ids = [answer_token_ids(tokenizer, ANSWER_PREFIX, q.answers)[1] for q in questions]
    settings = {**reading_settings(cfg, gguf), "prompt": "panel", "max_item_words": words, "k": k, "bank": bank,
                "examples": [[(e.query_id, e.item[:40], e.relevant) for e in s] for s in examples],
                "questions": [(q.name, q.text, list(q.answers)) for q in questions]}
    manifest = {"teacher_id": f"{cfg.teacher.name} (llama.cpp, judgement panel k={k})",
                "perspectives": ["decision"], "label_names": list(questions[0].answers),
                "vector_dim": gguf_embedding_dim(gguf), "dataset_fingerprint": "readings", "extra": settings}
    result = score_pairs(prompts, gguf=gguf, runtime=plain(cfg.teacher.llama_cpp),
                         reads_dir=reads_folder(cfg) / str(spec.name), manifest=manifest,
                         reader=PanelReader(questions, answer_ids), workers=int(cfg.stage.workers),
                         shard_size=int(cfg.stage.shard_size))
    result["scores"] = score_names(questions)
    return result


def run(cfg: DictConfig) -> dict:
    started = time.time()
    if str(cfg.teacher.get("runtime", "transformers")) != "llama_cpp":
        raise ValueError(f"stage=teacher_score runs a llama.cpp teacher (teacher.runtime=llama_cpp, e.g. "
                         f"teacher=qwen2.5-coder-1.5b); teacher {cfg.teacher.name!r} has runtime "
                         f"{cfg.teacher.get('runtime', 'transformers')!r}")
    dm = load_pairs(cfg)
    if not cfg.stage.get("read", True):  # finalize what is read so far (e.g. a partial pool)
        if cfg.stage.get("perspective_verdicts", False):
            write_perspective_diagnostics(cfg, dm)
        return finalize(cfg, dm, started, {"written": 0, "seconds": 0.0})
    gguf, tokenizer = llama_cpp_source(cfg.teacher)
    if cfg.stage.get("panel"):
        panel = read_panel(cfg, dm, tokenizer, gguf)
        log.info("teacher_score: panel %s read %d pairs in %.0f s", cfg.stage.panel.name, panel["written"],
                 panel["seconds"])
        if cfg.stage.get("read_only", False):
            return {"read": panel["written"], "reused": False}
    reading = read_splits(cfg, dm, tokenizer, gguf)
    log.info("teacher_score: read %d pairs in %.0f s", reading["written"], reading["seconds"])
    rationales = write_rationales(cfg, dm, tokenizer, gguf)
    if rationales["written"]:
        log.info("teacher_score: wrote rationales for %d pairs in %.0f s", rationales["written"],
                 rationales["seconds"])
        reading["rationale_seconds_per_pair"] = rationales["seconds"] * int(cfg.stage.workers) / rationales["written"]
    verdicts = {"written": 0}
    if cfg.stage.get("perspective_verdicts", False):
        verdicts = read_perspective_verdicts(cfg, dm, tokenizer, gguf)
        log.info("teacher_score: read the perspective verdicts of %d pairs in %.0f s", verdicts["written"],
                 verdicts["seconds"])
        write_perspective_diagnostics(cfg, dm)
    if cfg.stage.get("read_only", False):
        return {"read": reading["written"], "rationales": rationales["written"], "verdicts": verdicts["written"],
                "reused": False}
    return finalize(cfg, dm, started, reading)


def finalize(cfg: DictConfig, dm, started: float, reading: dict) -> dict:
    """Step 2 (see the module docstring); returns the stage metrics."""
    reads = iter_reads(reads_folder(cfg))
    written = iter_reads(reads_folder(cfg) / "rationales")
    texts = {}
    if written is not None:
        for key, i in written.index().items():
            texts[key] = {p: written.rationales[p][i] for p in written.rationales}
    if reads is None:
        raise RuntimeError("teacher_score: no readings to finalize")
    index = reads.index()
    frame, label_set = dm.frame, dm.label_set
    keys = list(zip(frame["query_id"].astype(str), frame["item_id"].astype(str)))
    at = np.array([index.get(k, -1) for k in keys])
    labels = frame["label"].to_numpy()

    def read_rows(split: str, labelled: bool) -> np.ndarray:
        rows = np.asarray(dm.splits[split], dtype=np.int64)
        rows = rows[at[rows] >= 0]
        return rows[labels[rows] >= 0] if labelled else rows

    val, test = read_rows("val", True), read_rows("test", True)
    if not len(val):
        raise RuntimeError("teacher_score: the calibration needs val readings; put val in stage.splits")
    c = label_set.num_classes
    method = str(cfg.stage.calibration.method)
    bins = int(cfg.stage.calibration.get("ece_bins", 10))
    scores = judgement_score(reads.soft_labels)
    calibration = None
    if method == "ordinal":
        calibration = OrdinalCalibration(c).fit(scores[at[val]], labels[val])
    elif method != "none":
        raise ValueError(f"stage.calibration.method must be ordinal or none, got {method!r}")

    def soft(rows):
        if calibration is None:
            return raw_grade_probs(reads.soft_labels[at[rows]], c)
        return calibration.predict_proba(scores[at[rows]])

    metrics: dict = {"reads": len(reads.keys), "read_now": int(reading["written"]),
                     "calibration": calibration.to_dict() if calibration else {"method": "none"}}
    if reading["written"]:
        metrics["seconds_per_pair"] = reading["seconds"] * int(cfg.stage.workers) / reading["written"]
    if reading.get("rationale_seconds_per_pair"):
        metrics["rationale_seconds_per_pair"] = reading["rationale_seconds_per_pair"]
    for name, rows in (("val", val), ("test", test)):
        if not len(rows):
            continue
        metrics[f"{name}/raw"] = reading_metrics(raw_grade_probs(reads.soft_labels[at[rows]], c), frame, rows,
                                                 label_set, bins)
        metrics[f"{name}/calibrated"] = reading_metrics(soft(rows), frame, rows, label_set, bins)
    pool = np.concatenate([read_rows(s, False) for s in plain(cfg.stage.pool_splits)])
    perspectives = perspectives_from_config(cfg.perspective)
    latent_kind = str(cfg.stage.get("latent", "decision"))
    if latent_kind == "rationale":  # per perspective its rationale's states; the pairs with rationales only
        if written is None:
            raise RuntimeError("stage.latent=rationale needs rationales (stage.rationales.max_pairs > 0)")
        has, states = rationale_states(written, [keys[r] for r in pool], [p.name for p in perspectives])
        pool = pool[has]
        if not len(pool):
            raise RuntimeError("stage.latent=rationale: no pair of the pool has a rationale")
    elif latent_kind == "decision":
        states = reads.latents[at[pool], :1, :]
    else:
        raise ValueError(f"stage.latent must be one of {sorted(LATENT_KINDS)}, got {latent_kind!r}")
    latent_dim = cfg.stage.get("latent_dim")
    targets, pca = project_latents(states, len(perspectives), latent_dim)
    if pca:
        metrics["latent_pca"] = pca
    out = stage_folder(cfg, ARTEFACT_FOLDER)
    with atomic_path(out, directory=True) as tmp:  # the stage is recorded in tmp, renamed onto out when finished
        run = StageRun(cfg, STAGE, tmp, {"calibration": metrics["calibration"], "pool": len(pool), "latent": latent_kind,
                                         "latent_dim": latent_dim, "teacher": str(cfg.teacher.name)}, [dm.fingerprint])
        run.started, fingerprint = started, run.fingerprint
        writer = ArtefactWriter(tmp, teacher_id=f"{cfg.teacher.name} (llama.cpp, judgement reading, calibrated on val)",
                                perspectives=[p.name for p in perspectives], label_names=list(label_set.names),
                                vector_dim=int(targets.shape[-1]), dataset_fingerprint=dm.fingerprint,
                                extra={"stage_fingerprint": fingerprint, "latent": LATENT_KINDS[latent_kind],
                                       "soft_labels": f"calibrated:{method}", "calibration": metrics["calibration"],
                                       "teacher_test": metrics.get("test/calibrated"),
                                       "teacher_test_raw": metrics.get("test/raw"), "pool_size": int(len(pool)),
                                       "latent_pca": metrics.get("latent_pca"),
                                       "teacher": plain(cfg.teacher)})
        size = int(cfg.stage.get("artefact_shard_size", 1024))
        for shard, start in enumerate(range(0, len(pool), size)):
            rows = pool[start:start + size]
            latents = targets[start:start + size]
            writer.write_shard(shard, [keys[r][0] for r in rows], [keys[r][1] for r in rows],
                               {p.name: [texts.get(keys[r], {}).get(p.name, "") for r in rows] for p in perspectives},
                               soft(rows), latents)
        writer.finalize()
        metrics["artefact_pairs"] = int(len(pool))
        metrics["rationale_pairs"] = int(sum(keys[r] in texts for r in pool))
        run.record(metrics)
    log.info("teacher_score: artefact of %d pairs in %s; teacher on test: %s", len(pool), out,
             metrics.get("test/calibrated"))
    return {**metrics, "artefact": str(out), "reused": False}
