"""Paired comparisons over replicates (folds x seeds), and the label-budget summary (issue 22).

A job's **replicate** is the pair (fold, seed) that fixed its data and its randomness:
``f<data.split.fold>s<seed>`` under cross-validation by query (``data.split.folds`` set), else
``s<seed>``. Two jobs of the same replicate saw the same test queries, the same gold subset and the
same initialisation, so their difference is paired: its spread over replicates is the noise of the
comparison, not of the folds.

- :func:`paired_differences`: for a key with a treatment and a baseline value (``budget_arm``:
  ``distilled`` vs ``gold_only``), per group of the other swept keys, the mean and sample std of
  treatment - baseline over the replicates both finished.
- :func:`label_budget_summary`: ``summary.json`` of ``experiment=label_budget``: per gold fraction,
  the replicates and each arm's metric per replicate (null where a job failed or is missing).
- :func:`plot_label_budget`, :func:`label_budget_markdown`: the curve and its tables.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
from omegaconf import OmegaConf

from lrkd.report.writer import markdown_table, short_value

REPLICATE_KEYS = ("seed", "data.split.fold")
ARM_KEY, FRACTION_KEY = "budget_arm", "data.gold.fraction"
ARMS = ("gold_only", "distilled")
LABEL_BUDGET_METRICS = ("test/auc", "test/ndcg@10", "test/tuned/qwk", "test/macro_f1")
UNSET = "(default)"   # lrkd.report.MISSING: a key the job neither sets nor holds


def _set(value: str) -> bool:
    return value not in (UNSET, "None", "null", "")


def replicate_id(job) -> str:
    """``f<fold>s<seed>`` under cross-validation by query, else ``s<seed>``."""
    seed = job.value("seed")
    if _set(job.value("data.split.folds")) and _set(job.value("data.split.fold")):
        return f"f{job.value('data.split.fold')}s{seed}"
    return f"s{seed}"


def replicate_order(rid: str) -> tuple:
    """Sort key: by fold, then seed, numerically (``f10s2`` after ``f2s11``)."""
    found = re.fullmatch(r"(?:f(-?\d+))?s(-?\d+)", rid)
    return (int(found.group(1) or -1), int(found.group(2)), rid) if found else (math.inf, math.inf, rid)


def _metric(job, metric: str) -> float | None:
    value = (job.metrics or {}).get(metric) if job.status == "ok" else None
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _by_replicate(jobs: Sequence) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for job in jobs:
        rid = replicate_id(job)
        if rid in out:
            raise ValueError(f"two jobs of replicate {rid} in one group: {out[rid].path} and {job.path} "
                             "(report one multirun, or tell them apart with --group-by)")
        out[rid] = job
    return out


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    s = pd.Series(list(values), dtype="float64").dropna()
    return (float(s.mean()) if len(s) else math.nan), (float(s.std(ddof=1)) if len(s) > 1 else math.nan)


def paired_differences(jobs: Sequence, key: str, treatment: str, baseline: str, metrics: Sequence[str],
                       group_by: Sequence[str]) -> pd.DataFrame:
    """One row per group (the values of ``group_by``): ``n`` and ``replicates`` (the replicates where
    both arms finished with every metric), and per metric ``<m> <treatment>``, ``<m> <baseline>``
    (means over the replicates where both have it) and ``<m> diff mean`` / ``<m> diff std``
    (treatment - baseline, sample std, ddof=1)."""
    groups: dict[tuple, dict[str, list]] = {}
    for job in jobs:
        arm = job.value(key)
        if arm in (treatment, baseline):
            groups.setdefault(tuple(job.value(k) for k in group_by), {treatment: [], baseline: []})[arm].append(job)
    rows = []
    for group, arms in groups.items():
        a, b = _by_replicate(arms[treatment]), _by_replicate(arms[baseline])
        shared = sorted(set(a) & set(b), key=replicate_order)
        values = {m: {r: (_metric(a[r], m), _metric(b[r], m)) for r in shared} for m in metrics}
        complete = [r for r in shared if all(None not in values[m][r] for m in metrics)]
        row: dict[str, Any] = {**dict(zip(group_by, group)), "n": len(complete), "replicates": " ".join(complete)}
        for m in metrics:
            pairs = [v for v in values[m].values() if None not in v]
            row[f"{m} {treatment}"] = _mean_std([x for x, _ in pairs])[0]
            row[f"{m} {baseline}"] = _mean_std([y for _, y in pairs])[0]
            row[f"{m} diff mean"], row[f"{m} diff std"] = _mean_std([x - y for x, y in pairs])
        rows.append(row)
    return pd.DataFrame(rows)


def paired_markdown(table: pd.DataFrame, key: str, treatment: str, baseline: str, metrics: Sequence[str],
                    group_by: Sequence[str]) -> str:
    """The paired table as Markdown: per group, n and each metric's Δ mean ± std."""
    header = [*group_by, "n", *[f"Δ {m}" for m in metrics]]
    rows = [[short_value(r[k]) for k in group_by] + [int(r["n"])]
            + [_fmt(r[f"{m} diff mean"], r[f"{m} diff std"]) for m in metrics] for _, r in table.iterrows()]
    return "\n".join([f"# Paired differences: {key}={treatment} − {key}={baseline}", "",
                      "Paired by replicate (fold, seed); mean ± sample std (ddof=1) of the per-replicate "
                      "differences over the n replicates where both finished.", "",
                      markdown_table(header, rows), ""])


