"""The teacher_head stage: the frozen teacher's readings + a head fitted on one label budget's gold
pairs -> the student's artefact for that budget (seconds; no LLM runs).

The readings (``stage=teacher_score``: the judgement reading in ``<reads_dir>/worker-*``, and the
panels named in ``stage.panels``, each ``<reads_dir>/<name>``) are features of every pair read:
the log-odds of each yes/no answer and the expected grade of each graded question. The head
(:class:`lrkd.teacher.label.head.OrdinalHead`, an ordinal logistic model) is fitted on the gold
pairs of this data config's train split only: ``data.split`` (one split, or a cross-validation
fold) and ``data.gold`` (the budget: its gold queries; the grades it hides are never read). The
gold pairs themselves get out-of-fold soft labels (folds of whole queries), every other pair read
(train rows the budget hid, the transfer pool, generated queries, val and test) the head fitted on
all of them. The teacher is then scored on val and test like the student.

The artefact holds every pair read that this dataset has (a superset of a job's train rows: the
label-budget students match rows by (query_id, item_id)), with the decision states' PCA as latent
targets. Default folder: ``artefacts/<data>/label_budget/f<fold>_s<gold seed>_g<fraction>``, the one
``experiment=label_budget`` reads.
"""
from __future__ import annotations

import logging
import time

import numpy as np
from omegaconf import DictConfig

from lrkd.artefact import ArtefactWriter
from lrkd.stages.base import StageRun
from lrkd.stages.teacher_common import load_pairs
from lrkd.teacher.label.head import cross_fit, logit, pca_projection, reading_metrics
from lrkd.teacher.label.score_pool import iter_reads
from lrkd.teacher.prompts import perspectives_from_config
from lrkd.utils import atomic_path, plain

log = logging.getLogger(__name__)

STAGE = "teacher_head"


