"""The report of an architecture study (lrkd.search.study), written into the sweep dir beside the
sweeper's ``trials.csv`` and ``optimization_results.yaml``:

    latency_table.csv           the latency table's rows of the search space's architectures (+ reference)
    search_trials.csv           per trial: state, quality (the first objective), architecture,
                                latency_ms, latency_ratio, inference_params, the predictor's prediction
    predictor.json              the predictor's leave-one-out Spearman rank correlation on the finished
                                trials (and n, regressor)
    predicted_vs_measured.csv   the trials the predictor chose: predicted vs measured quality
    pareto.csv, pareto.png      the non-dominated trials (max quality, min latency) and the plot
    chosen.json                 the chosen student: the fastest finished trial within the budget whose
                                quality is within ``quality_tolerance`` (relative) of the best one
    chosen_student/             it, in the Hugging Face save_pretrained form (lrkd.serve.hf)
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
from optuna.study import StudyDirection
from optuna.trial import TrialState

from lrkd.search.latency_table import Architecture
from lrkd.search.sampler import loo_rank_correlation
from lrkd.search.space import encode_many
from lrkd.serve.hf import save_student_pretrained
from lrkd.serve.scorers import load_served
from lrkd.utils import write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)


def pareto_front(quality: np.ndarray, latency: np.ndarray) -> np.ndarray:
    """Boolean mask [N] of the points no other point dominates (quality >= and latency <=, one strictly)."""
    q, t = np.asarray(quality, float), np.asarray(latency, float)
    mask = np.ones(len(q), dtype=bool)
    for i in range(len(q)):
        dominated = (q >= q[i]) & (t <= t[i]) & ((q > q[i]) | (t < t[i]))
        mask[i] = not dominated.any()
    return mask


def choose(frame: pd.DataFrame, tolerance: float, maximize: bool = True) -> pd.Series | None:
    """The fastest row whose ``quality`` is within ``tolerance`` (relative) of the best; None if empty."""
    if frame.empty:
        return None
    q = frame["quality"] if maximize else -frame["quality"]
    best = float(q.max())
    near = frame[q >= best - tolerance * abs(best)]
    return near.sort_values(["latency_ms", "quality"], ascending=[True, not maximize]).iloc[0]


def trials_frame(search, study, sampler=None) -> pd.DataFrame:
    rows = []
    predictions = getattr(sampler, "predictions", {}) or {}
    for t in study.get_trials(deepcopy=False):
        if not set(search.distributions) <= set(t.params):
            continue
        row = {"trial": t.number, "state": t.state.name, "job": t.user_attrs.get("job_num"),
               "quality": t.values[0] if t.state == TrialState.COMPLETE and t.values else math.nan,
               "predicted": predictions.get(t.number, math.nan), **{k: t.params[k] for k in search.distributions}}
        row.update(search.trial_attrs(t.params))
        rows.append(row)
    return pd.DataFrame(rows)


def plot_pareto(frame: pd.DataFrame, front: pd.DataFrame, path: Path, budget_ms: float | None, title: str) -> None:
    import matplotlib  # optional (no pareto.png without it), and slow to import: only to plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.scatter(frame["latency_ms"], frame["quality"], s=18, color="0.6", label="trials")
    f = front.sort_values("latency_ms")
    ax.plot(f["latency_ms"], f["quality"], "o-", color="C0", label="Pareto front")
    for _, r in f.iterrows():
        ax.annotate(r["architecture"], (r["latency_ms"], r["quality"]), fontsize=6, xytext=(3, 3),
                    textcoords="offset points")
    if budget_ms is not None:
        ax.axvline(budget_ms, color="C3", linestyle="--", label=f"budget {budget_ms:g} ms")
    ax.set_xlabel("latency (ms, batch 1, from the latency table)")
    ax.set_ylabel("quality (the study's objective)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save_chosen(job_dir: Path, out: Path) -> Path | None:
    """The job's best checkpoint (its metrics.json) in the save_pretrained form at ``out``."""
    metrics = job_dir / "metrics.json"
    if not metrics.is_file():
        log.warning("no %s: the chosen student is not saved", metrics)
        return None
    ckpt = json.loads(metrics.read_text()).get("best_checkpoint")
    if not ckpt or not Path(ckpt).is_file():
        log.warning("the chosen job %s has no best checkpoint: the chosen student is not saved", job_dir)
        return None
    student, config = load_served(ckpt)
    return save_student_pretrained(student, out, serving=config)


