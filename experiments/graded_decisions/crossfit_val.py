"""An honest val estimate of a decision rule, to choose a default on val without looking at test.

    python experiments/graded_decisions/crossfit_val.py logs/graded_decisions/chorus_icecat/ce [more ...]

A rule tuned on val and scored on val is optimistic (``val/tuned/*`` in metrics.json is in-sample).
Here each job's best checkpoint scores its val pairs once; then, ``--repeats`` times, val's queries
are split in two halves (a seeded permutation), the thresholds are fitted on one half and decide
the other, and the other way round; QWK and macro-F1 are computed over all val pairs with these
out-of-fold grades, and averaged over the repeats. Beside them: the argmax rule on the same pairs.

Arguments are multirun directories (every job with a metrics.json) or job directories. Prints one
row per job and the mean ± std per directory; ``--out`` writes the rows as CSV.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from lrkd.evaluation.confusion import grade_metric as decision_metric
from lrkd.evaluation.decision import ThresholdRule
from lrkd.stages.teacher_common import load_pairs
from lrkd.student.module import StudentModule


def job_dirs(path: Path) -> list[Path]:
    if (path / "metrics.json").exists():
        return [path]
    return sorted(p.parent for p in path.glob("*/metrics.json"))


def val_probs(job: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[float], dict]:
    """(probs [N, C], labels [N], query ids [N], the label set's values, the job's decision config)."""
    cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
    metrics = json.loads((job / "metrics.json").read_text())
    dm = load_pairs(cfg)
    module = StudentModule.load_from_checkpoint(metrics["best_checkpoint"], weights_only=True,
                                                map_location="cpu").eval()
    probs, labels = [], []
    with torch.inference_mode():
        for batch in dm.val_dataloader():
            logits = module.predict_logits(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
            probs.append(logits.float().softmax(-1).numpy())
            labels.append(batch["labels"].numpy())
    rows = np.asarray(dm.splits["val"])
    labels = np.concatenate(labels)
    if not np.array_equal(labels, dm.frame["label"].to_numpy()[rows]):
        raise RuntimeError(f"{job}: the val loader's order is not the val split's")
    decision = OmegaConf.to_container(cfg.get("decision") or {}, resolve=True)
    values = list(dm.label_set.values if decision.get("score", "expected_relevance") == "expected_relevance"
                  else dm.label_set.gains)
    return np.concatenate(probs), labels, dm.frame["query_id"].to_numpy()[rows], values, decision


def crossfit(probs, labels, queries, values, metric: str, repeats: int, seed: int = 0) -> dict:
    c = probs.shape[1]
    out = {"tuned/qwk": [], "tuned/macro_f1": []}
    unique = np.unique(queries)
    for r in range(repeats):
        half = set(np.random.default_rng(seed + r).permutation(unique)[: len(unique) // 2])
        fold = np.array([q in half for q in queries])
        preds = np.empty_like(labels)
        for fit_on in (fold, ~fold):
            rule = ThresholdRule(score_values=tuple(values), metric=metric).fit(probs[fit_on], labels[fit_on])
            preds[~fit_on] = rule.decide(probs[~fit_on])
        for m in ("qwk", "macro_f1"):
            out[f"tuned/{m}"].append(decision_metric(preds, labels, c, m))
    argmax = probs.argmax(-1)
    return {"qwk": decision_metric(argmax, labels, c, "qwk"), "macro_f1": decision_metric(argmax, labels, c, "macro_f1"),
            **{k: float(np.mean(v)) for k, v in out.items()}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--metric", default=None, help="what the thresholds maximise (default: the job's decision.metric, else qwk)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    records = []
    for path in args.paths:
        group = []
        for job in job_dirs(Path(path)):
            probs, labels, queries, values, decision = val_probs(job)
            metric = args.metric or decision.get("metric", "qwk")
            res = crossfit(probs, labels, queries, values, metric, args.repeats)
            group.append(res)
            records.append({"dir": path, "job": job.name, **res})
            print(f"{job}: " + "  ".join(f"val/{k} {v:.3f}" for k, v in res.items()), flush=True)
        if group:
            print(f"== {path} (n={len(group)}): " + "  ".join(
                f"val/{k} {np.mean([g[k] for g in group]):.3f} ± {np.std([g[k] for g in group], ddof=1) if len(group) > 1 else 0:.3f}"
                for k in group[0]), flush=True)
    if args.out:
        import pandas as pd

        pd.DataFrame(records).to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
