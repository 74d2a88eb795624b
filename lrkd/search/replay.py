"""Replay samplers against a measured table: the sampler comparison at a fixed number of trials
without training again. Each "trial" looks its configuration's quality up in the table (measured
once, e.g. the mean val AUC over seeds of a grid run); configurations absent from the table or over
the budget are told as failed and not counted (as lrkd's sweeper skips over-budget trials untrained).

    python -m lrkd.search.replay --table grid.csv --keys num_layers,intermediate_size \
        --quality val_auc --budget-column latency_ratio --budget 0.5 --trials 6 --seeds 200

Samplers: ``predictor`` (lrkd.search.sampler.PredictorSampler), ``random`` (Optuna's RandomSampler),
``tpe`` (Optuna's TPESampler), ``gp`` (Optuna's GPSampler, when its dependencies are installed);
start-up trials ``--startup`` for predictor and TPE. Per sampler: the mean (over seeds) of the best
quality found after n trials, the share of seeds that found the best feasible configuration, the
mean regret (best feasible - best found) and the proposals rejected as over budget.
"""
from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import CategoricalDistribution

from hydra_plugins.lrkd_optuna_sweeper.optuna_sweeper import MAX_ASKS_PER_TRIAL  # as the sweeper gives up
from lrkd.report.writer import markdown_table
from lrkd.search.sampler import PredictorSampler
from lrkd.search.space import config_key

SAMPLERS = ("predictor", "random", "tpe", "gp")


def make_sampler(name: str, seed: int, startup: int, space, feasible):
    if name == "predictor":
        return PredictorSampler(seed=seed, n_startup_trials=startup, search_space=space, feasible=feasible)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
    raise ValueError(f"sampler {name!r} is not one of {SAMPLERS}")


def run_one(space: Mapping[str, CategoricalDistribution], objective: Callable[[dict], float | None],
            feasible: Callable[[dict], bool], sampler, n_trials: int) -> tuple[list[float], int]:
    """(quality of each counted trial in order, proposals rejected) of one study."""
    study = optuna.create_study(direction="maximize", sampler=sampler)
    values, rejected, asked = [], 0, 0
    while len(values) < n_trials and asked < MAX_ASKS_PER_TRIAL * n_trials:
        trial = study.ask(dict(space))
        asked += 1
        value = objective(trial.params) if feasible(trial.params) else None
        if value is None:
            rejected += 1
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        study.tell(trial, value)
        values.append(float(value))
    return values, rejected


def compare(space, objective, feasible, best: float, samplers: Sequence[str] = ("predictor", "random", "tpe"),
            n_trials: int = 6, seeds: int = 50, startup: int = 3) -> pd.DataFrame:
    """One row per sampler x trial count n <= n_trials: mean best-so-far quality, hit rate, regret."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    for name in samplers:
        curves, rejected = [], []
        for seed in range(seeds):
            values, r = run_one(space, objective, feasible, make_sampler(name, seed, startup, space, feasible), n_trials)
            values += [values[-1] if values else np.nan] * (n_trials - len(values))
            curves.append(np.maximum.accumulate(np.asarray(values, dtype=float)))
            rejected.append(r)
        curves = np.stack(curves)
        for n in range(1, n_trials + 1):
            found = curves[:, n - 1]
            rows.append({"sampler": name, "trials": n, "best_found_mean": float(np.nanmean(found)),
                         "best_found_std": float(np.nanstd(found)), "regret_mean": float(np.nanmean(best - found)),
                         "hit_rate": float(np.mean(np.isclose(found, best))),
                         "rejected_per_study": float(np.mean(rejected)), "seeds": seeds})
    return pd.DataFrame(rows)


def table_space(table: pd.DataFrame, keys: Sequence[str]) -> dict[str, CategoricalDistribution]:
    return {k: CategoricalDistribution([str(v) for v in sorted(table[k].unique(), key=str)]) for k in keys}


def lookup(table: pd.DataFrame, keys: Sequence[str], column: str) -> dict[tuple, float]:
    return {config_key({k: r[k] for k in keys}): float(r[column]) for r in table.to_dict("records")}


def frame_markdown(frame: pd.DataFrame) -> str:
    def cell(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    return markdown_table(list(frame.columns), [[cell(v) for v in row] for row in frame.itertuples(index=False)])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--table", required=True, help="CSV: one row per configuration (the keys, quality, budget column)")
    p.add_argument("--keys", required=True, help="comma-separated configuration columns (the search space)")
    p.add_argument("--quality", required=True, help="the column maximised")
    p.add_argument("--budget-column", default=None, help="e.g. latency_ratio or latency_ms")
    p.add_argument("--budget", type=float, default=None, help="configurations above it are rejected")
    p.add_argument("--samplers", default="predictor,random,tpe")
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--seeds", type=int, default=50)
    p.add_argument("--startup", type=int, default=3)
    p.add_argument("--output", default=None, help="JSON of the comparison (and a .md beside it)")
    args = p.parse_args(argv)
    table = pd.read_csv(args.table)
    keys = [k for k in args.keys.split(",") if k]
    missing = sorted({*keys, args.quality, *( [args.budget_column] if args.budget_column else [])} - set(table.columns))
    if missing:
        raise SystemExit(f"{args.table}: no columns {missing}")
    quality = lookup(table, keys, args.quality)
    cost = lookup(table, keys, args.budget_column) if args.budget_column else {}

    def feasible(params):
        key = config_key(params)
        return key in quality and (args.budget is None or cost.get(key, np.inf) <= args.budget)

    ok = [v for k, v in quality.items() if args.budget is None or cost.get(k, np.inf) <= args.budget]
    if not ok:
        raise SystemExit("no configuration of the table is within the budget")
    result = compare(table_space(table, keys), lambda prm: quality.get(config_key(prm)), feasible, max(ok),
                     [s for s in args.samplers.split(",") if s], args.trials, args.seeds, args.startup)
    summary = {"table": args.table, "keys": keys, "quality": args.quality, "budget_column": args.budget_column,
               "budget": args.budget, "feasible_configurations": len(ok), "configurations": len(quality),
               "best_feasible": max(ok), "rows": result.to_dict("records")}
    print(frame_markdown(result[result["trials"] == args.trials]))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(summary, indent=2) + "\n")
        Path(args.output).with_suffix(".md").write_text(frame_markdown(result) + "\n")
    return summary


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
