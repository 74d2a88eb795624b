"""The teacher heads of the label-budget study, side by side: AUC, QWK and ECE of each (fold, seed,
budget)'s head on val, test and its own gold train pairs (out-of-fold by query), mean ± std over the
replicates of each budget.

    python experiments/label_budget/teacher_table.py [artefacts/chorus_icecat/label_budget] > teacher.md
"""
from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

NAME = re.compile(r"f(?P<fold>\d+)_s(?P<seed>\d+)_g(?P<fraction>[\d.]+)$")


def main(root: str = "artefacts/chorus_icecat/label_budget") -> str:
    rows = defaultdict(list)
    for record in sorted(Path(root).glob("*/teacher_head.json")):
        m = NAME.match(record.parent.name)
        if m:
            rows[float(m["fraction"])].append(json.loads(record.read_text()))
    lines = ["| gold | n | gold pairs | " + " | ".join(f"{s} AUC | {s} QWK | {s} ECE" for s in ("val", "test", "train (oof)"))
             + " |", "|---" * 12 + "|"]
    for fraction in sorted(rows):
        recs = rows[fraction]
        cells = [f"{fraction:.0%}", str(len(recs)), f"{np.mean([r['gold_pairs'] for r in recs]):.0f}"]
        for split in ("val", "test", "train_gold_oof"):
            for key in ("auc", "qwk", "ece"):
                v = np.array([r[split][key] for r in recs if split in r])
                cells.append(f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(*sys.argv[1:]))
