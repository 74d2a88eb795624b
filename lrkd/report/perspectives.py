"""The per-perspective diagnostics report (:func:`lrkd.evaluation.perspectives.perspective_diagnostics`):
``perspectives.json`` (every figure), ``perspectives.md`` (the table, and which mismatches each
perspective corrects) and ``perspectives.png`` (one matrix per perspective and the final label: gold
grade by row, its verdict by column, each row normalised)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from lrkd.evaluation.perspectives import FINAL
from lrkd.report.writer import format_metric, markdown_table, pyplot
from lrkd.utils import write_json_atomic

COLUMNS = ("pairs", "agree_gold", "agree_gold_binary", "auc", "qwk", "macro_f1", "agree_final", "corrects",
           "corrects_share", "breaks")


def perspective_table(diagnostics: dict) -> str:
    rows = []
    for name, d in diagnostics["perspectives"].items():
        rows.append([name] + [d[c] if isinstance(d[c], int) else format_metric(d[c]) for c in COLUMNS])
    return markdown_table(["perspective", *COLUMNS], rows)


def corrections_table(diagnostics: dict, grade_names: Sequence[str], answers: Sequence[str]) -> str:
    """Per mistake of the final label (gold grade -> final answer): how many pairs, and how many each
    perspective gets right."""
    names = [n for n in diagnostics["perspectives"] if n != FINAL]
    final_cm = np.asarray(diagnostics["perspectives"][FINAL]["confusion"])
    corrected = {n: np.asarray(diagnostics["perspectives"][n]["corrected"]) for n in names}
    rows = [[f"{grade} -> {answer}", int(final_cm[g, f])] + [int(corrected[n][g, f]) for n in names]
            for g, grade in enumerate(grade_names) for f, answer in enumerate(answers)
            if final_cm[g, f] and _final_mistake(diagnostics, g, f)]
    return markdown_table(["gold -> final", "pairs", *[f"{n} corrects" for n in names]], rows)


def _final_mistake(diagnostics: dict, grade: int, answer: int) -> bool:
    if diagnostics["answers"] == "yes_no":
        return (grade <= diagnostics["relevant_up_to"]) != (answer == 0)
    return grade != answer


def plot_confusions(diagnostics: dict, grade_names: Sequence[str], answers: Sequence[str], path: Path) -> Path:
    plt = pyplot()
    items = list(diagnostics["perspectives"].items())
    fig, axes = plt.subplots(1, len(items), figsize=(1.6 + 0.5 * len(answers)) * np.array([len(items), 1.6]),
                             squeeze=False)
    for ax, (name, d) in zip(axes[0], items):
        cm = np.asarray(d["confusion"], dtype=np.float64)
        share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        ax.imshow(share, vmin=0, vmax=1, cmap="Blues", aspect="auto")
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, int(v), ha="center", va="center", fontsize=8, color="white" if share[i, j] > 0.5 else "black")
        ax.set_xticks(range(len(answers)), answers, rotation=45, fontsize=7)
        ax.set_yticks(range(len(grade_names)), grade_names, fontsize=7)
        ax.set_title(f"{name}\nagree {d['agree_gold']:.2f}, AUC {d['auc']:.2f}", fontsize=8)
        ax.set_xlabel("verdict", fontsize=7)
    axes[0][0].set_ylabel("gold", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_perspective_report(diagnostics: dict, grade_names: Sequence[str], out: str | Path,
                             answers: Sequence[str] | None = None, title: str = "Per-perspective diagnostics"
                             ) -> dict[str, Path]:
    """Write the three files into ``out``; ``answers``: the verdicts' answer names (default the
    grades). Returns {file name: path}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    answers = list(grade_names if answers is None else answers)
    write_json_atomic(out / "perspectives.json", {**diagnostics, "grades": list(grade_names), "answer_names": answers},
                      indent=1)
    text = (f"# {title}\n\n{diagnostics['pairs']} gold-labelled pairs; the final label (all perspectives) is wrong "
            f"on {diagnostics['final_mistakes']}.\n\n{perspective_table(diagnostics)}\n\n"
            f"## Which mistakes of the final label each perspective corrects\n\n"
            f"{corrections_table(diagnostics, grade_names, answers)}\n")
    (out / "perspectives.md").write_text(text)
    return {"perspectives.json": out / "perspectives.json", "perspectives.md": out / "perspectives.md",
            "perspectives.png": plot_confusions(diagnostics, grade_names, answers, out / "perspectives.png")}


__all__ = ["write_perspective_report", "perspective_table", "corrections_table", "plot_confusions"]
