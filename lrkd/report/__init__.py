"""Comparing the jobs of Hydra multiruns (``lrkd report``): :mod:`lrkd.report.compare` finds the
jobs and builds the grouped table, :mod:`lrkd.report.writer` writes ``report.md``, the CSV files and
the plots, :mod:`lrkd.report.paired` pairs jobs by replicate (fold, seed) and writes the label-budget
summary."""
from lrkd.report.compare import DEFAULT_METRICS, Job, Report, build_report, find_jobs, load_job, main, swept_keys
from lrkd.report.writer import markdown_table, write_report

__all__ = ["DEFAULT_METRICS", "Job", "Report", "build_report", "find_jobs", "load_job", "main", "swept_keys",
           "markdown_table", "write_report"]