def write_paired(jobs: Sequence, report, key: str, treatment: str, baseline: str, out_dir: str | Path) -> dict:
    """``paired.csv`` and ``paired.md`` of :func:`paired_differences` over ``report``'s groups and
    metrics (a :class:`lrkd.report.Report`), ``key`` left out of the groups."""
    group_by = [k for k in report.group_by if k != key]
    table = paired_differences(jobs, key, treatment, baseline, report.metrics, group_by)
    if table.empty:
        raise ValueError(f"no job has {key}={treatment} or {key}={baseline}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {"paired.csv": out / "paired.csv", "paired.md": out / "paired.md"}
    table.to_csv(written["paired.csv"], index=False, na_rep="")
    written["paired.md"].write_text(paired_markdown(table, key, treatment, baseline, report.metrics, group_by))
    return written


def _fraction(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{FRACTION_KEY} must be a number in every job, found {value!r}") from None


def describe_arm(jobs: Sequence, skip_keys: Sequence[str]) -> str:
    """The overrides that make an arm, for ``distilled_overrides``: the command-line overrides every
    job of the arm shares (without ``skip_keys``), its loss choice and active terms, and its artefact
    (one path, or the config's template when it differs per job)."""
    if not jobs:
        return ""
    shared = [line for line in jobs[0].overrides if all(line in j.overrides for j in jobs[1:])]
    parts = [line for line in shared if line.split("=", 1)[0].lstrip("+~") not in skip_keys]
    cfg = jobs[0].config
    if cfg is not None and "loss" in cfg:
        terms = [name for name, term in (cfg.loss.get("terms") or {}).items()
                 if term is not None and float(term.get("weight", 1.0) or 0.0) != 0.0]
        parts.append(f"loss={jobs[0].value('loss')} loss.terms=[{','.join(terms)}]")
    paths = {j.value("data.annotations") for j in jobs}
    if len(paths) == 1:
        parts.append(f"data.annotations={paths.pop()}")
    elif cfg is not None:
        parts.append(f"data.annotations={_template(jobs[0], 'data.annotations')}")
    return " ".join(dict.fromkeys(parts))


def _template(job, key: str) -> str:
    """The unresolved config value of ``key``, following whole-value references (``${a.b}``) and
    filling in relative ones (``${.x}``) with their resolved values."""
    raw = OmegaConf.to_container(job.config, resolve=False)
    for _ in range(5):
        node: Any = raw
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        whole = re.fullmatch(r"\$\{([\w.]+)\}", str(node))
        if not whole:
            break
        key = whole.group(1)
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    return re.sub(r"\$\{\.([\w.]+)\}", lambda m: job.value(f"{parent}.{m.group(1)}" if parent else m.group(1)),
                  str(node))


def label_budget_summary(jobs: Sequence, metrics: Sequence[str] = LABEL_BUDGET_METRICS) -> dict:
    """``summary.json`` (experiments/label_budget/README.md): ``{"dataset", "rows": [{"gold_fraction",
    "seeds": [replicate ids, by fold then seed], "gold_only": {metric: [per replicate]},
    "distilled": {...}, "distilled_overrides": str}]}``, rows by increasing fraction. A replicate of
    either arm is listed; a value is null where that arm's job failed, is missing or has no metric."""
    arms = {arm: [j for j in jobs if j.value(ARM_KEY) == arm] for arm in ARMS}
    if not all(arms.values()):
        found = sorted({j.value(ARM_KEY) for j in jobs})
        raise ValueError(f"a label-budget report needs jobs of both arms {list(ARMS)} ({ARM_KEY}=...), found {found}")
    names = {j.value("data.name") for j in jobs}
    rows = []
    for fraction in sorted({_fraction(j.value(FRACTION_KEY)) for j in jobs}):
        at = {arm: _by_replicate([j for j in members if _fraction(j.value(FRACTION_KEY)) == fraction])
              for arm, members in arms.items()}
        seeds = sorted(set(at["gold_only"]) | set(at["distilled"]), key=replicate_order)
        row: dict[str, Any] = {"gold_fraction": fraction, "seeds": seeds}
        for arm in ARMS:
            row[arm] = {m: [_metric(at[arm][r], m) if r in at[arm] else None for r in seeds] for m in metrics}
        row["distilled_overrides"] = describe_arm(list(at["distilled"].values()),
                                                  skip_keys=(*REPLICATE_KEYS, FRACTION_KEY))
        rows.append(row)
    return {"dataset": names.pop() if len(names) == 1 else sorted(names), "rows": rows}


def _fmt(mean: float, std: float) -> str:
    if mean is None or math.isnan(mean):
        return ""
    return f"{mean:.4f}" + ("" if std is None or math.isnan(std) else f" ± {std:.4f}")


def label_budget_markdown(summary: Mapping) -> str:
    """Per metric, a table: gold fraction, each arm's mean ± std over its replicates, and the paired
    difference distilled - gold-only (mean ± std over the replicates where both finished)."""
    lines = [f"# Label budget: {summary['dataset']}", "",
             "Replicates: (fold, seed) jobs; mean ± sample std (ddof=1) over them. Δ: distilled − gold-only, "
             "paired by (fold, seed), over the replicates where both arms finished (n).", ""]
    metrics = list(summary["rows"][0]["gold_only"]) if summary["rows"] else []
    for m in metrics:
        lines += [f"## {m}", "", "| gold fraction | gold-only | distilled | Δ (paired) | n |", "|---|---|---|---|---|"]
        for row in summary["rows"]:
            g, d = row["gold_only"][m], row["distilled"][m]
            diffs = [x - y for x, y in zip(d, g) if x is not None and y is not None]
            cells = [f"{row['gold_fraction']:g}", _fmt(*_mean_std([x for x in g if x is not None])),
                     _fmt(*_mean_std([x for x in d if x is not None])), _fmt(*_mean_std(diffs)), str(len(diffs))]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    for row in summary["rows"][:1]:
        lines += [f"Distilled arm: `{row['distilled_overrides']}`", ""]
    return "\n".join(lines)


def plot_label_budget(summary: Mapping, path: str | Path) -> Path:
    """One panel per metric: the metric against the gold fraction, each arm's mean ± std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    metrics = list(rows[0]["gold_only"]) if rows else []
    fig, axes = plt.subplots(1, max(len(metrics), 1), figsize=(3.6 * max(len(metrics), 1), 3.4), squeeze=False)
    x = [r["gold_fraction"] for r in rows]
    for ax, m in zip(axes[0], metrics):
        for arm, style in zip(ARMS, ("o--", "s-")):
            stats = [_mean_std([v for v in r[arm][m] if v is not None]) for r in rows]
            ax.errorbar(x, [s[0] for s in stats], yerr=[0.0 if math.isnan(s[1]) else s[1] for s in stats],
                        fmt=style, capsize=3, label=arm.replace("_", "-"))
        ax.set_xscale("log")
        ax.set_xticks(x, [f"{v:g}" for v in x])
        ax.minorticks_off()
        ax.set_xlabel("gold fraction of the train queries")
        ax.set_title(m)
    axes[0][0].legend()
    fig.suptitle(f"{summary['dataset']}: mean ± std over (fold, seed)")
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def write_label_budget(jobs: Sequence, out_dir: str | Path, metrics: Sequence[str] = LABEL_BUDGET_METRICS) -> dict:
    """Write ``summary.json``, ``label_budget.md`` and ``label_budget.png`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = label_budget_summary(jobs, metrics)
    written = {"summary.json": out / "summary.json", "label_budget.md": out / "label_budget.md",
               "label_budget.png": out / "label_budget.png"}
    written["summary.json"].write_text(json.dumps(summary, indent=2) + "\n")
    written["label_budget.md"].write_text(label_budget_markdown(summary))
    plot_label_budget(summary, written["label_budget.png"])
    return written


__all__ = ["REPLICATE_KEYS", "LABEL_BUDGET_METRICS", "ARMS", "replicate_id", "replicate_order", "paired_differences",
           "paired_markdown", "write_paired",
           "describe_arm", "label_budget_summary", "label_budget_markdown", "plot_label_budget", "write_label_budget"]
