"""Writing a sweep report: ``report.md`` (the grouped table, mean ± std, the metric conventions, the
failed jobs), ``report.csv``, ``jobs.csv`` and the plots. ``report`` arguments are the
:class:`lrkd.report.Report` that :func:`lrkd.report.build_report` returns."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

PLOT_METRIC = "test/macro_f1"
LATENCY_FIELD = "latency_ms"
NDCG_NOTE = ("nDCG@k skips queries whose judged items all have gain 0 (their nDCG is undefined); trec_eval "
             "scores them 0, which would lower the mean. AUC is NaN when the rows hold one class only.")


def format_metric(x: float) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def _md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(map(_md_cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def short_value(value: Any) -> str:
    """A group value for display: numbers to 4 significant digits, other values as they are."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return str(value) if str(value).lstrip("-").isdigit() else f"{number:.4g}"


def group_label(row: pd.Series, group_by: Sequence[str], sep: str = ", ") -> str:
    return sep.join(f"{k}={short_value(row[k])}" for k in group_by) or "all"


def to_markdown(report, sources: Sequence[str | Path] = (), plots: Sequence[str] = ()) -> str:
    """The report as Markdown: a summary line, the grouped table (mean ± std), the failed jobs."""
    t, status = report.table, report.jobs["status"].value_counts()
    parts = ["# lrkd sweep report", ""]
    if sources:
        parts += ["Multiruns: " + ", ".join(f"`{s}`" for s in sources), ""]
    parts += [f"{len(report.jobs)} jobs: {status.get('ok', 0)} finished, {status.get('failed', 0)} failed, "
              f"{status.get('incomplete', 0)} incomplete. Grouped by: "
              f"{', '.join(report.group_by) or '(nothing: one group)'}; mean ± sample std (ddof=1) over "
              "the finished jobs of a group (seeds); n = finished jobs.", ""]
    header = [*report.group_by, "n", "failed", *report.metrics]
    if LATENCY_FIELD in t:
        header.append("latency (ms)")
    rows = []
    for _, r in t.iterrows():
        cells = [short_value(r[k]) for k in report.group_by] + [int(r["n"]), int(r["failed"])]
        for m in report.metrics:
            mean, std = r[f"{m} mean"], r[f"{m} std"]
            cells.append(format_metric(mean) + (f" ± {format_metric(std)}" if not math.isnan(std) else ""))
        if LATENCY_FIELD in t:
            cells.append(format_metric(r[LATENCY_FIELD]))
        rows.append(cells)
    parts += [markdown_table(header, rows), ""]
    if any("ndcg" in m for m in report.metrics):
        parts += [NDCG_NOTE, ""]
    if report.latency_source:
        parts += [f"Latency from `{report.latency_source}`.", ""]
    parts += ["## Failed jobs", ""]
    if len(report.failures):
        parts += [markdown_table(["job", "status", "overrides", "error"], report.failures.itertuples(index=False)), ""]
    else:
        parts += ["None.", ""]
    parts += [f"![{p}]({p})" for p in plots]
    return "\n".join(parts).rstrip() + "\n"


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend; matplotlib is imported only to plot (its import is slow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metric(report, metric: str, path: Path) -> Path:
    """Bar chart of ``metric``'s mean per group, error bars = std (none for n=1)."""
    plt = pyplot()

    t = report.table
    labels = [group_label(r, report.group_by, sep="\n") for _, r in t.iterrows()]
    means, stds = t[f"{metric} mean"].to_numpy(), t[f"{metric} std"].fillna(0.0).to_numpy()
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(t) + 1.5), 4.0))
    bars = ax.bar(range(len(t)), means, yerr=stds, capsize=4, color="#4C72B0")
    for bar, n in zip(bars, t["n"]):
        ax.annotate(f"n={int(n)}", (bar.get_x() + bar.get_width() / 2, 0), ha="center", va="bottom",
                    fontsize=8, color="white")
    tilt = len(t) > 4 or max(len(x) for line in labels for x in line.split("\n")) > 18
    ax.set_xticks(range(len(t)), labels, rotation=30 if tilt else 0, ha="right" if tilt else "center", fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per variant (mean ± std over seeds)")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_quality_vs_latency(report, metric: str, path: Path) -> Path | None:
    """Scatter of ``metric`` (mean ± std) against latency per group; None when no group has one."""
    t = report.table
    if LATENCY_FIELD not in t or t[LATENCY_FIELD].isna().all():
        return None
    plt = pyplot()
    t = t[t[LATENCY_FIELD].notna()]
    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    ax.errorbar(t[LATENCY_FIELD], t[f"{metric} mean"], yerr=t[f"{metric} std"].fillna(0.0), fmt="o", capsize=4)
    for _, r in t.iterrows():
        ax.annotate(group_label(r, report.group_by), (r[LATENCY_FIELD], r[f"{metric} mean"]), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} against latency")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def write_report(report, out_dir: str | Path, sources: Sequence[str | Path] = ()) -> dict[str, Path]:
    """Write report.md, report.csv, jobs.csv and the plots into ``out_dir``; returns {name: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {"report.csv": out / "report.csv", "jobs.csv": out / "jobs.csv"}
    report.table.to_csv(written["report.csv"], index=False, na_rep="")
    report.jobs.to_csv(written["jobs.csv"], index=False, na_rep="")
    metric = PLOT_METRIC if PLOT_METRIC in report.metrics else (report.metrics[0] if report.metrics else None)
    plots = []
    if metric is not None and report.table["n"].sum() > 0:
        name = metric.rsplit("/", 1)[-1].replace("@", "_at_") + ".png"
        written[name] = plot_metric(report, metric, out / name)
        plots.append(name)
        scatter = plot_quality_vs_latency(report, metric, out / "quality_vs_latency.png")
        if scatter is not None:
            written["quality_vs_latency.png"] = scatter
            plots.append(scatter.name)
    written["report.md"] = out / "report.md"
    written["report.md"].write_text(to_markdown(report, sources, plots))
    return written


__all__ = ["write_report", "to_markdown", "markdown_table", "format_metric", "pyplot", "plot_metric",
           "plot_quality_vs_latency"]
