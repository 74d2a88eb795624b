"""Compare the jobs of one or more Hydra multiruns side by side.

    lrkd report logs/extractor_ablation/multiruns/<time> [more dirs ...]
        [--group-by extractor ...] [--metrics test/macro_f1 test/qwk ...] [--latency FILE] [--out DIR]

A *job* is a directory with ``.hydra/overrides.yaml`` (Hydra writes one per job). Its status:
``ok`` (``metrics.json``), ``failed`` (``error.json``, written by ``lrkd.run.jobs``; the newer of the
two files wins when both exist) or ``incomplete`` (neither: killed, or still running).

The *swept keys* are the override keys whose value differs between jobs (or that only some jobs
set), plus the keys each sweep's ``multirun.yaml`` declares as swept. Jobs are grouped by every
swept key except ``seed`` unless ``--group-by`` says otherwise; a group key's value is the job's
override, else Hydra's group choice (``.hydra/hydra.yaml``), else the job's config value.

Per group: ``n`` (finished jobs), ``failed`` (failed or incomplete jobs), and per metric the mean and
the sample standard deviation (ddof=1) over the finished jobs, blank for n=1. Written to ``--out``
(default: the first directory): ``report.md``, ``report.csv`` (the grouped table), ``jobs.csv`` (one
row per job: status, swept keys, every metric, the error, the flattened config), ``<metric>.png``
(the plot metric per group with error bars) and ``quality_vs_latency.png`` when latency is known.

Latency comes from metrics whose key contains ``latency`` (milliseconds, averaged per group), or
from a JSON file (``--latency``; default ``benchmarks/results/latency.json`` when it exists): a list
(or ``{"results": [...]}``) of records ``{"latency_ms": 23.1, <group key>: <value>, ...}``; a record
applies to a group when it names at least one group key and all the group keys it names match.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from lrkd.run.resolvers import ROOT_DIR
from lrkd.schema import DataError
from lrkd.report.paired import LABEL_BUDGET_METRICS, REPLICATE_KEYS, write_label_budget, write_paired
from lrkd.report.writer import LATENCY_FIELD, write_report
from lrkd.run.jobs import ERROR_FILE, METRICS_FILE
from lrkd.run.overrides import declared_sweep_keys, load_multirun_config, parse_overrides

# argmax metrics, then (for runs with decision=thresholds) the same under the val-tuned rule
DEFAULT_METRICS = ("test/macro_f1", "test/qwk", "test/ndcg@10", "test/tuned/macro_f1", "test/tuned/qwk")
SEED_KEYS = REPLICATE_KEYS   # seed and data.split.fold: the replicates of a group (lrkd.report.paired)
DEFAULT_LATENCY_FILE = ROOT_DIR / "benchmarks" / "results" / "latency.json"
MISSING = "(default)"   # a group key the job does not set and its config does not hold


@dataclass
class Job:
    """One job directory of a multirun.

    path:      the job directory; sweep: its multirun directory (the parent).
    overrides: the override lines (``.hydra/overrides.yaml``); params: them as {key: value}.
    choices:   Hydra's config-group choices ({"extractor": "mlp", ...}; from ``.hydra/hydra.yaml``).
    config:    the job's composed config (``.hydra/config.yaml``), or None.
    metrics:   ``metrics.json`` (flat {key: number}); error: ``error.json``; None when absent.
    """

    path: Path
    overrides: list[str]
    params: dict[str, str]
    choices: dict[str, str] = field(default_factory=dict)
    config: DictConfig | None = None
    metrics: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    @property
    def sweep(self) -> Path:
        return self.path.parent

    @property
    def status(self) -> str:
        if self.metrics is not None and self.error is not None:
            newer_error = (self.path / ERROR_FILE).stat().st_mtime > (self.path / METRICS_FILE).stat().st_mtime
            return "failed" if newer_error else "ok"
        if self.metrics is not None:
            return "ok"
        return "failed" if self.error is not None else "incomplete"

    def value(self, key: str) -> str:
        """The job's value of ``key``: its override, else its group choice, else its config value."""
        if key in self.params:
            return self.params[key]
        if key in self.choices:
            return self.choices[key]
        if self.config is not None:
            try:
                found = OmegaConf.select(self.config, key, default=None, throw_on_missing=False)
            except Exception:  # an interpolation that only resolves inside the Hydra job (${hydra:...})
                found = _raw_select(self.config, key)
            if found is not None:
                if isinstance(found, (DictConfig, dict, list)) or OmegaConf.is_list(found):
                    plain = OmegaConf.to_container(found) if OmegaConf.is_config(found) else found
                    return json.dumps(plain, sort_keys=True)
                return str(found)
        return MISSING

    def error_summary(self) -> str:
        """``"Type: message"`` (first line, at most 200 characters), or why the job has no result."""
        status = self.status
        if status == "incomplete":
            return "no metrics.json and no error.json: killed, or still running"
        if status == "failed":
            message = str(self.error.get("message", "")).strip().splitlines()
            return f"{self.error.get('type', 'Error')}: {message[0] if message else ''}"[:200]
        return ""


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"not valid JSON ({e.msg})", path=str(path), row=e.lineno) from None
    if not isinstance(value, dict):
        raise DataError(f"expected a JSON object, found {type(value).__name__}", path=str(path))
    return value