def write_report(search, study, sweep_dir: Path, sampler=None) -> dict:
    """Write the files of the module docstring; returns the summary (also in chosen.json)."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    frame = trials_frame(search, study, sampler)
    archs = {a.name for a in search.archs}
    table = search.table.frame()
    names = [Architecture.from_row(r).name for r in table.to_dict("records")]
    reference = search.reference.name if search.reference is not None else None
    write_text_atomic(sweep_dir / "latency_table.csv",
                      table[[n in archs or n == reference for n in names]].to_csv(index=False))
    write_text_atomic(sweep_dir / "search_trials.csv", frame.to_csv(index=False))
    summary: dict = {"n_trials": int(len(frame)), "reference": reference, "latency_budget_ms": search.budget_ms,
                     "latency_budget_ratio": search.budget_ratio, "quality_tolerance": search.quality_tolerance}
    done = frame[frame["state"] == "COMPLETE"] if not frame.empty else frame
    summary["n_complete"] = int(len(done))
    if done.empty:
        write_json_atomic(sweep_dir / "chosen.json", summary)
        return summary
    maximize = study.directions[0] == StudyDirection.MAXIMIZE
    regressor = getattr(sampler, "regressor", "random_forest")
    x = encode_many(done[list(search.distributions)].to_dict("records"), search.distributions)
    rho = loo_rank_correlation(x, done["quality"].to_numpy(float), regressor=regressor)
    predictor = {"regressor": regressor, "n": int(len(done)), "loo_spearman": None if math.isnan(rho) else rho}
    write_json_atomic(sweep_dir / "predictor.json", predictor)
    chosen_by_predictor = done[np.isfinite(done["predicted"].to_numpy(float))]
    write_text_atomic(sweep_dir / "predicted_vs_measured.csv",
                      chosen_by_predictor[["trial", "architecture", "predicted", "quality"]].to_csv(index=False))
    sign = 1.0 if maximize else -1.0
    front = done[pareto_front(sign * done["quality"].to_numpy(float), done["latency_ms"].to_numpy(float))]
    write_text_atomic(sweep_dir / "pareto.csv", front.sort_values("latency_ms").to_csv(index=False))
    try:
        plot_pareto(done, front, sweep_dir / "pareto.png", search.budget_ms, f"{study.study_name}: quality vs latency")
    except ImportError:
        log.warning("matplotlib is not installed: no pareto.png")
    feasible = done[[search.is_feasible(p) for p in done[list(search.distributions)].to_dict("records")]]
    chosen = choose(feasible, search.quality_tolerance, maximize)
    summary["predictor"] = predictor
    if chosen is not None:
        summary["chosen"] = {k: (v.item() if hasattr(v, "item") else v) for k, v in chosen.items()}
        best = feasible["quality"].max() if maximize else feasible["quality"].min()
        summary["best_quality_within_budget"] = float(best)
        if search.save_chosen and chosen["job"] is not None and not pd.isna(chosen["job"]):
            out = save_chosen(sweep_dir / str(int(chosen["job"])), sweep_dir / "chosen_student")
            summary["chosen_student"] = str(out) if out is not None else None
    write_json_atomic(sweep_dir / "chosen.json", summary, default=str)
    log.info("architecture search: chosen %s", summary.get("chosen"))
    return summary


__all__ = ["pareto_front", "choose", "trials_frame", "write_report", "save_chosen", "plot_pareto"]
