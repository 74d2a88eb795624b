"""The measured grid of pruned students (a basic multirun over student.prune.* x seed, see README.md) and
the latency table -> grid.csv (one row per architecture: mean and seed spread of the metrics, latency,
parameters), the Pareto front, the chosen student at a latency budget, and the predictor's leave-one-out
rank correlation on the grid; printed as Markdown.

    python experiments/student_search/analyse.py logs/student_search/grid_chorus \
        --latency experiments/student_search/latency_table.csv --budget-ratio 0.5 --out experiments/student_search
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from lrkd.report.writer import markdown_table  # noqa: E402
from lrkd.search.report import choose, pareto_front  # noqa: E402
from lrkd.search.sampler import loo_rank_correlation  # noqa: E402

METRICS = ("val/auc", "test/auc", "val/ndcg@10", "test/ndcg@10")


def jobs(sweep: Path, full_layers: int = 6, full_ffn: int = 1536) -> pd.DataFrame:
    rows = []
    for job in sorted(p for p in sweep.iterdir() if (p / "metrics.json").is_file()):
        m = json.loads((job / "metrics.json").read_text())
        o = dict(line.split("=", 1) for line in OmegaConf.load(job / ".hydra" / "overrides.yaml"))
        rows.append({"job": job.name, "num_layers": int(o.get("student.prune.num_layers", full_layers)),
                     "intermediate_size": int(o.get("student.prune.intermediate_size", full_ffn)),
                     "seed": int(o.get("seed", 42)), "params": int(m["params/inference"]),
                     "wall_s": float(m["wall_time_s"]), **{k: float(m[k]) for k in METRICS if k in m}})
    return pd.DataFrame(rows)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sweep")
    p.add_argument("--latency", required=True)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--extractor", default="none")
    p.add_argument("--budget-ratio", type=float, default=0.5)
    p.add_argument("--tolerance", type=float, default=0.01)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    runs = jobs(Path(args.sweep))
    lat = pd.read_csv(args.latency, keep_default_na=False)
    lat = lat[(lat["max_length"] == args.max_length) & (lat["extractor"] == args.extractor)]
    full_layers, full_ffn = 6, 1536

    def arch_latency(layers, ffn, batch):
        key_l = "" if layers == full_layers else str(layers)
        key_f = "" if ffn == full_ffn else str(ffn)
        row = lat[(lat["num_layers"].astype(str) == key_l) & (lat["intermediate_size"].astype(str) == key_f)
                  & (lat["batch"] == batch)]
        return (float(row["ratio"].iloc[0]), float(row["latency_ms"].iloc[0])) if len(row) else (np.nan, np.nan)

    groups = runs.groupby(["num_layers", "intermediate_size"])
    grid = groups.agg(seeds=("seed", "nunique"), params=("params", "first"), wall_s=("wall_s", "mean"),
                      **{f"{k.replace('/', '_').replace('@', '')}": (k, "mean") for k in METRICS},
                      **{f"{k.replace('/', '_').replace('@', '')}_spread": (k, lambda s: float(s.max() - s.min()))
                         for k in METRICS}).reset_index()
    for batch in sorted(lat["batch"].unique()):
        values = [arch_latency(r.num_layers, r.intermediate_size, batch) for r in grid.itertuples()]
        suffix = "" if batch == 1 else f"_b{batch}"
        grid[f"latency_ratio{suffix}"] = [v[0] for v in values]
        grid[f"latency_ms{suffix}"] = [v[1] for v in values]
    grid = grid.sort_values("latency_ms").reset_index(drop=True)
    full = grid[(grid.num_layers == full_layers) & (grid.intermediate_size == full_ffn)].iloc[0]
    grid["pareto_val"] = pareto_front(grid["val_auc"].to_numpy(), grid["latency_ms"].to_numpy())
    grid["pareto_test"] = pareto_front(grid["test_auc"].to_numpy(), grid["latency_ms"].to_numpy())
    within = grid[grid["latency_ratio"] <= args.budget_ratio].rename(columns={"val_auc": "quality"})
    chosen = choose(within, args.tolerance)
    x = grid[["num_layers", "intermediate_size"]].to_numpy(float)
    summary = {"n_runs": int(len(runs)), "n_architectures": int(len(grid)),
               "val_auc_seed_spread_mean": float(grid["val_auc_spread"].mean()),
               "test_auc_seed_spread_mean": float(grid["test_auc_spread"].mean()),
               "loo_spearman_val_auc": loo_rank_correlation(x, grid["val_auc"].to_numpy(), n_estimators=200),
               "loo_spearman_test_auc": loo_rank_correlation(x, grid["test_auc"].to_numpy(), n_estimators=200)}
    seeds = runs.pivot_table(index=["num_layers", "intermediate_size"], columns="seed", values="val/auc")
    if seeds.shape[1] >= 2:
        from scipy.stats import spearmanr

        both = seeds.dropna()
        summary["seed1_vs_seed2_spearman_val_auc"] = float(spearmanr(both.iloc[:, 0], both.iloc[:, 1]).statistic)
    if chosen is not None:
        summary["chosen"] = {"num_layers": int(chosen["num_layers"]), "intermediate_size": int(chosen["intermediate_size"]),
                             "val_auc": float(chosen["quality"]), "test_auc": float(chosen["test_auc"]),
                             "test_ndcg10": float(chosen["test_ndcg10"]),
                             "quality_ratio_test_auc": float(chosen["test_auc"] / full["test_auc"]),
                             "quality_ratio_val_auc": float(chosen["quality"] / full["val_auc"]),
                             "latency_ratio": float(chosen["latency_ratio"]),
                             "params_ratio": float(chosen["params"] / full["params"]), "params": int(chosen["params"])}
    cols = ["num_layers", "intermediate_size", "params", "latency_ms", "latency_ratio", *(
        ["latency_ratio_b32"] if "latency_ratio_b32" in grid else []), "val_auc", "val_auc_spread", "test_auc",
        "test_auc_spread", "test_ndcg10", "pareto_val", "wall_s"]
    fmt = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in grid[cols].itertuples(index=False)]
    md = markdown_table(cols, fmt)
    print(md)
    print(json.dumps(summary, indent=2))
    if args.out:
        out = Path(args.out)
        grid.to_csv(out / "grid.csv", index=False)
        runs.to_csv(out / "grid_runs.csv", index=False)
        (out / "grid.md").write_text(md + "\n")
        (out / "grid_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main()