def load_job(path: Path) -> Job:
    """Read one job directory (see :class:`Job`)."""
    hydra_dir = path / ".hydra"
    overrides_file = hydra_dir / "overrides.yaml"
    lines = OmegaConf.load(overrides_file)
    if not OmegaConf.is_list(lines):
        raise DataError("expected a list of override lines", path=str(overrides_file))
    lines = [str(x) for x in lines]
    try:
        params = parse_overrides(lines)
    except Exception as e:  # Hydra's grammar errors
        raise DataError(f"cannot parse an override ({e})", path=str(overrides_file)) from None
    choices: dict[str, str] = {}
    if (hydra_dir / "hydra.yaml").is_file():
        found = OmegaConf.select(OmegaConf.load(hydra_dir / "hydra.yaml"), "hydra.runtime.choices", default=None)
        choices = {str(k): str(v) for k, v in (found or {}).items()}
    config = OmegaConf.load(hydra_dir / "config.yaml") if (hydra_dir / "config.yaml").is_file() else None
    metrics = _read_json(path / METRICS_FILE) if (path / METRICS_FILE).is_file() else None
    error = _read_json(path / ERROR_FILE) if (path / ERROR_FILE).is_file() else None
    return Job(path=path, overrides=lines, params=params, choices=choices, config=config, metrics=metrics,
               error=error)


def _job_order(path: Path) -> tuple:
    return (str(path.parent), 0, int(path.name), "") if path.name.isdigit() else (str(path.parent), 1, 0, path.name)


def find_jobs(dirs: Iterable[str | Path]) -> list[Job]:
    """Every job under the given directories (a multirun dir, a folder of multiruns, or one job
    dir), ordered by multirun, then job number."""
    paths: list[Path] = []
    for d in map(Path, dirs):
        if not d.is_dir():
            raise DataError("no such directory", path=str(d))
        found = [d] if (d / ".hydra" / "overrides.yaml").is_file() else \
            [p.parent.parent for p in d.rglob(".hydra/overrides.yaml")]
        if not found:
            raise DataError("no Hydra job directories (with .hydra/overrides.yaml) under it", path=str(d))
        paths += found
    unique = sorted(dict.fromkeys(p.resolve() for p in paths), key=_job_order)
    return [load_job(p) for p in unique]


def swept_keys(jobs: Sequence[Job]) -> list[str]:
    """Keys that vary between jobs or that only some jobs set, then the keys each multirun's
    ``multirun.yaml`` declares as swept; in order of first appearance."""
    keys: list[str] = []
    for job in jobs:
        keys += [k for k in job.params if k not in keys]
    varying = [k for k in keys if len({job.params.get(k) for job in jobs}) > 1]
    for sweep in dict.fromkeys(job.sweep for job in jobs):
        varying += [k for k in declared_sweep_keys(load_multirun_config(sweep)) if k not in varying]
    return varying


