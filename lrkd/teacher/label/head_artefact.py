"""A student's teacher artefact from the frozen teacher's readings and a head fitted on gold pairs.

The readings (``stage=teacher_score``: the judgement reading in ``<reads_dir>/worker-*``, and each
panel named in ``panels``, ``<reads_dir>/<name>``) are features of every pair read: the log-odds of
each yes/no answer and the expected rank of each graded question (:func:`reading_features`). The
head (:class:`lrkd.teacher.label.head.OrdinalHead`) is fitted on the gold pairs of a data module's
train split only, so on one cross-validation fold and one label budget it sees only that budget's
gold grades. The gold pairs get out-of-fold soft labels (folds of whole queries); every other pair
read (train rows the budget hid, the transfer pool, generated queries, val, test) gets the head
fitted on all of them. The artefact holds every pair read that the data module has, with the
decision states' PCA as latent targets (or, ``latent="rationale"``, the pairs with rationales, each
perspective's states over its rationale), optionally the rationales; the teacher is scored on val and
test like the student.

:class:`HeadArtefact` is the same as a config callable: ``experiment=label_budget`` builds each
(fold, seed, budget)'s artefact this way when its student job starts and the artefact is missing.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from lrkd.artefact import ArtefactWriter
from lrkd.teacher.label.head import cross_fit, logit, reading_metrics
from lrkd.teacher.label.latents import LATENT_KINDS, project_latents, rationale_states
from lrkd.teacher.label.score_pool import iter_reads
from lrkd.utils import atomic_path, write_json_atomic

log = logging.getLogger(__name__)

METRICS_FILE = "teacher_head.json"


def reading_features(reads, questions: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """[n, F] features of a reads folder's pairs, and their names: the judgement reading (no
    scores): logit P(yes); a panel: logit P(<first answer>) of each yes/no question and the
    expected rank (k-1 for the first answer .. 0 for the last) of each question with more answers;
    ``questions``: the panel questions to keep (None: all)."""
    if not reads.scores:
        return logit(reads.soft_labels[:, 0])[:, None], ["judge"]
    answers: dict[str, list[str]] = {}
    for name in reads.scores:
        question, answer = name.split("/", 1)
        answers.setdefault(question, []).append(answer)
    cols, names = [], []
    for question, options in answers.items():
        if questions is not None and question not in questions:
            continue
        if len(options) == 2:
            cols.append(logit(reads.scores[f"{question}/{options[0]}"]))
        else:
            k = len(options)
            cols.append(sum((k - 1 - i) * reads.scores[f"{question}/{a}"] for i, a in enumerate(options)))
        names.append(question)
    return np.stack(cols, axis=1), names


def write_head_artefact(dm, out: str | Path, *, reads_dir: str | Path, perspectives: Sequence[str],
                        teacher: str, panels: Sequence[str] = (), questions: Sequence[str] | None = None,
                        l2: float = 0.01, folds: int = 5, seed: int = 0, latent_dim: int | None = 64,
                        ece_bins: int = 10, shard_size: int = 2048, extra: dict | None = None,
                        rationales: bool = False, latent: str = "decision",
                        record: Callable[[Path, dict], None] | None = None) -> dict:
    """Fit the head on ``dm``'s gold train pairs and write the artefact to ``out`` (atomically);
    returns the metrics (also written to ``<out>/teacher_head.json``). ``record(tmp_dir, metrics)``
    runs inside the folder before it is moved into place (a stage's own record).

    ``rationales``: the artefact carries the teacher's multi-perspective rationales
    (``<reads_dir>/rationales``, empty where a pair has none) for CRSD's reasoning-augmented view.
    ``latent``: ``decision`` (the judgement's decision state as every perspective's target, every
    pair read) or ``rationale`` (per perspective the teacher's mean state over its rationale; the
    artefact then holds the pairs with rationales only)."""
    frame, label_set = dm.frame, dm.label_set
    keys = list(zip(frame["query_id"].astype(str), frame["item_id"].astype(str)))
    root = Path(reads_dir)
    sources = [("judge", iter_reads(root))] + [(str(n), iter_reads(root / str(n))) for n in panels]
    missing = [name for name, reads in sources if reads is None]
    if missing:
        raise FileNotFoundError(f"no teacher readings for {missing} under {root} (stage=teacher_score reads them)")
    blocks, names, read = [], [], np.ones(len(keys), dtype=bool)
    for source, reads in sources:  # the rows read by every source, and their features
        index = reads.index()
        at = np.array([index.get(k, -1) for k in keys])
        read &= at >= 0
        x, cols = reading_features(reads, questions)
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
        raise RuntimeError("no gold train pair has teacher readings to fit the head on")
    position = {int(r): i for i, r in enumerate(rows)}
    probs, head = cross_fit(features[rows], np.where(labels[rows] >= 0, labels[rows], 0),
                            frame["query_id"].astype(str).to_numpy()[rows], np.array([position[int(r)] for r in gold]),
                            num_grades=label_set.num_classes, l2=float(l2), folds=int(folds), seed=int(seed))
    soft = np.full((len(keys), label_set.num_classes), np.nan, dtype=np.float32)
    soft[rows] = probs
    metrics: dict = {"features": names, "head": head.to_dict(), "gold_pairs": int(len(gold)),
                     "gold_queries": int(len(set(frame["query_id"].iloc[gold]))), "pairs_read": int(len(rows))}
    for split in ("val", "test"):
        part = np.asarray(dm.splits[split], dtype=np.int64)
        part = part[(labels[part] >= 0) & read[part]]
        if len(part):
            metrics[split] = reading_metrics(soft[part], frame, part, label_set, int(ece_bins))
    metrics["train_gold_oof"] = reading_metrics(soft[gold], frame, gold, label_set, int(ece_bins))
    texts = {p: [""] * len(rows) for p in perspectives}
    if latent not in LATENT_KINDS:
        raise ValueError(f"latent must be one of {sorted(LATENT_KINDS)}, got {latent!r}")
    if rationales or latent == "rationale":
        written = rationale_reads(root, perspectives)
        has, states = rationale_states(written, [keys[r] for r in rows], perspectives)
        if latent == "rationale":
            if not has.any():
                raise RuntimeError(f"latent=rationale: no pair of this data has a rationale in {root / 'rationales'}")
            rows = rows[has]
        windex = written.index()
        texts = {p: [written.rationales[p][windex[keys[r]]] if keys[r] in windex else "" for r in rows]
                 for p in perspectives}
        metrics["rationale_pairs"] = int(has.sum())
    if latent == "decision":
        judge = sources[0][1]
        index = judge.index()
        states = judge.latents[[index[keys[r]] for r in rows], :1, :]
    targets, pca = project_latents(states, len(perspectives), latent_dim)
    if pca:
        metrics["latent_pca"] = pca
    with atomic_path(out, directory=True) as tmp:
        writer = ArtefactWriter(tmp, teacher_id=f"{teacher} (llama.cpp readings, a head fitted on the gold train "
                                                f"pairs of this split and budget)",
                                perspectives=list(perspectives), label_names=list(label_set.names),
                                vector_dim=int(targets.shape[-1]), dataset_fingerprint=dm.fingerprint,
                                extra={**(extra or {}), "soft_labels": "ordinal_head",
                                       "latent": LATENT_KINDS[latent],
                                       "rationales": bool(rationales or latent == "rationale"),
                                       "head": metrics["head"], "teacher_test": metrics.get("test")})
        for shard, start in enumerate(range(0, len(rows), int(shard_size))):
            part, cut = rows[start:start + int(shard_size)], slice(start, start + int(shard_size))
            writer.write_shard(shard, [keys[r][0] for r in part], [keys[r][1] for r in part],
                               {p: texts[p][cut] for p in perspectives}, soft[part], targets[cut])
        writer.finalize()
        write_json_atomic(Path(tmp) / METRICS_FILE, metrics)
        if record is not None:
            record(Path(tmp), metrics)
    log.info("teacher head: %d gold pairs (%d queries) -> %d pairs in %s; teacher AUC on val %s, test %s",
             len(gold), metrics["gold_queries"], len(rows), out, metrics.get("val", {}).get("auc"),
             metrics.get("test", {}).get("auc"))
    return metrics


def rationale_reads(root: Path, perspectives: Sequence[str]):
    """The multi-perspective rationales read into ``<root>/rationales`` (stage=teacher_score,
    ``stage.rationales.max_pairs``), holding every perspective of ``perspectives``."""
    written = iter_reads(root / "rationales")
    if written is None:
        raise FileNotFoundError(f"no rationales under {root / 'rationales'} (stage=teacher_score "
                                f"stage.rationales.max_pairs=N writes them)")
    missing = [p for p in perspectives if p not in written.rationales]
    if missing:
        raise ValueError(f"the rationales under {root / 'rationales'} hold no perspective {missing} "
                         f"(they hold {list(written.rationales)})")
    return written


class HeadArtefact:
    """A config callable (``teacher_artefact`` of the student stage): ``(dm, out, perspectives, seed)``
    writes the head artefact of ``dm`` to ``out`` unless it exists. The other arguments are
    :func:`write_head_artefact`'s."""

    def __init__(self, reads_dir: str, teacher: str, panels: Sequence[str] = (), questions=None, l2: float = 0.01,
                 folds: int = 5, latent_dim: int | None = 64, rationales: bool = False, latent: str = "decision"):
        self.options = {"reads_dir": reads_dir, "teacher": teacher, "panels": list(panels or []),
                        "questions": None if questions is None else list(questions), "l2": float(l2),
                        "folds": int(folds), "latent_dim": latent_dim, "rationales": bool(rationales),
                        "latent": str(latent)}

    def __call__(self, dm, out: str | Path, perspectives: Sequence[str], seed: int) -> Path:
        out = Path(out)
        if (out / METRICS_FILE).is_file():
            return out
        write_head_artefact(dm, out, perspectives=perspectives, seed=seed, **self.options)
        return out


__all__ = ["reading_features", "write_head_artefact", "rationale_reads", "HeadArtefact", "METRICS_FILE"]