def reading_features(reads, names: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """[n, F] features of a reads folder's pairs: ``judge``: logit P(yes) of the soft labels; a
    panel's scores: logit P(<first answer>) of each yes/no question, the expected rank-score of
    each question with more answers (answers in order, most relevant first)."""
    if not reads.scores:  # the judgement reading: (P(yes), P(no))
        return logit(reads.soft_labels[:, 0])[:, None], ["judge"]
    questions: dict[str, list[str]] = {}
    for name in reads.scores:
        q, a = name.split("/", 1)
        questions.setdefault(q, []).append(a)
    cols, out = [], []
    for q, answers in questions.items():
        if names is not None and q not in names:
            continue
        if len(answers) == 2:
            cols.append(logit(reads.scores[f"{q}/{answers[0]}"]))
        else:
            k = len(answers)
            cols.append(sum((k - 1 - i) * reads.scores[f"{q}/{a}"] for i, a in enumerate(answers)))
        out.append(q)
    return np.stack(cols, axis=1), out


def run(cfg: DictConfig) -> dict:
    started = time.time()
    spec = cfg.stage
    dm = load_pairs(cfg)
    frame, label_set = dm.frame, dm.label_set
    keys = list(zip(frame["query_id"].astype(str), frame["item_id"].astype(str)))
    root = str(spec.reads_dir)
    sources = [("judge", iter_reads(root))] + [(str(n), iter_reads(f"{root}/{n}")) for n in plain(spec.panels or [])]
    missing = [name for name, reads in sources if reads is None]
    if missing:
        raise FileNotFoundError(f"teacher_head: no readings for {missing} under {root}")
    # the rows read by every source, and their features
    blocks, names, read = [], [], np.ones(len(keys), dtype=bool)
    for source, reads in sources:
        index = reads.index()
        at = np.array([index.get(k, -1) for k in keys])
        read &= at >= 0
        x, cols = reading_features(reads, plain(spec.get("questions")))
        full = np.full((len(keys), x.shape[1]), np.nan)
        full[at >= 0] = x[at[at >= 0]]
        blocks.append(full)
        names += [f"{source}:{c}" for c in cols]
    features = np.concatenate(blocks, axis=1)
    rows = np.flatnonzero(read)
    labels = frame["label"].to_numpy()
    train = np.asarray(dm.splits["train"], dtype=np.int64)
    gold = train[(labels[train] >= 0) & read[train]]
    if not len(gold):
        raise RuntimeError("teacher_head: no gold train pair has readings to fit the head on")
    c = label_set.num_classes
    soft = np.full((len(keys), c), np.nan, dtype=np.float32)
    sub = {int(r): i for i, r in enumerate(rows)}
    probs, head = cross_fit(features[rows], np.where(labels[rows] >= 0, labels[rows], 0),
                            frame["query_id"].astype(str).to_numpy()[rows], np.array([sub[int(r)] for r in gold]),
                            num_grades=c, l2=float(spec.l2), folds=int(spec.folds), seed=int(cfg.seed))
    soft[rows] = probs
    metrics: dict = {"features": names, "head": head.to_dict(), "gold_pairs": int(len(gold)),
                     "gold_queries": int(len(set(frame["query_id"].iloc[gold]))), "pairs_read": int(len(rows))}
    bins = int(spec.get("ece_bins", 10))
    for split in ("val", "test"):
        part = np.asarray(dm.splits[split], dtype=np.int64)
        part = part[(labels[part] >= 0) & read[part]]
        if len(part):
            metrics[split] = reading_metrics(soft[part], frame, part, label_set, bins)
    metrics["train_gold_oof"] = reading_metrics(soft[gold], frame, gold, label_set, bins)
    judge = sources[0][1]
    index = judge.index()
    decision = judge.latents[[index[keys[r]] for r in rows], 0, :].astype(np.float64)
    dim = spec.get("latent_dim")
    if dim and len(rows) > int(dim):
        mean, components, explained = pca_projection(decision, int(dim))
        decision = (decision - mean) @ components
        metrics["latent_pca"] = {"dim": int(components.shape[1]), "explained_variance": explained}
    perspectives = [p.name for p in perspectives_from_config(cfg.perspective)]
    out = spec.out
    with atomic_path(out, directory=True) as tmp:
        run_record = StageRun(cfg, STAGE, tmp, {"features": names, "l2": float(spec.l2), "folds": int(spec.folds),
                                                "gold": plain(cfg.data.get("gold")),
                                                "split": plain(cfg.data.get("split"))}, [dm.fingerprint])
        run_record.started = started
        writer = ArtefactWriter(tmp, teacher_id=f"{cfg.teacher.name} (llama.cpp readings, head fitted on the gold "
                                                f"train pairs of this split and budget)",
                                perspectives=perspectives, label_names=list(label_set.names),
                                vector_dim=int(decision.shape[-1]), dataset_fingerprint=dm.fingerprint,
                                extra={"stage_fingerprint": run_record.fingerprint, "latent": "decision_state",
                                       "soft_labels": "ordinal_head", "head": metrics["head"],
                                       "teacher_test": metrics.get("test"), "teacher": plain(cfg.teacher)})
        size = int(spec.get("artefact_shard_size", 2048))
        for shard, start in enumerate(range(0, len(rows), size)):
            part = rows[start:start + size]
            latents = np.repeat(decision[start:start + size][:, None, :], len(perspectives), axis=1)
            writer.write_shard(shard, [keys[r][0] for r in part], [keys[r][1] for r in part],
                               {p: [""] * len(part) for p in perspectives}, soft[part], latents.astype(np.float32))
        writer.finalize()
        run_record.record(metrics)
    log.info("teacher_head: %d gold pairs (%d queries) -> %d pairs; teacher on val %s, test %s", len(gold),
             metrics["gold_queries"], len(rows), metrics.get("val", {}).get("auc"), metrics.get("test", {}).get("auc"))
    return {**metrics, "artefact": str(out), "reused": False}


__all__ = ["run", "reading_features"]