@dataclass
class Report:
    """table: one row per group (see the module docstring); jobs: one row per job; failures: the
    failed and incomplete jobs; group_by, metrics: what the table is made of; latency_source: where
    the latency column came from (None: no latency)."""

    table: pd.DataFrame
    jobs: pd.DataFrame
    failures: pd.DataFrame
    group_by: list[str]
    metrics: list[str]
    latency_source: str | None = None


def _mean_std(values: list[float]) -> tuple[float, float]:
    s = pd.Series(values, dtype="float64").dropna()
    return (float(s.mean()) if len(s) else math.nan), (float(s.std(ddof=1)) if len(s) > 1 else math.nan)


def _latency_records(path: Path | None) -> list[dict]:
    if path is None or not Path(path).is_file():
        return []
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"not valid JSON ({e.msg})", path=str(path), row=e.lineno) from None
    if isinstance(data, dict) and isinstance(data.get("rows"), dict):
        data = {"results": _records_from_latency_benchmark(data["rows"])}
    records = data.get("results") if isinstance(data, dict) else data
    if not isinstance(records, list):
        raise DataError('expected a list of records, or {"results": [...]}', path=str(path))
    for i, r in enumerate(records):
        if not isinstance(r, dict) or not isinstance(r.get(LATENCY_FIELD), (int, float)):
            raise DataError(f"record {i} has no numeric {LATENCY_FIELD!r}", path=str(path), column=LATENCY_FIELD)
    return records


def _records_from_latency_benchmark(rows: dict) -> list[dict]:
    """benchmarks/latency.py's JSON (``rows: {"eager/<extractor>": {timings: {b1_s128: {median_ms}}}}``)
    -> records ``{"extractor": <name>, "latency_ms": <batch-1, 128-token median>}`` of the eager rows."""
    records = []
    for name, row in rows.items():
        kind, _, extractor = str(name).partition("/")
        median = (row.get("timings", {}).get("b1_s128") or {}).get("median_ms")
        if kind == "eager" and extractor and isinstance(median, (int, float)):
            records.append({"extractor": extractor, LATENCY_FIELD: float(median)})
    return records


def _latency_from_records(records: list[dict], group: dict[str, str]) -> float:
    for r in records:
        shared = [k for k in r if k != LATENCY_FIELD and k in group]
        if shared and all(str(r[k]) == group[k] for k in shared):
            return float(r[LATENCY_FIELD])
    return math.nan


def build_report(jobs: Sequence[Job], group_by: Sequence[str] | None = None,
                 metrics: Sequence[str] | None = None, latency_file: str | Path | None = None) -> Report:
    """Group ``jobs`` and aggregate ``metrics`` (see the module docstring). ``metrics`` defaults to
    those of :data:`DEFAULT_METRICS` that some job has; a metric given explicitly that no job has
    is an error."""
    if not jobs:
        raise ValueError("no jobs to report")
    swept = swept_keys(jobs)
    group_by = [k for k in swept if k not in SEED_KEYS] if group_by is None else list(group_by)
    finished = [j for j in jobs if j.status == "ok"]
    known = sorted({k for j in finished for k, v in j.metrics.items() if isinstance(v, (int, float))})
    if metrics is None:
        metrics = [m for m in DEFAULT_METRICS if m in known]
    else:
        unknown = [m for m in metrics if m not in known]
        if unknown and finished:
            raise ValueError(f"no finished job has the metrics {unknown}; they have: {known}")
        metrics = list(metrics)

    latency_keys = [k for k in known if "latency" in k]
    records = _latency_records(Path(latency_file) if latency_file else DEFAULT_LATENCY_FILE)
    latency_source = latency_keys[0] if latency_keys else (str(latency_file or DEFAULT_LATENCY_FILE) if records else None)

    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        groups.setdefault(tuple(job.value(k) for k in group_by), []).append(job)
    rows = []
    for key, members in groups.items():
        ok = [j for j in members if j.status == "ok"]
        row: dict[str, Any] = dict(zip(group_by, key))
        row["n"], row["failed"] = len(ok), len(members) - len(ok)
        for m in metrics:
            row[f"{m} mean"], row[f"{m} std"] = _mean_std([_number(j.metrics.get(m)) for j in ok])
        if latency_keys:
            row[LATENCY_FIELD] = _mean_std([_number(j.metrics.get(latency_keys[0])) for j in ok])[0]
        elif records:
            row[LATENCY_FIELD] = _latency_from_records(records, dict(zip(group_by, key)))
        rows.append(row)
    table = pd.DataFrame(rows)

    job_rows, failure_rows = [], []
    sweeps = sorted({str(j.sweep) for j in jobs})
    base = Path(os.path.commonpath(sweeps)) if len(sweeps) > 1 else Path(sweeps[0]).parent
    for job in jobs:
        name = job.path.relative_to(base).as_posix()
        row = {"job": name, "status": job.status, **{k: job.value(k) for k in swept}}
        row.update({m: _number(job.metrics.get(m)) for m in known} if job.metrics else {})
        row["error"] = job.error_summary()
        if job.config is not None:
            flat = pd.json_normalize(OmegaConf.to_container(job.config, resolve=False), sep=".")
            row.update({f"config.{k}": v for k, v in flat.iloc[0].items()})
        job_rows.append(row)
        if job.status != "ok":
            failure_rows.append({"job": name, "status": job.status, "overrides": " ".join(job.overrides),
                                 "error": job.error_summary()})
    failures = pd.DataFrame(failure_rows, columns=["job", "status", "overrides", "error"])
    return Report(table=table, jobs=pd.DataFrame(job_rows), failures=failures, group_by=list(group_by),
                  metrics=list(metrics), latency_source=latency_source if LATENCY_FIELD in table else None)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else math.nan


def _raw_select(config: DictConfig, key: str) -> Any:
    """``key`` (dotted) of ``config`` without resolving interpolations; None when absent."""
    node: Any = OmegaConf.to_container(config, resolve=False)
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


# ---------------------------------------------------------------------------------- writing
def main(argv: Sequence[str] | None = None, prog: str = "lrkd report") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", help="multirun directories (or folders of them, or job dirs)")
    parser.add_argument("--group-by", nargs="*", default=None,
                        help="keys to group by (default: every swept key except seed)")
    parser.add_argument("--metrics", nargs="+", default=None, help=f"default: {' '.join(DEFAULT_METRICS)}")
    parser.add_argument("--latency", default=None, help=f"latency JSON (default: {DEFAULT_LATENCY_FILE} if present)")
    parser.add_argument("--out", default=None, help="output directory (default: the first directory)")
    parser.add_argument("--paired", nargs=3, metavar=("KEY", "TREATMENT", "BASELINE"), default=None,
                        help="also the paired differences TREATMENT - BASELINE of KEY per group, paired by "
                             "replicate (fold, seed): paired.md, paired.csv")
    parser.add_argument("--label-budget", action="store_true",
                        help="experiment=label_budget: summary.json, label_budget.md and .png (implies "
                             "--paired budget_arm distilled gold_only and its four metrics)")
    args = parser.parse_args(argv)
    if args.label_budget:
        args.paired = args.paired or ["budget_arm", "distilled", "gold_only"]
        args.metrics = args.metrics or list(LABEL_BUDGET_METRICS)
    out = args.out or args.dirs[0]
    try:
        jobs = find_jobs(args.dirs)
        report = build_report(jobs, group_by=args.group_by, metrics=args.metrics, latency_file=args.latency)
        extra = write_paired(jobs, report, *args.paired, out) if args.paired else {}
        if args.label_budget:
            extra.update(write_label_budget(jobs, out, report.metrics))
    except (DataError, ValueError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    written = {**write_report(report, out, sources=args.dirs), **extra}
    print(written["report.md"].read_text())
    for name in ("paired.md", "label_budget.md"):
        if name in written:
            print(written[name].read_text())
    print("wrote " + ", ".join(str(p) for p in written.values()))
    return 0


__all__ = ["Job", "Report", "load_job", "find_jobs", "swept_keys", "build_report", "main", "DEFAULT_METRICS",
           "DEFAULT_LATENCY_FILE"]


if __name__ == "__main__":
    sys.exit(main())
